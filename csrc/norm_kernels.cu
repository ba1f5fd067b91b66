// CUDA kernels of rms_norm and scaled_add_rms_norm (+ its in-place form): the function of csrc/cpu/norm.cpp
// with the same rounding points. new_residual = fma(s, residual, b * x) in float32, rounded to the dtype and
// stored; the sum of squares and the output use that rounded value; the output x * rstd * weight is rounded
// once. One block per row, two passes: (1) form and store the residual sum, cache the row in shared memory,
// accumulate its sum of squares, block-reduce; (2) scale by rstd * weight. The host functions (checks, layout,
// device guard) are shared with the CPU: csrc/ops.h.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "checks.h"
#include "cuda_utils.cuh"
#include "dispatch_utils.h"
#include "ops.h"

namespace hopscotch {
namespace {

// Rows up to this size (bf16 / fp16 hidden <= 16384, float32 <= 8192) stay in shared memory between the two
// passes, so every input is read from global memory once. Below the 48 KB a block may use without opting in,
// and small enough that several blocks still fit on an SM. Longer rows are re-read in pass 2 (from L2 mostly).
constexpr int64_t kMaxCachedRowBytes = 32 * 1024;

// One row per block, thread t owning chunks t, t + blockDim.x, ... of V elements in both passes, so a thread
// only re-reads what it wrote itself (no barrier needed around the row cache) and the scalar fallback adds
// the squares in exactly the vector path's order. No __restrict__ on x / out and residual / new_residual:
// the in-place op passes the same pointer for each pair; every element is read before that index is written.
template <typename scalar_t, bool kVec>
__global__ void __launch_bounds__(gpu::kMaxBlock)
    norm_kernel(const scalar_t* x,                           // [rows, hidden]
                const scalar_t* residual,                    // [rows, hidden], or nullptr for plain rms_norm
                const scalar_t* __restrict__ weight,         // [hidden]
                scalar_t* out,                               // [rows, hidden]
                scalar_t* new_residual,                      // [rows, hidden] (unused without residual)
                const gpu::acc_t<scalar_t>* __restrict__ b,  // [1], read here: a host read would sync
                const gpu::acc_t<scalar_t>* __restrict__ s,  // [1]
                gpu::acc_t<scalar_t> eps, int64_t rows, int64_t hidden, bool cache_row) {
  using acc = gpu::acc_t<scalar_t>;
  constexpr int V = gpu::kPackSize<scalar_t>;
  using Chunk = gpu::Vec<scalar_t, V>;
  extern __shared__ __align__(16) unsigned char smem[];
  Chunk* cache = cache_row ? reinterpret_cast<Chunk*>(smem) : nullptr;  // [ceil(hidden / V)]
  const acc bv = residual ? *b : acc(1);
  const acc sv = residual ? *s : acc(1);
  const scalar_t* normed_src = residual ? new_residual : x;
  const int64_t chunks = (hidden + V - 1) / V;
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const int64_t off = row * hidden;
    acc sumsq = 0;
    for (int64_t c = threadIdx.x; c < chunks; c += blockDim.x) {
      const int64_t i = c * V;
      const int n = static_cast<int>(hidden - i < V ? hidden - i : V);
      Chunk v = gpu::load_vec<kVec, scalar_t, V>(x + off + i, n);
      if (residual) {
        const Chunk r = gpu::load_vec<kVec, scalar_t, V>(residual + off + i, n);
#pragma unroll
        for (int j = 0; j < V; ++j) {
          // Rounded to the dtype here: the norm sees what is stored, as in an unfused model.
          v.v[j] = static_cast<scalar_t>(gpu::fma_(sv, static_cast<acc>(r.v[j]), bv * static_cast<acc>(v.v[j])));
        }
        gpu::store_vec<kVec, scalar_t, V>(new_residual + off + i, v, n);
      }
      if (cache) cache[c] = v;
#pragma unroll
      for (int j = 0; j < V; ++j) {
        const acc f = static_cast<acc>(v.v[j]);
        if (kVec || j < n) sumsq = gpu::fma_(f, f, sumsq);  // padding lanes may hold inf * 0 = NaN
      }
    }
    const acc rstd = acc(1) / gpu::sqrt_(gpu::block_sum(sumsq) / static_cast<acc>(hidden) + eps);
    for (int64_t c = threadIdx.x; c < chunks; c += blockDim.x) {
      const int64_t i = c * V;
      const int n = static_cast<int>(hidden - i < V ? hidden - i : V);
      const Chunk v = cache ? cache[c] : gpu::load_vec<kVec, scalar_t, V>(normed_src + off + i, n);
      const Chunk w = gpu::load_vec<kVec, scalar_t, V>(weight + i, n);
      Chunk o;
#pragma unroll
      for (int j = 0; j < V; ++j) {
        o.v[j] = static_cast<scalar_t>(gpu::mul_rn(gpu::mul_rn(static_cast<acc>(v.v[j]), rstd),
                                                   static_cast<acc>(w.v[j])));
      }
      gpu::store_vec<kVec, scalar_t, V>(out + off + i, o, n);
    }
  }
}

// All rows of contiguous [rows, hidden] tensors, on the current stream. residual == nullptr: plain rms_norm.
struct CudaNorm {
  using Guard = gpu::DeviceGuard;
  static void norm(const at::Tensor& x, const at::Tensor* residual, const at::Tensor& weight, at::Tensor& out,
                   at::Tensor* new_residual, const at::Tensor* b, const at::Tensor* s, double eps);
};

void CudaNorm::norm(const at::Tensor& x, const at::Tensor* residual, const at::Tensor& weight, at::Tensor& out,
                    at::Tensor* new_residual, const at::Tensor* b, const at::Tensor* s, double eps) {
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t hidden = x.size(-1);
  const int64_t rows = hidden == 0 ? 0 : x.numel() / hidden;
  if (rows == 0) return;
  HOPSCOTCH_DISPATCH_FLOATING_TYPES_AND_DOUBLE(x.scalar_type(), "hopscotch_norm_cuda", [&] {
    using acc = gpu::acc_t<scalar_t>;
    constexpr int V = gpu::kPackSize<scalar_t>;
    // b and s stay on the device: .to() is a no-op for float32 scalars, else a one-element cast on this stream.
    const at::ScalarType acc_type = std::is_same_v<acc, double> ? at::kDouble : at::kFloat;
    const at::Tensor bd = b ? b->to(acc_type) : at::Tensor();
    const at::Tensor sd = s ? s->to(acc_type) : at::Tensor();
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* rp = residual ? residual->const_data_ptr<scalar_t>() : nullptr;
    const scalar_t* wp = weight.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    scalar_t* nrp = new_residual ? new_residual->mutable_data_ptr<scalar_t>() : nullptr;
    // 16-byte fast path: every row must start on a 16-byte boundary (hidden % V == 0 and aligned bases).
    // Views, odd hidden sizes (769, 5125) and offset storage take the scalar path, which is equally correct.
    const bool vec = hidden % V == 0 && gpu::is_aligned16(xp) && gpu::is_aligned16(wp) && gpu::is_aligned16(op) &&
                     (!rp || (gpu::is_aligned16(rp) && gpu::is_aligned16(nrp)));
    const int64_t chunks = (hidden + V - 1) / V;
    const int threads = gpu::block_size(chunks, gpu::kMaxBlock);
    const int64_t row_bytes = chunks * static_cast<int64_t>(sizeof(gpu::Vec<scalar_t, V>));
    const bool cache_row = row_bytes <= kMaxCachedRowBytes;
    const size_t smem = cache_row ? static_cast<size_t>(row_bytes) : 0;
    auto kernel = vec ? norm_kernel<scalar_t, true> : norm_kernel<scalar_t, false>;
    kernel<<<gpu::grid_size(rows), threads, smem, stream>>>(
        xp, rp, wp, op, nrp, bd.defined() ? bd.const_data_ptr<acc>() : nullptr,
        sd.defined() ? sd.const_data_ptr<acc>() : nullptr, static_cast<acc>(eps), rows, hidden, cache_row);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(hopscotch_ext, CUDA, m) {
  HOPSCOTCH_REGISTER_NORM(m, CudaNorm);
}

}  // namespace hopscotch
