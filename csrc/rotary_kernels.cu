// CUDA kernel of rotary_embedding (in place) and rotary_embedding_out: half rotation (Llama / NeoX layout) of
// each head's first rot_dim features of query and key, at each token's position; the function of
// csrc/cpu/rotary.cpp (host functions shared with it: csrc/ops.h):
// x1' = x1 * cos - x2 * sin, x2' = x2 * cos + x1 * sin in float32, each product rounded (no FMA, as the
// float32 reference computes it), rounded once to the dtype.
// Positions and slots are not checked on the host here: that needs them in host memory, i.e. a stream sync on
// every call (a decode step calls this once per kept block). The Python wrappers (hopscotch_ext.ops) check them
// before launch when eager, with the CPU's message; a call that bypasses them (torch.ops.hopscotch_ext.*, or a
// compiled graph) meets CUDA_KERNEL_ASSERT, and the kernels never read or write out of bounds either way
// (docs/ARCHITECTURE.md §2.10).
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "checks.h"
#include "cuda_utils.cuh"
#include "dispatch_utils.h"
#include "ops.h"

namespace hopscotch {
namespace {

constexpr int kRotaryMaxBlock = 512;

// Token view strides (elements) of query or key: [tokens, heads, head_size] with stride(-1) == 1.
struct HeadsView {
  int64_t token_stride;
  int64_t head_stride;
  int heads;
};

// V consecutive pairs (x[j .. j+V), x[half + j .. half + j + V)) of one head, rotated from x into y (the same
// memory for an in-place rotation: both halves are read before either is written).
template <typename scalar_t, typename cache_t, int V, bool kVec>
__device__ __forceinline__ void rotate_chunk(const scalar_t* x, scalar_t* y, const cache_t* cos, int j, int half,
                                             gpu::acc_t<scalar_t> sign) {
  using acc = gpu::acc_t<scalar_t>;
  auto x1 = gpu::load_vec<kVec, scalar_t, V>(x + j, V);
  auto x2 = gpu::load_vec<kVec, scalar_t, V>(x + half + j, V);
  const auto c = gpu::load_vec<kVec, cache_t, V>(cos + j, V);
  const auto s = gpu::load_vec<kVec, cache_t, V>(cos + half + j, V);
#pragma unroll
  for (int e = 0; e < V; ++e) {
    const acc cf = static_cast<acc>(c.v[e]), sf = sign * static_cast<acc>(s.v[e]);
    const acc a = static_cast<acc>(x1.v[e]), b = static_cast<acc>(x2.v[e]);
    x1.v[e] = static_cast<scalar_t>(gpu::sub_rn(gpu::mul_rn(a, cf), gpu::mul_rn(b, sf)));
    x2.v[e] = static_cast<scalar_t>(gpu::add_rn(gpu::mul_rn(b, cf), gpu::mul_rn(a, sf)));
  }
  gpu::store_vec<kVec, scalar_t, V>(y + j, x1, V);
  gpu::store_vec<kVec, scalar_t, V>(y + half + j, x2, V);
}

// One token per block; thread t handles work items t, t + blockDim.x, ...: an item is V consecutive pairs
// (x[j .. j+V), x[half + j .. half + j + V)) of one head of q (items first) or k. V = 16 bytes of scalar_t on
// the fast path, 1 on the scalar path; the arithmetic per pair is the same, so both paths give equal bits.
// Reads src, writes dst: the same memory for the in-place op, so no __restrict__ on them (q and k may also be
// views into one fused qkv buffer: disjoint, but one allocation). sign = -1: the inverse rotation (sin negated,
// exactly, so its rounding is the forward rotation's).
template <typename scalar_t, typename cache_t, int V, bool kVec>
__global__ void __launch_bounds__(kRotaryMaxBlock)
    rotary_kernel(const int64_t* __restrict__ pos64,          // [tokens], or nullptr when positions are int32
                  const int32_t* __restrict__ pos32,          // [tokens], or nullptr when positions are int64
                  const scalar_t* src_q, scalar_t* query,     // [tokens, q.heads, head_size] at their strides
                  const scalar_t* src_k, scalar_t* key,       // [tokens, k.heads, head_size] or nullptr
                  const cache_t* __restrict__ cos_sin_cache,  // [max_position, rot_dim] = [cos | sin]
                  HeadsView sq, HeadsView q, HeadsView sk, HeadsView k, int64_t tokens, int64_t max_position,
                  int half, gpu::acc_t<scalar_t> sign) {
  const int per_head = half / V;
  const int items = (q.heads + (key ? k.heads : 0)) * per_head;
  for (int64_t t = blockIdx.x; t < tokens; t += gridDim.x) {
    const int64_t p = pos64 ? pos64[t] : static_cast<int64_t>(pos32[t]);
    CUDA_KERNEL_ASSERT(p >= 0 && p < max_position);
    if (p < 0 || p >= max_position) continue;  // never read outside the cache, even with asserts compiled out
    const cache_t* cos = cos_sin_cache + p * 2 * half;
    for (int item = threadIdx.x; item < items; item += blockDim.x) {
      const int h = item / per_head;
      const int j = (item - h * per_head) * V;
      const bool is_q = h < q.heads;
      const int hh = is_q ? h : h - q.heads;
      const scalar_t* x = is_q ? src_q + t * sq.token_stride + hh * sq.head_stride
                               : src_k + t * sk.token_stride + hh * sk.head_stride;
      scalar_t* y = is_q ? query + t * q.token_stride + hh * q.head_stride
                         : key + t * k.token_stride + hh * k.head_stride;
      rotate_chunk<scalar_t, cache_t, V, kVec>(x, y, cos, j, half, sign);
    }
  }
}

// rotary_embedding_kv_cache: one (batch row, token) per block. Work items, V elements each: the rotated pairs of
// every q head (in place) and k head (into key_cache's slot), then the V-element chunks of every v head (into
// value_cache's slot) and of every k head's features past rot_dim (passed through). V = 16 bytes of scalar_t on
// the fast path, 1 on the scalar path.
struct TokenStrides {  // [B, T, heads, head_size] at its strides (elements)
  int64_t batch, token, head;
};
struct SlotStrides {  // [B, heads, capacity, head_size] at its strides (elements)
  int64_t batch, head, slot;
};

template <typename scalar_t, typename cache_t, int V, bool kVec>
__global__ void __launch_bounds__(kRotaryMaxBlock)
    rotary_kv_cache_kernel(const int64_t* __restrict__ pos64, const int32_t* __restrict__ pos32,  // [B * T]
                           const int64_t* __restrict__ slot64, const int32_t* __restrict__ slot32,  // [T]
                           scalar_t* query, const scalar_t* __restrict__ key, const scalar_t* __restrict__ value,
                           const cache_t* __restrict__ cos_sin_cache, scalar_t* __restrict__ key_cache,
                           scalar_t* __restrict__ value_cache, TokenStrides qs, TokenStrides ks, TokenStrides vs,
                           SlotStrides kcs, SlotStrides vcs, int q_heads, int kv_heads, int64_t tokens,
                           int64_t rows, int64_t max_position, int64_t capacity, int head_size, int half) {
  const int per_head = half / V;
  const int rot_items = (q_heads + kv_heads) * per_head;
  const int v_chunks = head_size / V, pass_chunks = (head_size - 2 * half) / V;
  const int items = rot_items + kv_heads * (v_chunks + pass_chunks);
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const int64_t b = row / tokens, t = row - b * tokens;
    const int64_t p = pos64 ? pos64[row] : static_cast<int64_t>(pos32[row]);
    const int64_t slot = slot64 ? slot64[t] : static_cast<int64_t>(slot32[t]);
    CUDA_KERNEL_ASSERT(p >= 0 && p < max_position);
    CUDA_KERNEL_ASSERT(slot >= 0 && slot < capacity);
    if (p < 0 || p >= max_position || slot < 0 || slot >= capacity) continue;  // never out of bounds
    const cache_t* cos = cos_sin_cache + p * 2 * half;
    scalar_t* q_tok = query + b * qs.batch + t * qs.token;
    const scalar_t* k_tok = key + b * ks.batch + t * ks.token;
    const scalar_t* v_tok = value + b * vs.batch + t * vs.token;
    scalar_t* kc_slot = key_cache + b * kcs.batch + slot * kcs.slot;
    scalar_t* vc_slot = value_cache + b * vcs.batch + slot * vcs.slot;
    for (int item = threadIdx.x; item < items; item += blockDim.x) {
      if (item < rot_items) {
        const int h = item / per_head, j = (item - h * per_head) * V;
        if (h < q_heads) {
          scalar_t* x = q_tok + h * qs.head;
          rotate_chunk<scalar_t, cache_t, V, kVec>(x, x, cos, j, half, 1);
        } else {
          const int hk = h - q_heads;
          rotate_chunk<scalar_t, cache_t, V, kVec>(k_tok + hk * ks.head, kc_slot + hk * kcs.head, cos, j, half, 1);
        }
        continue;
      }
      const int c = item - rot_items, per_kv = v_chunks + pass_chunks;
      const int h = c / per_kv, chunk = c - h * per_kv;
      const scalar_t* src;
      scalar_t* dst;
      if (chunk < v_chunks) {
        src = v_tok + h * vs.head + chunk * V;
        dst = vc_slot + h * vcs.head + chunk * V;
      } else {
        const int e = 2 * half + (chunk - v_chunks) * V;
        src = k_tok + h * ks.head + e;
        dst = kc_slot + h * kcs.head + e;
      }
      gpu::store_vec<kVec, scalar_t, V>(dst, gpu::load_vec<kVec, scalar_t, V>(src, V), V);
    }
  }
}

HeadsView heads_view(const at::Tensor* t) {
  return t ? HeadsView{t->stride(0), t->stride(1), static_cast<int>(t->size(1))} : HeadsView{0, 0, 0};
}

bool heads_aligned16(const at::Tensor* t, int64_t vec_elems) {
  return !t || (gpu::is_aligned16(t->const_data_ptr()) && t->stride(0) % vec_elems == 0 &&
                t->stride(1) % vec_elems == 0);
}

template <typename scalar_t, typename cache_t>
void launch_rotary(const at::Tensor& pos, const at::Tensor& src_q, at::Tensor& q, const at::Tensor* src_k,
                   at::Tensor* k, const at::Tensor& cache, bool inverse, cudaStream_t stream) {
  constexpr int V = gpu::kPackSize<scalar_t>;
  const int64_t tokens = q.size(0);
  const int half = static_cast<int>(cache.size(1) / 2);
  const gpu::acc_t<scalar_t> sign = inverse ? -1 : 1;
  const bool int64_pos = pos.scalar_type() == at::kLong;
  const int64_t* p64 = int64_pos ? pos.const_data_ptr<int64_t>() : nullptr;
  const int32_t* p32 = int64_pos ? nullptr : pos.const_data_ptr<int32_t>();
  const scalar_t* sqp = src_q.const_data_ptr<scalar_t>();
  scalar_t* qp = q.mutable_data_ptr<scalar_t>();
  const scalar_t* skp = k ? src_k->const_data_ptr<scalar_t>() : nullptr;
  scalar_t* kp = k ? k->mutable_data_ptr<scalar_t>() : nullptr;
  const cache_t* cp = cache.const_data_ptr<cache_t>();
  const HeadsView sqv = heads_view(&src_q), qv = heads_view(&q), skv = heads_view(src_k), kv = heads_view(k);
  const int heads = qv.heads + kv.heads;
  // 16-byte fast path: every chunk of src / dst q and k, cos and sin must start on a 16-byte boundary:
  // half % V == 0, token / head strides multiples of V, aligned bases; V cache elements must be whole 16-byte
  // chunks too (not so for float64 q with a float32 cache). Otherwise one pair per item.
  if constexpr ((sizeof(cache_t) * V) % 16 == 0) {
    const bool vec = half % V == 0 && heads_aligned16(&src_q, V) && heads_aligned16(&q, V) &&
                     heads_aligned16(src_k, V) && heads_aligned16(k, V) && gpu::is_aligned16(cp);
    if (vec) {
      rotary_kernel<scalar_t, cache_t, V, true><<<gpu::grid_size(tokens),
                                                  gpu::block_size(int64_t{heads} * (half / V), kRotaryMaxBlock),
                                                  0, stream>>>(p64, p32, sqp, qp, skp, kp, cp, sqv, qv, skv, kv,
                                                               tokens, cache.size(0), half, sign);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      return;
    }
  }
  rotary_kernel<scalar_t, cache_t, 1, false>
      <<<gpu::grid_size(tokens), gpu::block_size(int64_t{heads} * half, kRotaryMaxBlock), 0, stream>>>(
          p64, p32, sqp, qp, skp, kp, cp, sqv, qv, skv, kv, tokens, cache.size(0), half, sign);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

TokenStrides token_strides(const at::Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2)}; }
SlotStrides slot_strides(const at::Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2)}; }

