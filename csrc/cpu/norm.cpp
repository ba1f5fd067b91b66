// CPU kernels of rms_norm and scaled_add_rms_norm (+ its in-place form).
// The host functions (checks, layout) are shared with CUDA: csrc/ops.h. One task per block of rows
// (at::parallel_for); within a row two passes: (1) form the residual sum, round it to the model dtype, store it
// and accumulate its sum of squares; (2) scale by rstd * weight. The row is re-read in pass 2 from L1/L2, not
// from memory, for every hidden size a model has.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../checks.h"
#include "../dispatch_utils.h"
#include "../ops.h"
#include "vec_utils.h"

namespace hopscotch {
namespace {

using cpu::acc_t;
using cpu::kChunk;
using cpu::Vec;

// One row. residual == nullptr means plain rms_norm of x. No __restrict__ on x / out and on residual /
// new_residual: the in-place op passes the same pointer for each pair (every element is read before the
// same index is written). float / bf16 / fp16 rows run entirely in float32 vectors, the last partial chunk
// included (load2 / store2 with a count), so every element is rounded the same way wherever it sits in the
// row; float64 (gradcheck only) takes a scalar loop with the same FMAs.
template <typename scalar_t>
void norm_row(const scalar_t* x,                       // [hidden]
              const scalar_t* residual,                // [hidden] or nullptr
              const scalar_t* __restrict__ weight,     // [hidden]
              scalar_t* out,                           // [hidden]
              scalar_t* new_residual,                  // [hidden] (unused when residual == nullptr)
              acc_t<scalar_t> b, acc_t<scalar_t> s, double eps, int64_t hidden) {
  using acc = acc_t<scalar_t>;
  const scalar_t* normed_src = residual ? new_residual : x;
  if constexpr (std::is_same_v<scalar_t, double>) {
    double sumsq = 0;
    for (int64_t i = 0; i < hidden; ++i) {
      double v = x[i];
      if (residual) v = new_residual[i] = std::fma(s, residual[i], b * v);
      sumsq = std::fma(v, v, sumsq);
    }
    const double rstd = 1.0 / std::sqrt(sumsq / static_cast<double>(hidden) + eps);
    for (int64_t i = 0; i < hidden; ++i) out[i] = normed_src[i] * rstd * weight[i];
  } else {
    Vec acc0(0.f), acc1(0.f);
    const Vec bv(b), sv(s);
    for (int64_t i = 0; i < hidden; i += kChunk) {
      const int64_t n = std::min<int64_t>(kChunk, hidden - i);
      Vec va, vb;
      cpu::load2(x + i, va, vb, n);
      if (residual) {
        Vec ra, rb;
        cpu::load2(residual + i, ra, rb, n);
        va = at::vec::fmadd(sv, ra, bv * va);
        vb = at::vec::fmadd(sv, rb, bv * vb);
        cpu::store2(new_residual + i, va, vb, n);
        cpu::round_trip2<scalar_t>(va, vb);  // normalise what was stored, as an unfused model does
      }
      acc0 = at::vec::fmadd(va, va, acc0);  // padding lanes are zero and add nothing
      acc1 = at::vec::fmadd(vb, vb, acc1);
    }
    const acc sumsq = cpu::lane_sum(acc0 + acc1);
    const Vec rv(acc(1) / std::sqrt(sumsq / static_cast<acc>(hidden) + static_cast<acc>(eps)));
    for (int64_t i = 0; i < hidden; i += kChunk) {
      const int64_t n = std::min<int64_t>(kChunk, hidden - i);
      Vec va, vb, wa, wb;
      cpu::load2(normed_src + i, va, vb, n);
      cpu::load2(weight + i, wa, wb, n);
      cpu::store2(out + i, va * rv * wa, vb * rv * wb, n);
    }
  }
}

// All rows of contiguous [rows, hidden] tensors.
struct CpuNorm {
  using Guard = NoGuard;
  static void norm(const at::Tensor& x, const at::Tensor* residual, const at::Tensor& weight, at::Tensor& out,
                   at::Tensor* new_residual, const at::Tensor* b, const at::Tensor* s, double eps);
};

void CpuNorm::norm(const at::Tensor& x, const at::Tensor* residual, const at::Tensor& weight, at::Tensor& out,
                   at::Tensor* new_residual, const at::Tensor* b, const at::Tensor* s, double eps) {
  const int64_t hidden = x.size(-1);
  const int64_t rows = hidden == 0 ? 0 : x.numel() / hidden;
  if (rows == 0) return;
  HOPSCOTCH_DISPATCH_FLOATING_TYPES_AND_DOUBLE(x.scalar_type(), "hopscotch_norm_cpu", [&] {
    using acc = acc_t<scalar_t>;
    const acc bv = b ? static_cast<acc>(b->item<double>()) : acc(1);
    const acc sv = s ? static_cast<acc>(s->item<double>()) : acc(1);
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* rp = residual ? residual->const_data_ptr<scalar_t>() : nullptr;
    const scalar_t* wp = weight.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    scalar_t* nrp = new_residual ? new_residual->mutable_data_ptr<scalar_t>() : nullptr;
    at::parallel_for(0, rows, cpu::row_grain(hidden), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t off = r * hidden;
        norm_row<scalar_t>(xp + off, rp ? rp + off : nullptr, wp, op + off, nrp ? nrp + off : nullptr, bv, sv,
                           eps, hidden);
      }
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(hopscotch_ext, CPU, m) {
  HOPSCOTCH_REGISTER_NORM(m, CpuNorm);
}

}  // namespace hopscotch
