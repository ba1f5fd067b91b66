// CPU kernel of rotary_embedding (in place) and rotary_embedding_out: half rotation (Llama / NeoX layout) of
// each head's first rot_dim features of query and key, at each token's position. The host functions are shared
// with CUDA: csrc/ops.h.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstring>

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
      const int64_t p = pp[t];  // in [0, max_pos): checked by the host function (csrc/ops.h)
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

// rotary_embedding_kv_cache: per (batch row, token), q rotated in place, k rotated into key_cache's slot (the
// features past rot_dim copied as they are), v copied into value_cache's slot.
template <typename scalar_t, typename cache_t>
void rotary_kv_cache_launch(const at::Tensor& pos, at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            const at::Tensor& cache, at::Tensor& kc, at::Tensor& vc, const at::Tensor& slots) {
  const int64_t batch = q.size(0), tokens = q.size(1), head_size = q.size(3);
  const int64_t rot_dim = cache.size(1), half = rot_dim / 2;
  const int64_t* pp = pos.const_data_ptr<int64_t>();
  const int64_t* sp = slots.const_data_ptr<int64_t>();
  const cache_t* cp = cache.const_data_ptr<cache_t>();
  scalar_t* qp = q.mutable_data_ptr<scalar_t>();
  const scalar_t* kp = k.const_data_ptr<scalar_t>();
  const scalar_t* vp = v.const_data_ptr<scalar_t>();
  scalar_t* kcp = kc.mutable_data_ptr<scalar_t>();
  scalar_t* vcp = vc.mutable_data_ptr<scalar_t>();
  const int64_t q_heads = q.size(2), kv_heads = k.size(2);
  const int64_t work_per_token = (q_heads + 2 * kv_heads) * head_size;
  at::parallel_for(0, batch * tokens, cpu::row_grain(work_per_token), [&](int64_t begin, int64_t end) {
    for (int64_t bt = begin; bt < end; ++bt) {
      const int64_t b = bt / tokens, t = bt - b * tokens;
      const int64_t p = pp[bt], slot = sp[t];  // in range: checked by the host function (csrc/ops.h)
      const cache_t* cos = cp + p * rot_dim;
      scalar_t* qt = qp + b * q.stride(0) + t * q.stride(1);
      rotate_heads<scalar_t, cache_t>(qt, q.stride(2), qt, q.stride(2), q_heads, cos, cos + half, half, 1);
      const scalar_t* kt = kp + b * k.stride(0) + t * k.stride(1);
      scalar_t* kslot = kcp + b * kc.stride(0) + slot * kc.stride(2);
      rotate_heads<scalar_t, cache_t>(kt, k.stride(2), kslot, kc.stride(1), kv_heads, cos, cos + half, half, 1);
      const scalar_t* vt = vp + b * v.stride(0) + t * v.stride(1);
      scalar_t* vslot = vcp + b * vc.stride(0) + slot * vc.stride(2);
      for (int64_t h = 0; h < kv_heads; ++h) {
        if (rot_dim < head_size) {  // partial rotary: the rest of the key passes through
          std::memcpy(kslot + h * kc.stride(1) + rot_dim, kt + h * k.stride(2) + rot_dim,
                      static_cast<size_t>(head_size - rot_dim) * sizeof(scalar_t));
        }
        std::memcpy(vslot + h * vc.stride(1), vt + h * v.stride(2), static_cast<size_t>(head_size) * sizeof(scalar_t));
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

  static void rotary_kv_cache(const at::Tensor& positions, at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                              const at::Tensor& cache, at::Tensor& kc, at::Tensor& vc, const at::Tensor& slots) {
    const at::Tensor pos = positions.to(at::kLong).contiguous();
    const at::Tensor sl = slots.to(at::kLong).contiguous();
    HOPSCOTCH_DISPATCH_FLOATING_TYPES_AND_DOUBLE(q.scalar_type(), "rotary_embedding_kv_cache_cpu", [&] {
      if (cache.scalar_type() == at::kFloat) {
        rotary_kv_cache_launch<scalar_t, float>(pos, q, k, v, cache, kc, vc, sl);
      } else {
        rotary_kv_cache_launch<scalar_t, scalar_t>(pos, q, k, v, cache, kc, vc, sl);
      }
    });
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(hopscotch_ext, CPU, m) {
  HOPSCOTCH_REGISTER_ROTARY(m, CpuRotary);
}

}  // namespace hopscotch
