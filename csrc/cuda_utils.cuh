// Shared pieces of the CUDA kernels: 16-byte chunk loads / stores, float32 (float64) math helpers that pin
// the rounding, a deterministic block sum and launch-shape helpers.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/macros/Macros.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <type_traits>

namespace hopscotch::gpu {

// float32 accumulation; float64 stays float64 (gradcheck and the float64 oracles), as on the CPU.
template <typename scalar_t>
using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

constexpr int kWarpSize = 32;
constexpr int kMaxBlock = 1024;

// Elements of T in 16 bytes: the widest load one thread can issue (LDG.128): 8 bf16 / fp16, 4 float, 2 double.
template <typename T>
constexpr int kPackSize = static_cast<int>(16 / sizeof(T));

// N consecutive elements of T held in registers. alignas(16) so that, when the fast path reinterprets a
// 16-byte-aligned global address as a Vec, the compiler emits 128-bit loads / stores.
template <typename T, int N>
struct alignas(16) Vec {
  T v[N];
};

// Loads elements [0, N) of p. kVec: as whole 16-byte transactions; the caller has checked that p is 16-byte
// aligned and that all N elements exist. Otherwise element by element, only the first n (<= N) elements,
// the rest set to zero, so the same per-element arithmetic serves both paths (their results are identical).
template <bool kVec, typename T, int N>
__device__ __forceinline__ Vec<T, N> load_vec(const T* p, int n) {
  Vec<T, N> r;
  if constexpr (kVec) {
    static_assert((sizeof(T) * N) % 16 == 0, "the vector path moves whole 16-byte chunks");
    r = *reinterpret_cast<const Vec<T, N>*>(p);
  } else {
#pragma unroll
    for (int j = 0; j < N; ++j) r.v[j] = j < n ? p[j] : static_cast<T>(0.f);
  }
  return r;
}

// Stores elements [0, N) of r to p (kVec) or only the first n of them (scalar path); see load_vec.
template <bool kVec, typename T, int N>
__device__ __forceinline__ void store_vec(T* p, const Vec<T, N>& r, int n) {
  if constexpr (kVec) {
    static_assert((sizeof(T) * N) % 16 == 0, "the vector path moves whole 16-byte chunks");
    *reinterpret_cast<Vec<T, N>*>(p) = r;
  } else {
#pragma unroll
    for (int j = 0; j < N; ++j) {
      if (j < n) p[j] = r.v[j];
    }
  }
}

// Math in the accumulation type, with the rounding written out rather than left to nvcc's contraction of
// a * b + c into an FMA (which would change results between otherwise identical expressions).
template <typename A>
__device__ __forceinline__ A fma_(A a, A b, A c) {
  if constexpr (std::is_same_v<A, double>) return __fma_rn(a, b, c);
  else return __fmaf_rn(a, b, c);
}
template <typename A>
__device__ __forceinline__ A mul_rn(A a, A b) {  // never merged into an FMA
  if constexpr (std::is_same_v<A, double>) return __dmul_rn(a, b);
  else return __fmul_rn(a, b);
}
template <typename A>
__device__ __forceinline__ A add_rn(A a, A b) {
  if constexpr (std::is_same_v<A, double>) return __dadd_rn(a, b);
  else return __fadd_rn(a, b);
}
template <typename A>
__device__ __forceinline__ A sub_rn(A a, A b) {
  if constexpr (std::is_same_v<A, double>) return __dsub_rn(a, b);
  else return __fsub_rn(a, b);
}
// IEEE sqrt and exp (not the approximate rsqrtf / __expf): the CPU kernels use 1 / std::sqrt and std::exp.
template <typename A>
__device__ __forceinline__ A sqrt_(A a) {
  if constexpr (std::is_same_v<A, double>) return ::sqrt(a);
  else return ::sqrtf(a);
}
template <typename A>
__device__ __forceinline__ A exp_(A a) {
  if constexpr (std::is_same_v<A, double>) return ::exp(a);
  else return ::expf(a);
}

template <typename A>
__device__ __forceinline__ A warp_sum(A v) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Sum of v over the block, returned to every thread. Every thread of the block must call it, and blockDim.x
// must be a multiple of 32 (the launchers round up). The order of the additions depends only on blockDim.x,
// so a given shape always gives the same bits. Callable repeatedly (once per row) without a third barrier:
// warp 0 reads `partial` before the second barrier, which every thread passes before it can write `partial`
// again; every thread reads `total` before it reaches the next call's first barrier, after which alone
// `total` is rewritten.
template <typename A>
__device__ __forceinline__ A block_sum(A v) {
  __shared__ A partial[kMaxBlock / kWarpSize];
  __shared__ A total;
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  v = warp_sum(v);
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  if (warp == 0) {
    A t = lane < static_cast<int>(blockDim.x / kWarpSize) ? partial[lane] : A(0);
    t = warp_sum(t);
    if (lane == 0) total = t;
  }
  __syncthreads();
  return total;
}

// The Guard of the CUDA launcher families (csrc/ops.h): every host function runs on its input's device.
struct DeviceGuard {
  c10::cuda::CUDAGuard guard;
  explicit DeviceGuard(const at::Tensor& t) : guard(t.device()) {}
};

inline bool is_aligned16(const void* p) {
  return reinterpret_cast<std::uintptr_t>(p) % 16 == 0;
}

// Threads per block for `items` units of work: whole warps (block_sum needs them), at most max_threads.
inline int block_size(int64_t items, int max_threads) {
  const int64_t warps = (items + kWarpSize - 1) / kWarpSize;
  return static_cast<int>(std::clamp<int64_t>(warps * kWarpSize, kWarpSize, max_threads));
}

// Blocks for `rows` rows, one row per block; the kernels loop (row += gridDim.x) past the grid limit.
inline unsigned grid_size(int64_t rows) {
  return static_cast<unsigned>(std::min<int64_t>(rows, std::numeric_limits<int32_t>::max()));
}

}  // namespace hopscotch::gpu
