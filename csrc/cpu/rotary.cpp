// CPU kernel of rotary_embedding (in place) and rotary_embedding_out: half rotation (Llama / NeoX layout) of
// each head's first rot_dim features of query and key, at each token's position. The host functions are shared
// with CUDA: csrc/ops.h.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../checks.h"
#include "../dispatch_utils.h"
#include "../ops.h"
#include "vec_utils.h"

namespace hopscotch {
namespace {

using cpu::acc_t;

// Rotates the first 2 * half features of each head of one token from src into dst (the same memory for the
// in-place op). sign = -1 rotates by -angle (the inverse rotation; negating sin is exact, so the rounding is
// that of the forward rotation).
template <typename scalar_t, typename cache_t>
inline void rotate_heads(const scalar_t* src, int64_t src_head_stride,  // head 0 of one token
                         scalar_t* dst, int64_t dst_head_stride,        // head 0 of one token
                         int64_t heads,
                         const cache_t* __restrict__ cos,  // [half]
                         const cache_t* __restrict__ sin,  // [half]
                         int64_t half, acc_t<scalar_t> sign) {
  using acc = acc_t<scalar_t>;
  for (int64_t h = 0; h < heads; ++h) {
    const scalar_t* x = src + h * src_head_stride;
    scalar_t* y = dst + h * dst_head_stride;
    for (int64_t j = 0; j < half; ++j) {
      const acc c = static_cast<acc>(cos[j]);
      const acc s = sign * static_cast<acc>(sin[j]);
      const acc x1 = static_cast<acc>(x[j]);
      const acc x2 = static_cast<acc>(x[j + half]);
      y[j] = static_cast<scalar_t>(x1 * c - x2 * s);
      y[j + half] = static_cast<scalar_t>(x2 * c + x1 * s);
    }
  }
}

// src / dst: [tokens, heads, head_size] views with unit-stride features.
template <typename scalar_t, typename cache_t>
void rotary_launch(const at::Tensor& pos, const at::Tensor& src_q, at::Tensor& q, const at::Tensor* src_k,
                   at::Tensor* k, const at::Tensor& cache, bool inverse) {
  const int64_t tokens = pos.numel();
  const int64_t rot_dim = cache.size(1);
  const int64_t half = rot_dim / 2;
  const int64_t max_pos = cache.size(0);
  const acc_t<scalar_t> sign = inverse ? -1 : 1;
  const int64_t* pp = pos.const_data_ptr<int64_t>();
  const cache_t* cp = cache.const_data_ptr<cache_t>();
  const scalar_t* sq = src_q.const_data_ptr<scalar_t>();
  scalar_t* qp = q.mutable_data_ptr<scalar_t>();
  const scalar_t* sk = k ? src_k->const_data_ptr<scalar_t>() : nullptr;
  scalar_t* kp = k ? k->mutable_data_ptr<scalar_t>() : nullptr;
  const int64_t work_per_token = (q.size(1) + (k ? k->size(1) : 0)) * rot_dim;
  at::parallel_for(0, tokens, cpu::row_grain(work_per_token), [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t p = pp[t];
      TORCH_CHECK(p >= 0 && p < max_pos, "rotary_embedding: positions holds ", p,
                  "; expected 0 <= position < ", max_pos, " (the rows of cos_sin_cache)");
      const cache_t* cos = cp + p * rot_dim;
      rotate_heads<scalar_t, cache_t>(sq + t * src_q.stride(0), src_q.stride(1), qp + t * q.stride(0), q.stride(1),
                                      q.size(1), cos, cos + half, half, sign);
      if (kp) {
        rotate_heads<scalar_t, cache_t>(sk + t * src_k->stride(0), src_k->stride(1), kp + t * k->stride(0),
                                        k->stride(1), k->size(1), cos, cos + half, half, sign);
      }
    }
  });
}

struct CpuRotary {
  using Guard = NoGuard;

  static void rotary(const at::Tensor& positions, const at::Tensor& src_q, at::Tensor& q, const at::Tensor* src_k,
                     at::Tensor* k, const at::Tensor& cache, bool inverse) {
    const at::Tensor pos = positions.to(at::kLong).contiguous();
    HOPSCOTCH_DISPATCH_FLOATING_TYPES_AND_DOUBLE(q.scalar_type(), "rotary_embedding_cpu", [&] {
      if (cache.scalar_type() == at::kFloat) {
        rotary_launch<scalar_t, float>(pos, src_q, q, src_k, k, cache, inverse);
      } else {
        rotary_launch<scalar_t, scalar_t>(pos, src_q, q, src_k, k, cache, inverse);
      }
    });
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(hopscotch_ext, CPU, m) {
  HOPSCOTCH_REGISTER_ROTARY(m, CpuRotary);
}

}  // namespace hopscotch