bool strides_aligned16(const at::Tensor& t, int64_t vec_elems) {
  if (!gpu::is_aligned16(t.const_data_ptr())) return false;
  for (int64_t d = 0; d + 1 < t.dim(); ++d) {
    if (t.stride(d) % vec_elems != 0) return false;
  }
  return true;
}

template <typename scalar_t, typename cache_t>
void launch_rotary_kv_cache(const at::Tensor& pos, at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            const at::Tensor& cache, at::Tensor& kc, at::Tensor& vc, const at::Tensor& slots,
                            cudaStream_t stream) {
  constexpr int V = gpu::kPackSize<scalar_t>;
  const int64_t tokens = q.size(1), rows = q.size(0) * tokens;
  const int head_size = static_cast<int>(q.size(3));
  const int half = static_cast<int>(cache.size(1) / 2);
  const int q_heads = static_cast<int>(q.size(2)), kv_heads = static_cast<int>(k.size(2));
  const bool p64 = pos.scalar_type() == at::kLong, s64 = slots.scalar_type() == at::kLong;
  const int64_t* pp64 = p64 ? pos.const_data_ptr<int64_t>() : nullptr;
  const int32_t* pp32 = p64 ? nullptr : pos.const_data_ptr<int32_t>();
  const int64_t* sp64 = s64 ? slots.const_data_ptr<int64_t>() : nullptr;
  const int32_t* sp32 = s64 ? nullptr : slots.const_data_ptr<int32_t>();
  const auto args = [&](auto kernel, int v_elems) {
    const int64_t items = int64_t{q_heads + kv_heads} * (half / v_elems) +
                          int64_t{kv_heads} * ((head_size + head_size - 2 * half) / v_elems);
    kernel<<<gpu::grid_size(rows), gpu::block_size(items, kRotaryMaxBlock), 0, stream>>>(
        pp64, pp32, sp64, sp32, q.mutable_data_ptr<scalar_t>(), k.const_data_ptr<scalar_t>(),
        v.const_data_ptr<scalar_t>(), cache.const_data_ptr<cache_t>(), kc.mutable_data_ptr<scalar_t>(),
        vc.mutable_data_ptr<scalar_t>(), token_strides(q), token_strides(k), token_strides(v), slot_strides(kc),
        slot_strides(vc), q_heads, kv_heads, tokens, rows, cache.size(0), kc.size(2), head_size, half);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  };
  // 16-byte fast path: every chunk of q, k, v, the caches, cos and sin starts on a 16-byte boundary.
  if constexpr ((sizeof(cache_t) * V) % 16 == 0) {
    const bool vec = half % V == 0 && head_size % V == 0 && strides_aligned16(q, V) && strides_aligned16(k, V) &&
                     strides_aligned16(v, V) && strides_aligned16(kc, V) && strides_aligned16(vc, V) &&
                     gpu::is_aligned16(cache.const_data_ptr());
    if (vec) {
      args(rotary_kv_cache_kernel<scalar_t, cache_t, V, true>, V);
      return;
    }
  }
  args(rotary_kv_cache_kernel<scalar_t, cache_t, 1, false>, 1);
}

