// CUDA kernel of silu_and_mul: out[r, j] = silu(gate_up[r, j]) * gate_up[r, d + j], d = half the last dim;
// the function of csrc/cpu/activation.cpp: g / (1 + exp(-g)) * u in float32, rounded once.
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <vector>

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

}  // namespace

at::Tensor silu_and_mul_cuda(const at::Tensor& gate_up) {
  check_silu_and_mul_input(gate_up, "silu_and_mul");
  const c10::cuda::CUDAGuard guard(gate_up.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor in = gate_up.contiguous();
  const int64_t d = in.size(-1) / 2;
  std::vector<int64_t> out_shape(in.sizes().begin(), in.sizes().end());
  out_shape.back() = d;
  at::Tensor out = at::empty(out_shape, in.options());
  const int64_t rows = d == 0 ? 0 : in.numel() / (2 * d);
  if (rows == 0) return out;
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
  return out;
}

TORCH_LIBRARY_IMPL(hopscotch_ext, CUDA, m) {
  m.impl("silu_and_mul", &silu_and_mul_cuda);
}

}  // namespace hopscotch
