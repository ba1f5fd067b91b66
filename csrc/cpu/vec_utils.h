// Float32 views of float / bf16 / fp16 data for the CPU kernels: load and store 2 * Vec::size() elements
// at a time as two Vectorized<float>, so every kernel body is written once in float32.
#pragma once

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cstring>
#include <type_traits>

namespace hopscotch::cpu {

using Vec = at::vec::Vectorized<float>;
// float32 accumulation; float64 (gradcheck, the float64 oracles) stays float64.
template <typename scalar_t>
using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
// Elements handled per step: one Vectorized<bf16/half> holds exactly two Vectorized<float>.
constexpr int64_t kChunk = 2 * Vec::size();

// Loads n <= kChunk elements of p as two float32 vectors; lanes past n are zero. The last, partial chunk of
// a row goes through the same vector arithmetic as the full ones (the "tail" rounds exactly as the body does:
// same FMAs, same lane order), so no scalar remainder loop is needed. The partial chunk is staged through a
// zeroed buffer: ATen's own partial loadu leaves the lanes past n undefined on some ISAs.
template <typename scalar_t>
inline void load2(const scalar_t* p, Vec& a, Vec& b, int64_t n = kChunk) {
  if (n < kChunk) {
    alignas(64) scalar_t tmp[kChunk] = {};
    std::memcpy(tmp, p, static_cast<size_t>(n) * sizeof(scalar_t));
    load2(tmp, a, b);
    return;
  }
  if constexpr (std::is_same_v<scalar_t, float>) {
    a = Vec::loadu(p);
    b = Vec::loadu(p + Vec::size());
  } else {
    std::tie(a, b) = at::vec::convert_to_float<scalar_t>(at::vec::Vectorized<scalar_t>::loadu(p));
  }
}

// Stores the first n <= kChunk lanes of (a, b) to p as scalar_t.
template <typename scalar_t>
inline void store2(scalar_t* p, const Vec& a, const Vec& b, int64_t n = kChunk) {
  if (n < kChunk) {
    alignas(64) scalar_t tmp[kChunk];
    store2(tmp, a, b);
    std::memcpy(p, tmp, static_cast<size_t>(n) * sizeof(scalar_t));
    return;
  }
  if constexpr (std::is_same_v<scalar_t, float>) {
    a.store(p);
    b.store(p + Vec::size());
  } else {
    at::vec::convert_from_float<scalar_t>(a, b).store(p);
  }
}

// Horizontal sum of the lanes, in lane order.
inline float lane_sum(const Vec& v) {
  float lanes[Vec::size()];
  v.store(lanes);
  float s = 0.f;
  for (int64_t l = 0; l < Vec::size(); ++l) s += lanes[l];
  return s;
}

// Round a float32 vector pair to scalar_t and back: what the value is once stored in the model dtype.
template <typename scalar_t>
inline void round_trip2(Vec& a, Vec& b) {
  if constexpr (!std::is_same_v<scalar_t, float>) {
    auto v = at::vec::convert_from_float<scalar_t>(a, b);
    std::tie(a, b) = at::vec::convert_to_float<scalar_t>(v);
  }
}

// Rows per parallel task so that each task touches at least ~32K elements (below that, threading costs more
// than it saves).
inline int64_t row_grain(int64_t row_size) {
  constexpr int64_t kMinElemsPerTask = 32768;
  return std::max<int64_t>(1, kMinElemsPerTask / std::max<int64_t>(1, row_size));
}

}  // namespace hopscotch::cpu