struct CudaRotary {
  using Guard = gpu::DeviceGuard;

  // int32 positions are read as they are (no conversion kernel); the CPU converts them to int64.
  static void rotary(const at::Tensor& pos, const at::Tensor& src_q, at::Tensor& q, const at::Tensor* src_k,
                     at::Tensor* k, const at::Tensor& cache, bool inverse) {
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    HOPSCOTCH_DISPATCH_FLOATING_TYPES_AND_DOUBLE(q.scalar_type(), "rotary_embedding_cuda", [&] {
      if (cache.scalar_type() == at::kFloat) {
        launch_rotary<scalar_t, float>(pos, src_q, q, src_k, k, cache, inverse, stream);
      } else {
        launch_rotary<scalar_t, scalar_t>(pos, src_q, q, src_k, k, cache, inverse, stream);
      }
    });
  }

  static void rotary_kv_cache(const at::Tensor& pos, at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                              const at::Tensor& cache, at::Tensor& kc, at::Tensor& vc, const at::Tensor& slots) {
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    HOPSCOTCH_DISPATCH_FLOATING_TYPES_AND_DOUBLE(q.scalar_type(), "rotary_embedding_kv_cache_cuda", [&] {
      if (cache.scalar_type() == at::kFloat) {
        launch_rotary_kv_cache<scalar_t, float>(pos, q, k, v, cache, kc, vc, slots, stream);
      } else {
        launch_rotary_kv_cache<scalar_t, scalar_t>(pos, q, k, v, cache, kc, vc, slots, stream);
      }
    });
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(hopscotch_ext, CUDA, m) {
  HOPSCOTCH_REGISTER_ROTARY(m, CudaRotary);
}

}  // namespace hopscotch
