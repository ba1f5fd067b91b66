// CPU kernels of silu_and_mul (out[r, j] = silu(gate_up[r, j]) * gate_up[r, d + j]) and of silu_gate_up's
// fused decode path (silu(x W_gate^T + b_gate) * (x W_up^T + b_up) for a few tokens, in one pass over the
// weights). The host functions (checks, the fused-vs-GEMM choice) are shared with CUDA: csrc/ops.h.
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <cmath>

#include "../checks.h"
#include "../dispatch_utils.h"
#include "../ops.h"
#include "vec_utils.h"

namespace hopscotch {
namespace {

using cpu::acc_t;
using cpu::kChunk;
using cpu::Vec;

// silu(g) = g / (1 + exp(-g)); exp of a large -g gives inf and g / inf = -0, the right limit.
template <typename A>
inline A silu(A g) {
  return g / (A(1) + std::exp(-g));
}

// One row; the last partial chunk goes through the same vector code (load2 / store2 with a count).
template <typename scalar_t>
void silu_and_mul_row(const scalar_t* __restrict__ gate,  // [d]
                      const scalar_t* __restrict__ up,    // [d]
                      scalar_t* __restrict__ out,         // [d]
                      int64_t d) {
  if constexpr (std::is_same_v<scalar_t, double>) {
    for (int64_t j = 0; j < d; ++j) out[j] = silu(gate[j]) * up[j];
  } else {
    const Vec one(1.f);
    for (int64_t j = 0; j < d; j += kChunk) {
      const int64_t n = std::min<int64_t>(kChunk, d - j);
      Vec ga, gb, ua, ub;
      cpu::load2(gate + j, ga, gb, n);
      cpu::load2(up + j, ua, ub, n);
      const Vec sa = ga / (one + ga.neg().exp());
      const Vec sb = gb / (one + gb.neg().exp());
      cpu::store2(out + j, sa * ua, sb * ub, n);
    }
  }
}

// Dot products of NT tokens of x (float32) with one W_gate row and one W_up row, in one pass over the rows.
// Four independent accumulators per token (gate / up x the two float32 halves of a chunk) keep FMA latency
// hidden even for one token: 4 NT accumulators + 4 weight + 2 x vectors fit AVX2's 16 registers for NT <= 2.
// The partial last chunk is zero-padded and goes through the same FMAs (same rounding as the others).
template <int NT, typename w_t>
void dot_block(const float* __restrict__ x,  // [NT, hidden] at row stride hidden
               const w_t* __restrict__ wg,   // [hidden]
               const w_t* __restrict__ wu,   // [hidden]
               int64_t hidden, float* __restrict__ g, float* __restrict__ u) {
  Vec acc[NT][4];
  for (int t = 0; t < NT; ++t) acc[t][0] = acc[t][1] = acc[t][2] = acc[t][3] = Vec(0.f);
  for (int64_t i = 0; i < hidden; i += kChunk) {
    const int64_t n = std::min<int64_t>(kChunk, hidden - i);
    Vec ga, gb, ua, ub;
    cpu::load2(wg + i, ga, gb, n);
    cpu::load2(wu + i, ua, ub, n);
#pragma GCC unroll 2
    for (int t = 0; t < NT; ++t) {
      Vec xa, xb;
      cpu::load2(x + t * hidden + i, xa, xb, n);
      acc[t][0] = at::vec::fmadd(xa, ga, acc[t][0]);
      acc[t][1] = at::vec::fmadd(xb, gb, acc[t][1]);
      acc[t][2] = at::vec::fmadd(xa, ua, acc[t][2]);
      acc[t][3] = at::vec::fmadd(xb, ub, acc[t][3]);
    }
  }
  for (int t = 0; t < NT; ++t) {
    g[t] = cpu::lane_sum(acc[t][0] + acc[t][1]);
    u[t] = cpu::lane_sum(acc[t][2] + acc[t][3]);
  }
}

// Output column j for every token: W_gate row j and W_up row j against x [tokens, hidden] (float32), float32
// accumulation, two tokens per pass over the rows.
template <typename scalar_t>
void gate_up_column(const float* __restrict__ x,      // [tokens, hidden], float32
                    const scalar_t* __restrict__ wg,  // [hidden]: W_gate row j
                    const scalar_t* __restrict__ wu,  // [hidden]: W_up row j
                    int64_t tokens, int64_t hidden, float* __restrict__ g,  // [tokens]
                    float* __restrict__ u) {                                // [tokens]
  int64_t t = 0;
  for (; t + 2 <= tokens; t += 2) dot_block<2>(x + t * hidden, wg, wu, hidden, g + t, u + t);
  if (t < tokens) dot_block<1>(x + t * hidden, wg, wu, hidden, g + t, u + t);
}

// float64 (gradcheck only): plain loops.
void gate_up_column(const double* x, const double* wg, const double* wu, int64_t tokens, int64_t hidden, double* g,
                    double* u) {
  for (int64_t t = 0; t < tokens; ++t) {
    double sg = 0, su = 0;
    for (int64_t i = 0; i < hidden; ++i) {
      sg = std::fma(x[t * hidden + i], wg[i], sg);
      su = std::fma(x[t * hidden + i], wu[i], su);
    }
    g[t] = sg;
    u[t] = su;
  }
}

struct CpuActivation {
  using Guard = NoGuard;
  // Measured on AVX2 (benchmarks/bench_ops.py, 2 threads): the fused kernel beats F.linear + silu * mul at 1 and
  // 2 tokens, fp32 and bf16; from 4 on, oneDNN's blocked GEMM, which re-uses x across weight tiles, wins.
  static constexpr int64_t kFusedMaxTokens = 2;

