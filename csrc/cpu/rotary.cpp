// CPU kernel of rotary_embedding: in-place half rotation (Llama / NeoX layout) of each head's first
// rot_dim features of query and key, at each token's position.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../checks.h"
#include "../dispatch_utils.h"
#include "../ops.h"
#include "vec_utils.h"

namespace hopscotch {
namespace {

template <typename scalar_t, typename cache_t>
inline void rotate_heads(scalar_t* base,                      // head 0 of one token
                         int64_t heads, int64_t head_stride,
                         const cache_t* __restrict__ cos,     // [half]
                         const cache_t* __restrict__ sin,     // [half]
                         int64_t half) {
  using acc = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
  for (int64_t h = 0; h < heads; ++h) {
    scalar_t* __restrict__ x = base + h * head_stride;
    for (int64_t j = 0; j < half; ++j) {
      const acc c = static_cast<acc>(cos[j]);
      const acc s = static_cast<acc>(sin[j]);
      const acc x1 = static_cast<acc>(x[j]);
      const acc x2 = static_cast<acc>(x[j + half]);
      x[j] = static_cast<scalar_t>(x1 * c - x2 * s);
      x[j + half] = static_cast<scalar_t>(x2 * c + x1 * s);
    }
  }
}

template <typename scalar_t, typename cache_t>
void rotary_launch(const at::Tensor& pos, at::Tensor& q, at::Tensor* k, const at::Tensor& cache) {
  const int64_t tokens = pos.numel();
  const int64_t rot_dim = cache.size(1);
  const int64_t half = rot_dim / 2;
  const int64_t max_pos = cache.size(0);
  const int64_t* pp = pos.const_data_ptr<int64_t>();
  const cache_t* cp = cache.const_data_ptr<cache_t>();
  scalar_t* qp = q.mutable_data_ptr<scalar_t>();
  scalar_t* kp = k ? k->mutable_data_ptr<scalar_t>() : nullptr;
  const int64_t work_per_token = (q.size(1) + (k ? k->size(1) : 0)) * rot_dim;
  at::parallel_for(0, tokens, cpu::row_grain(work_per_token), [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t p = pp[t];
      TORCH_CHECK(p >= 0 && p < max_pos, "rotary_embedding: positions holds ", p,
                  "; expected 0 <= position < ", max_pos, " (the rows of cos_sin_cache)");
      const cache_t* cos = cp + p * rot_dim;
      rotate_heads<scalar_t, cache_t>(qp + t * q.stride(0), q.size(1), q.stride(1), cos, cos + half, half);
      if (kp) rotate_heads<scalar_t, cache_t>(kp + t * k->stride(0), k->size(1), k->stride(1), cos, cos + half, half);
    }
  });
}

}  // namespace

void rotary_embedding_cpu(const at::Tensor& positions, at::Tensor& query, const std::optional<at::Tensor>& key,
                          const at::Tensor& cos_sin_cache) {
  check_rotary_inputs(positions, query, key, cos_sin_cache, "rotary_embedding");
  at::Tensor q = rotary_token_view(query, "rotary_embedding", "query");
  std::optional<at::Tensor> k;
  if (key.has_value()) k = rotary_token_view(*key, "rotary_embedding", "key");
  if (q.size(0) == 0) return;
  const at::Tensor pos = positions.reshape({-1}).to(at::kLong).contiguous();
  const at::Tensor cache = cos_sin_cache.contiguous();
  at::Tensor* kp = k.has_value() ? &*k : nullptr;
  HOPSCOTCH_DISPATCH_FLOATING_TYPES_AND_DOUBLE(q.scalar_type(), "rotary_embedding_cpu", [&] {
    if (cache.scalar_type() == at::kFloat) {
      rotary_launch<scalar_t, float>(pos, q, kp, cache);
    } else {
      rotary_launch<scalar_t, scalar_t>(pos, q, kp, cache);
    }
  });
}

TORCH_LIBRARY_IMPL(hopscotch_ext, CPU, m) {
  m.impl("rotary_embedding", &rotary_embedding_cpu);
}

}  // namespace hopscotch
