// CPU kernels of rms_norm and scaled_add_rms_norm (+ its in-place form).
// One task per block of rows (at::parallel_for); within a row two passes: (1) form the residual sum,
// round it to the model dtype, store it and accumulate its sum of squares; (2) scale by rstd * weight.
// The row is re-read in pass 2 from L1/L2, not from memory, for every hidden size a model has.
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "../checks.h"
#include "../dispatch_utils.h"
#include "../ops.h"
#include "vec_utils.h"

namespace hopscotch {
namespace {

using cpu::kChunk;
using cpu::Vec;

template <typename scalar_t>
using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

// One row. residual == nullptr means plain rms_norm of x. No __restrict__ on x / out and on residual /
// new_residual: the in-place op passes the same pointer for each pair (every element is read before the
// same index is written).
template <typename scalar_t>
void norm_row(const scalar_t* x,                       // [hidden]
              const scalar_t* residual,                // [hidden] or nullptr
              const scalar_t* __restrict__ weight,     // [hidden]
              scalar_t* out,                           // [hidden]
              scalar_t* new_residual,                  // [hidden] (unused when residual == nullptr)
              acc_t<scalar_t> b, acc_t<scalar_t> s, double eps, int64_t hidden) {
  using acc = acc_t<scalar_t>;
  const scalar_t* normed_src = residual ? new_residual : x;
  acc sumsq = 0;
  int64_t i = 0;
  if constexpr (!std::is_same_v<scalar_t, double>) {
    Vec acc0(0.f), acc1(0.f);
    const Vec bv(b), sv(s);
    for (; i + kChunk <= hidden; i += kChunk) {
      Vec va, vb;
      cpu::load2(x + i, va, vb);
      if (residual) {
        Vec ra, rb;
        cpu::load2(residual + i, ra, rb);
        va = at::vec::fmadd(sv, ra, bv * va);
        vb = at::vec::fmadd(sv, rb, bv * vb);
        cpu::store2(new_residual + i, va, vb);
        cpu::round_trip2<scalar_t>(va, vb);  // normalise what was stored, as an unfused model does
      }
      acc0 = at::vec::fmadd(va, va, acc0);
      acc1 = at::vec::fmadd(vb, vb, acc1);
    }
    float lanes[Vec::size()];
    (acc0 + acc1).store(lanes);
    for (int64_t l = 0; l < Vec::size(); ++l) sumsq += lanes[l];
  }
  for (; i < hidden; ++i) {
    acc v = static_cast<acc>(x[i]);
    if (residual) {
      const scalar_t r = static_cast<scalar_t>(s * static_cast<acc>(residual[i]) + b * v);
      new_residual[i] = r;
      v = static_cast<acc>(r);
    }
    sumsq += v * v;
  }
  const acc rstd = acc(1) / std::sqrt(sumsq / static_cast<acc>(hidden) + static_cast<acc>(eps));
  i = 0;
  if constexpr (!std::is_same_v<scalar_t, double>) {
    const Vec rv(rstd);
    for (; i + kChunk <= hidden; i += kChunk) {
      Vec va, vb, wa, wb;
      cpu::load2(normed_src + i, va, vb);
      cpu::load2(weight + i, wa, wb);
      cpu::store2(out + i, va * rv * wa, vb * rv * wb);
    }
  }
  for (; i < hidden; ++i) {
    out[i] = static_cast<scalar_t>(static_cast<acc>(normed_src[i]) * rstd * static_cast<acc>(weight[i]));
  }
}

// All rows of contiguous [rows, hidden] tensors.
void launch_norm(const at::Tensor& x, const at::Tensor* residual, const at::Tensor& weight, at::Tensor& out,
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

at::Tensor rms_norm_cpu(const at::Tensor& x, const at::Tensor& weight, double eps) {
  check_norm_weight(x, weight, "rms_norm");
  const at::Tensor xc = x.contiguous();
  at::Tensor out = at::empty(x.sizes(), x.options());
  launch_norm(xc, nullptr, weight.contiguous(), out, nullptr, nullptr, nullptr, eps);
  return out;
}

std::tuple<at::Tensor, at::Tensor> scaled_add_rms_norm_cpu(const at::Tensor& x, const at::Tensor& residual,
                                                           const at::Tensor& weight, const at::Tensor& b,
                                                           const at::Tensor& s, double eps) {
  check_scaled_add_inputs(x, residual, weight, b, s, "scaled_add_rms_norm");
  const at::Tensor xc = x.contiguous();
  const at::Tensor rc = residual.contiguous();
  at::Tensor out = at::empty(x.sizes(), x.options());
  at::Tensor new_residual = at::empty(x.sizes(), x.options());
  launch_norm(xc, &rc, weight.contiguous(), out, &new_residual, &b, &s, eps);
  return {out, new_residual};
}

void scaled_add_rms_norm_inplace_cpu(at::Tensor& x, at::Tensor& residual, const at::Tensor& weight,
                                     const at::Tensor& b, const at::Tensor& s, double eps) {
  check_scaled_add_inputs(x, residual, weight, b, s, "scaled_add_rms_norm_");
  if (x.is_contiguous() && residual.is_contiguous()) {
    launch_norm(x, &residual, weight.contiguous(), x, &residual, &b, &s, eps);
    return;
  }
  // Strided views: compute into contiguous buffers, then write back through the views.
  auto [out, new_residual] = scaled_add_rms_norm_cpu(x, residual, weight, b, s, eps);
  residual.copy_(new_residual);
  x.copy_(out);
}

TORCH_LIBRARY_IMPL(hopscotch_ext, CPU, m) {
  m.impl("rms_norm", &rms_norm_cpu);
  m.impl("scaled_add_rms_norm", &scaled_add_rms_norm_cpu);
  m.impl("scaled_add_rms_norm_", &scaled_add_rms_norm_inplace_cpu);
}

}  // namespace hopscotch