  static void silu_and_mul(const at::Tensor& in, at::Tensor& out) {
    const int64_t d = out.size(-1);
    const int64_t rows = out.numel() / d;
    HOPSCOTCH_DISPATCH_FLOATING_TYPES_AND_DOUBLE(in.scalar_type(), "silu_and_mul_cpu", [&] {
      const scalar_t* ip = in.const_data_ptr<scalar_t>();
      scalar_t* op = out.mutable_data_ptr<scalar_t>();
      at::parallel_for(0, rows, cpu::row_grain(2 * d), [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) {
          silu_and_mul_row<scalar_t>(ip + r * 2 * d, ip + r * 2 * d + d, op + r * d, d);
        }
      });
    });
  }

  // One task per block of output columns: each column reads its two weight rows once for all tokens, so the
  // weights (the bulk of the traffic at decode) stream through memory once and nothing of size 2 * inter is
  // written. x is converted to float32 once, up front (it is tokens x hidden, tiny next to the weights).
  static void silu_gate_up_small(const at::Tensor& x, const at::Tensor& weight, const at::Tensor* bias,
                                 at::Tensor& out) {
    const int64_t tokens = x.size(0), hidden = x.size(1), inter = out.size(1);
    HOPSCOTCH_DISPATCH_FLOATING_TYPES_AND_DOUBLE(x.scalar_type(), "silu_gate_up_cpu", [&] {
      using acc = acc_t<scalar_t>;
      const at::Tensor xf = x.to(std::is_same_v<acc, double> ? at::kDouble : at::kFloat).contiguous();
      const acc* xp = xf.const_data_ptr<acc>();
      const scalar_t* wp = weight.const_data_ptr<scalar_t>();
      const scalar_t* bp = bias ? bias->const_data_ptr<scalar_t>() : nullptr;
      scalar_t* op = out.mutable_data_ptr<scalar_t>();
      const int64_t grain = cpu::row_grain(2 * hidden * tokens);
      at::parallel_for(0, inter, grain, [&](int64_t begin, int64_t end) {
        acc g[kFusedMlpMaxTokens], u[kFusedMlpMaxTokens];
        for (int64_t j = begin; j < end; ++j) {
          gate_up_column(xp, wp + j * hidden, wp + (inter + j) * hidden, tokens, hidden, g, u);
          const acc bg = bp ? static_cast<acc>(bp[j]) : acc(0);
          const acc bu = bp ? static_cast<acc>(bp[inter + j]) : acc(0);
          for (int64_t t = 0; t < tokens; ++t) op[t * inter + j] = static_cast<scalar_t>(silu(g[t] + bg) * (u[t] + bu));
        }
      });
    });
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(hopscotch_ext, CPU, m) {
  HOPSCOTCH_REGISTER_ACTIVATION(m, CpuActivation);
}

}  // namespace hopscotch
