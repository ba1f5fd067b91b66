// CUDA kernels of silu_and_mul (out[r, j] = silu(gate_up[r, j]) * gate_up[r, d + j], d = half the last dim) and
// of silu_gate_up's fused decode path; the functions of csrc/cpu/activation.cpp: g / (1 + exp(-g)) * u in
// float32, rounded once. The host functions (checks, fused-vs-GEMM choice) are shared with the CPU: csrc/ops.h.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "checks.h"
#include "cuda_utils.cuh"
#include "dispatch_utils.h"
#include "ops.h"

namespace hopscotch {
namespace {

// Threads of a block: enough for one 16-byte chunk each at d <= 4096 (bf16); larger rows loop. A purely
// elementwise kernel needs no more per block to keep loads in flight, and smaller blocks pack SMs better.
constexpr int kSiluMaxBlock = 512;

// One row per block; thread t handles chunks t, t + blockDim.x, ... of V elements of gate, up and out.
template <typename scalar_t, bool kVec>
__global__ void __launch_bounds__(kSiluMaxBlock)
    silu_and_mul_kernel(const scalar_t* __restrict__ gate_up,  // [rows, 2 * d] = [gate | up]
                        scalar_t* __restrict__ out,            // [rows, d]
                        int64_t rows, int64_t d) {
  using acc = gpu::acc_t<scalar_t>;
  constexpr int V = gpu::kPackSize<scalar_t>;
  using Chunk = gpu::Vec<scalar_t, V>;
  const int64_t chunks = (d + V - 1) / V;
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const scalar_t* gate = gate_up + row * 2 * d;
    const scalar_t* up = gate + d;
    for (int64_t c = threadIdx.x; c < chunks; c += blockDim.x) {
      const int64_t i = c * V;
      const int n = static_cast<int>(d - i < V ? d - i : V);
      const Chunk g = gpu::load_vec<kVec, scalar_t, V>(gate + i, n);
      const Chunk u = gpu::load_vec<kVec, scalar_t, V>(up + i, n);
      Chunk o;
#pragma unroll
      for (int j = 0; j < V; ++j) {
        // silu(g) = g / (1 + exp(-g)); exp of a large -g gives inf and g / inf = -0, the right limit.
        const acc gf = static_cast<acc>(g.v[j]);
        const acc silu = gf / gpu::add_rn(acc(1), gpu::exp_(-gf));
        o.v[j] = static_cast<scalar_t>(gpu::mul_rn(silu, static_cast<acc>(u.v[j])));
      }
      gpu::store_vec<kVec, scalar_t, V>(out + row * d + i, o, n);
    }
  }
}

// Output columns (warps) per block of the fused decode MLP kernel.
constexpr int kGemvWarps = 4;

// silu_gate_up for tokens <= kFusedMaxTokens (16): one warp per output column j reads row j of W_gate and of
// W_up once (16-byte loads on the fast path) and accumulates the dot products of every token in registers
// (float32), then reduces across the warp (xor butterfly: the same order for a given shape, every run) and
// writes silu(g + b_g) * (u + b_u) rounded once. Nothing of size 2 * inter is written; x (a few KB) is read by
// every warp from L1 / L2. The scalar path (odd hidden, unaligned views) reads one element per lane per step.
template <typename scalar_t, bool kVec>
__global__ void __launch_bounds__(kGemvWarps * gpu::kWarpSize)
    silu_gate_up_small_kernel(const scalar_t* __restrict__ x,     // [tokens, hidden]
                              const scalar_t* __restrict__ w,     // [2 * inter, hidden] = [W_gate ; W_up]
                              const scalar_t* __restrict__ bias,  // [2 * inter], or nullptr
                              scalar_t* __restrict__ out,         // [tokens, inter]
                              int tokens, int64_t hidden, int64_t inter) {
  using acc = gpu::acc_t<scalar_t>;
  constexpr int V = kVec ? gpu::kPackSize<scalar_t> : 1;
  const int lane = threadIdx.x % gpu::kWarpSize;
  const int64_t j = static_cast<int64_t>(blockIdx.x) * kGemvWarps + threadIdx.x / gpu::kWarpSize;
  if (j >= inter) return;  // the whole warp leaves together: the shuffles below see full warps
  const scalar_t* wg = w + j * hidden;
  const scalar_t* wu = w + (inter + j) * hidden;
  acc ag[kFusedMlpMaxTokens], au[kFusedMlpMaxTokens];
#pragma unroll
  for (int t = 0; t < kFusedMlpMaxTokens; ++t) ag[t] = au[t] = acc(0);
  for (int64_t i = static_cast<int64_t>(lane) * V; i < hidden; i += gpu::kWarpSize * V) {
    const auto g = gpu::load_vec<kVec, scalar_t, V>(wg + i, V);
    const auto u = gpu::load_vec<kVec, scalar_t, V>(wu + i, V);
#pragma unroll
    for (int t = 0; t < kFusedMlpMaxTokens; ++t) {
      if (t < tokens) {
        const auto xv = gpu::load_vec<kVec, scalar_t, V>(x + t * hidden + i, V);
#pragma unroll
        for (int e = 0; e < V; ++e) {
          const acc xf = static_cast<acc>(xv.v[e]);
          ag[t] = gpu::fma_(xf, static_cast<acc>(g.v[e]), ag[t]);
          au[t] = gpu::fma_(xf, static_cast<acc>(u.v[e]), au[t]);
        }
      }
    }
  }
  const acc bg = bias ? static_cast<acc>(bias[j]) : acc(0);
  const acc bu = bias ? static_cast<acc>(bias[inter + j]) : acc(0);
#pragma unroll
  for (int t = 0; t < kFusedMlpMaxTokens; ++t) {
    if (t < tokens) {  // tokens is the same for every lane: all 32 take part in each shuffle
      const acc gf = gpu::add_rn(gpu::warp_sum(ag[t]), bg);
      const acc uf = gpu::add_rn(gpu::warp_sum(au[t]), bu);
      if (lane == 0) {
        const acc silu = gf / gpu::add_rn(acc(1), gpu::exp_(-gf));
        out[t * inter + j] = static_cast<scalar_t>(gpu::mul_rn(silu, uf));
      }
    }
  }
}

struct CudaActivation {
  using Guard = gpu::DeviceGuard;
  // Decode sizes: all tokens' accumulators fit in registers; not measured here (no GPU on the build machines).
  static constexpr int64_t kFusedMaxTokens = kFusedMlpMaxTokens;

