// CPU kernel of silu_and_mul: out[r, j] = silu(gate_up[r, j]) * gate_up[r, d + j], d = half the last dim.
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

using cpu::kChunk;
using cpu::Vec;

template <typename scalar_t>
void silu_and_mul_row(const scalar_t* __restrict__ gate,  // [d]
                      const scalar_t* __restrict__ up,    // [d]
                      scalar_t* __restrict__ out,         // [d]
                      int64_t d) {
  int64_t j = 0;
  if constexpr (!std::is_same_v<scalar_t, double>) {
    const Vec one(1.f);
    for (; j + kChunk <= d; j += kChunk) {
      Vec ga, gb, ua, ub;
      cpu::load2(gate + j, ga, gb);
      cpu::load2(up + j, ua, ub);
      // silu(g) = g / (1 + exp(-g)); exp of a large -g gives inf and g / inf = -0, the right limit.
      const Vec sa = ga / (one + ga.neg().exp());
      const Vec sb = gb / (one + gb.neg().exp());
      cpu::store2(out + j, sa * ua, sb * ub);
    }
  }
  using acc = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
  for (; j < d; ++j) {
    const acc g = static_cast<acc>(gate[j]);
    out[j] = static_cast<scalar_t>(g / (acc(1) + std::exp(-g)) * static_cast<acc>(up[j]));
  }
}

}  // namespace

at::Tensor silu_and_mul_cpu(const at::Tensor& gate_up) {
  check_silu_and_mul_input(gate_up, "silu_and_mul");
  const at::Tensor in = gate_up.contiguous();
  const int64_t d = in.size(-1) / 2;
  std::vector<int64_t> out_shape(in.sizes().begin(), in.sizes().end());
  out_shape.back() = d;
  at::Tensor out = at::empty(out_shape, in.options());
  const int64_t rows = d == 0 ? 0 : in.numel() / (2 * d);
  if (rows == 0) return out;
  HOPSCOTCH_DISPATCH_FLOATING_TYPES_AND_DOUBLE(in.scalar_type(), "silu_and_mul_cpu", [&] {
    const scalar_t* ip = in.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, rows, cpu::row_grain(2 * d), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        silu_and_mul_row<scalar_t>(ip + r * 2 * d, ip + r * 2 * d + d, op + r * d, d);
      }
    });
  });
  return out;
}

TORCH_LIBRARY_IMPL(hopscotch_ext, CPU, m) {
  m.impl("silu_and_mul", &silu_and_mul_cpu);
}

}  // namespace hopscotch
