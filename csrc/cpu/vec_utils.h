// Float32 views of float / bf16 / fp16 data for the CPU kernels: load and store 2 * Vec::size() elements
// at a time as two Vectorized<float>, so every kernel body is written once in float32.
#pragma once

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <type_traits>

namespace hopscotch::cpu {

using Vec = at::vec::Vectorized<float>;
// Elements handled per step: one Vectorized<bf16/half> holds exactly two Vectorized<float>.
constexpr int64_t kChunk = 2 * Vec::size();

template <typename scalar_t>
inline void load2(const scalar_t* p, Vec& a, Vec& b) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    a = Vec::loadu(p);
    b = Vec::loadu(p + Vec::size());
  } else {
    auto v = at::vec::Vectorized<scalar_t>::loadu(p);
    std::tie(a, b) = at::vec::convert_to_float<scalar_t>(v);
  }
}

template <typename scalar_t>
inline void store2(scalar_t* p, const Vec& a, const Vec& b) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    a.store(p);
    b.store(p + Vec::size());
  } else {
    at::vec::convert_from_float<scalar_t>(a, b).store(p);
  }
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