  static void silu_and_mul(const at::Tensor& in, at::Tensor& out) {
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    const int64_t d = out.size(-1);
    const int64_t rows = out.numel() / d;
    HOPSCOTCH_DISPATCH_FLOATING_TYPES_AND_DOUBLE(in.scalar_type(), "silu_and_mul_cuda", [&] {
      constexpr int V = gpu::kPackSize<scalar_t>;
      const scalar_t* ip = in.const_data_ptr<scalar_t>();
      scalar_t* op = out.mutable_data_ptr<scalar_t>();
      // 16-byte fast path: gate, up and out rows all start on 16-byte boundaries when d % V == 0 and both
      // bases are aligned (an offset view of a bigger buffer may not be); otherwise the scalar path.
      const bool vec = d % V == 0 && gpu::is_aligned16(ip) && gpu::is_aligned16(op);
      const int threads = gpu::block_size((d + V - 1) / V, kSiluMaxBlock);
      auto kernel = vec ? silu_and_mul_kernel<scalar_t, true> : silu_and_mul_kernel<scalar_t, false>;
      kernel<<<gpu::grid_size(rows), threads, 0, stream>>>(ip, op, rows, d);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }

  static void silu_gate_up_small(const at::Tensor& x, const at::Tensor& weight, const at::Tensor* bias,
                                 at::Tensor& out) {
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    const int tokens = static_cast<int>(x.size(0));
    const int64_t hidden = x.size(1), inter = out.size(1);
    HOPSCOTCH_DISPATCH_FLOATING_TYPES_AND_DOUBLE(x.scalar_type(), "silu_gate_up_cuda", [&] {
      constexpr int V = gpu::kPackSize<scalar_t>;
      const scalar_t* xp = x.const_data_ptr<scalar_t>();
      const scalar_t* wp = weight.const_data_ptr<scalar_t>();
      const scalar_t* bp = bias ? bias->const_data_ptr<scalar_t>() : nullptr;
      scalar_t* op = out.mutable_data_ptr<scalar_t>();
      // 16-byte fast path: every x row and weight row starts on a 16-byte boundary when hidden % V == 0 and
      // both bases are aligned; odd hidden sizes (769) and offset views take the one-element path.
      const bool vec = hidden % V == 0 && gpu::is_aligned16(xp) && gpu::is_aligned16(wp);
      const unsigned blocks = gpu::grid_size((inter + kGemvWarps - 1) / kGemvWarps);
      auto kernel = vec ? silu_gate_up_small_kernel<scalar_t, true> : silu_gate_up_small_kernel<scalar_t, false>;
      kernel<<<blocks, kGemvWarps * gpu::kWarpSize, 0, stream>>>(xp, wp, bp, op, tokens, hidden, inter);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(hopscotch_ext, CUDA, m) {
  HOPSCOTCH_REGISTER_ACTIVATION(m, CudaActivation);
}

}  // namespace hopscotch
