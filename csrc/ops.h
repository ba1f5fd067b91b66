// Host functions of every hopscotch_ext op, written once for both backends. Each is a template over the
// backend's launchers (csrc/cpu/*.cpp: CPU, csrc/*_kernels.cu: CUDA), which register them with
// TORCH_LIBRARY_IMPL; schemas live in torch_bindings.cpp. Every host function runs the same steps: argument
// checks (checks.h) -> device guard -> layout (contiguous copies, token views, output allocation) -> the
// backend's launcher, which picks the dtype, the stream and the kernel path.
//
// A launcher family L provides (all tensors contiguous unless said otherwise):
//   L::Guard  constructed from the first tensor argument (CUDA: device guard; CPU: nothing)
//   norm:       L::norm(x, residual*, weight, out, new_residual*, b*, s*, eps)      [rows, hidden]
//   activation: L::silu_and_mul(gate_up, out)                                      [rows, 2d] -> [rows, d]
//               L::silu_gate_up_small(x, weight, bias*, out)       x: [tokens <= L::kFusedMaxTokens, hidden]
//   rotary:     L::rotary(positions, src_q, q, src_k*, k*, cache, inverse)  [tokens, heads, head_size] views
//               L::rotary_kv_cache(positions, q, key, value, cache, key_cache, value_cache, slots)
//                 positions [B * T] and slots [T] contiguous; q, key, value [B, T, heads, head_size] at their
//                 strides (unit-stride features); key_cache, value_cache [B, kv_heads, capacity, head_size]
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/linear.h>

#include <optional>
#include <tuple>
#include <vector>

#include "checks.h"

namespace hopscotch {

// silu_gate_up runs one fused kernel that streams each gate / up weight row once for all tokens while there are
// at most L::kFusedMaxTokens of them (decode: the weights dominate the traffic); above, the library GEMM does
// better (it reuses each weight tile across many tokens) and the activation follows as silu_and_mul. Each
// backend sets its crossover (measured), at most kFusedMlpMaxTokens (the kernels' register / stack arrays).
constexpr int64_t kFusedMlpMaxTokens = 16;

struct NoGuard {
  explicit NoGuard(const at::Tensor&) {}
};

// ---- norm family ----

template <class L>
at::Tensor rms_norm_host(const at::Tensor& x, const at::Tensor& weight, double eps) {
  check_norm_weight(x, weight, "rms_norm");
  const typename L::Guard guard(x);
  const at::Tensor xc = x.contiguous();
  at::Tensor out = at::empty(x.sizes(), x.options());
  L::norm(xc, nullptr, weight.contiguous(), out, nullptr, nullptr, nullptr, eps);
  return out;
}

template <class L>
std::tuple<at::Tensor, at::Tensor> scaled_add_rms_norm_host(const at::Tensor& x, const at::Tensor& residual,
                                                            const at::Tensor& weight, const at::Tensor& b,
                                                            const at::Tensor& s, double eps) {
  check_scaled_add_inputs(x, residual, weight, b, s, "scaled_add_rms_norm");
  const typename L::Guard guard(x);
  const at::Tensor xc = x.contiguous();
  const at::Tensor rc = residual.contiguous();
  at::Tensor out = at::empty(x.sizes(), x.options());
  at::Tensor new_residual = at::empty(x.sizes(), x.options());
  L::norm(xc, &rc, weight.contiguous(), out, &new_residual, &b, &s, eps);
  return {out, new_residual};
}

template <class L>
void scaled_add_rms_norm_inplace_host(at::Tensor& x, at::Tensor& residual, const at::Tensor& weight,
                                      const at::Tensor& b, const at::Tensor& s, double eps) {
  check_scaled_add_inputs(x, residual, weight, b, s, "scaled_add_rms_norm_");
  check_written_args({{&x, "x"}, {&residual, "residual"}}, {{&weight, "weight"}, {&b, "b"}, {&s, "s"}},
                     "scaled_add_rms_norm_");
  const typename L::Guard guard(x);
  if (x.is_contiguous() && residual.is_contiguous()) {
    L::norm(x, &residual, weight.contiguous(), x, &residual, &b, &s, eps);
    return;
  }
  // Strided views: compute into contiguous buffers, then write back through the views (same stream).
  auto [out, new_residual] = scaled_add_rms_norm_host<L>(x, residual, weight, b, s, eps);
  residual.copy_(new_residual);
  x.copy_(out);
}

// ---- activation family ----

inline at::Tensor empty_with_last_dim(const at::Tensor& like, int64_t last) {
  std::vector<int64_t> shape(like.sizes().begin(), like.sizes().end());
  shape.back() = last;
  return at::empty(shape, like.options());
}

template <class L>
at::Tensor silu_and_mul_host(const at::Tensor& gate_up) {
  check_silu_and_mul_input(gate_up, "silu_and_mul");
  const typename L::Guard guard(gate_up);
  const at::Tensor in = gate_up.contiguous();
  at::Tensor out = empty_with_last_dim(in, in.size(-1) / 2);
  if (out.numel() > 0) L::silu_and_mul(in, out);
  return out;
}

template <class L>
at::Tensor silu_gate_up_host(const at::Tensor& x, const at::Tensor& gate_up_weight,
                             const std::optional<at::Tensor>& gate_up_bias) {
  check_silu_gate_up_inputs(x, gate_up_weight, gate_up_bias, "silu_gate_up");
  const typename L::Guard guard(x);
  const int64_t hidden = x.size(-1);
  const int64_t inter = gate_up_weight.size(0) / 2;
  at::Tensor out = empty_with_last_dim(x, inter);
  const int64_t tokens = inter == 0 ? 0 : out.numel() / inter;
  if (out.numel() == 0) return out;
  const at::Tensor* bias = gate_up_bias.has_value() ? &*gate_up_bias : nullptr;
  static_assert(L::kFusedMaxTokens <= kFusedMlpMaxTokens);
  if (tokens <= L::kFusedMaxTokens) {
    const at::Tensor bc = bias ? bias->contiguous() : at::Tensor();
    at::Tensor out2d = out.view({tokens, inter});
    L::silu_gate_up_small(x.reshape({tokens, hidden}).contiguous(), gate_up_weight.contiguous(),
                          bias ? &bc : nullptr, out2d);
    return out;
  }
  // x contiguous first: torch 2.14's CPU bfloat16 GEMM (oneDNN) on rows with a stride beyond their length reads
  // past each row when hidden is not a multiple of 8 and multiplies what it finds there by zero, so a NaN or inf
  // in the neighbouring memory turns whole output rows into NaN (tests/test_ops_mlp.py). x is tokens x hidden,
  // small next to the weights; nothing is copied when it is contiguous already.
  const at::Tensor gate_up = at::linear(x.contiguous(), gate_up_weight, gate_up_bias).contiguous();
  L::silu_and_mul(gate_up, out);
  return out;
}

// ---- rotary family ----

// Index values of a CPU op checked on the host before the kernel runs (free: they are in host memory). On CUDA
// this would cost a stream sync per call: the Python wrappers check there, before launch, when eager
// (hopscotch_ext/_checks.py, docs/ARCHITECTURE.md §2.10); the CUDA kernels assert and never read out of bounds.
inline void check_indices_if_cpu(const at::Tensor& idx, int64_t limit, const char* op, const char* name,
                                 const char* noun, const char* what) {
  if (idx.is_cpu()) check_index_range(idx.reshape({-1}).to(at::kLong).contiguous(), limit, op, name, noun, what);
}

// [tokens, heads, head_size] view of a tensor that the op only reads: a copy where no view exists.
inline at::Tensor rotary_read_view(const at::Tensor& t) {
  const int64_t tokens = t.numel() == 0 ? 0 : t.numel() / (t.size(-1) * t.size(-2));
  const at::Tensor u = t.stride(-1) == 1 ? t : t.contiguous();
  return u.reshape({tokens, u.size(-2), u.size(-1)});
}

template <class L>
void rotary_embedding_host(const at::Tensor& positions, at::Tensor& query, const std::optional<at::Tensor>& key,
                           const at::Tensor& cos_sin_cache) {
  check_rotary_inputs(positions, query, key, cos_sin_cache, "rotary_embedding", "query");
  const at::Tensor* kp_in = key.has_value() ? &*key : nullptr;
  check_written_args({{&query, "query"}, {kp_in, "key"}},
                     {{&positions, "positions"}, {&cos_sin_cache, "cos_sin_cache"}}, "rotary_embedding");
  check_indices_if_cpu(positions, cos_sin_cache.size(0), "rotary_embedding", "positions", "position",
                       "the rows of cos_sin_cache");
  // [tokens, heads, head_size] views sharing storage with query / key (strided views of a fused qkv work).
  at::Tensor q = rotary_token_view(query, "rotary_embedding", "query");
  std::optional<at::Tensor> k;
  if (key.has_value()) k = rotary_token_view(*key, "rotary_embedding", "key");
  if (q.size(0) == 0) return;
  const typename L::Guard guard(query);
  at::Tensor* kp = k.has_value() ? &*k : nullptr;
  L::rotary(positions.reshape({-1}).contiguous(), q, q, kp, kp, cos_sin_cache.contiguous(), false);
}

template <class L>
at::Tensor rotary_embedding_out_host(const at::Tensor& positions, const at::Tensor& x,
                                     const at::Tensor& cos_sin_cache, bool inverse) {
  check_rotary_inputs(positions, x, std::nullopt, cos_sin_cache, "rotary_embedding_out", "x",
                      /*require_unit_stride=*/false);
  check_indices_if_cpu(positions, cos_sin_cache.size(0), "rotary_embedding_out", "positions", "position",
                       "the rows of cos_sin_cache");
  at::Tensor out = at::empty(x.sizes(), x.options());
  if (out.numel() == 0) return out;
  const typename L::Guard guard(x);
  const at::Tensor src = rotary_read_view(x);
  at::Tensor dst = out.view(src.sizes());
  const int64_t rot_dim = cos_sin_cache.size(1), rest = x.size(-1) - rot_dim;
  // Features past rot_dim pass through; the kernels write only the rotated ones.
  if (rest > 0) dst.narrow(-1, rot_dim, rest).copy_(src.narrow(-1, rot_dim, rest));
  L::rotary(positions.reshape({-1}).contiguous(), src, dst, nullptr, nullptr, cos_sin_cache.contiguous(), inverse);
  return out;
}

template <class L>
void rotary_embedding_kv_cache_host(const at::Tensor& positions, at::Tensor& query, const at::Tensor& key,
                                    const at::Tensor& value, const at::Tensor& cos_sin_cache, at::Tensor& key_cache,
                                    at::Tensor& value_cache, const at::Tensor& slots) {
  check_rotary_kv_cache_inputs(positions, query, key, value, cos_sin_cache, key_cache, value_cache, slots,
                               "rotary_embedding_kv_cache");
  check_written_args({{&query, "query"}, {&key_cache, "key_cache"}, {&value_cache, "value_cache"}},
                     {{&positions, "positions"}, {&key, "key"}, {&value, "value"}, {&cos_sin_cache, "cos_sin_cache"},
                      {&slots, "slots"}},
                     "rotary_embedding_kv_cache");
  check_indices_if_cpu(positions, cos_sin_cache.size(0), "rotary_embedding_kv_cache", "positions", "position",
                       "the rows of cos_sin_cache");
  check_indices_if_cpu(slots, key_cache.size(2), "rotary_embedding_kv_cache", "slots", "slot",
                       "the capacity of key_cache");
  if (positions.numel() == 0) return;
  const typename L::Guard guard(query);
  L::rotary_kv_cache(positions.reshape({-1}).contiguous(), query, key, value, cos_sin_cache.contiguous(), key_cache,
                     value_cache, slots.contiguous());
}

// Every op of a backend, in one place, so that the CPU and CUDA registrations cannot drift apart.
#define HOPSCOTCH_REGISTER_NORM(m, L)                                    \
  m.impl("rms_norm", &::hopscotch::rms_norm_host<L>);                    \
  m.impl("scaled_add_rms_norm", &::hopscotch::scaled_add_rms_norm_host<L>); \
  m.impl("scaled_add_rms_norm_", &::hopscotch::scaled_add_rms_norm_inplace_host<L>)
#define HOPSCOTCH_REGISTER_ACTIVATION(m, L)                  \
  m.impl("silu_and_mul", &::hopscotch::silu_and_mul_host<L>); \
  m.impl("silu_gate_up", &::hopscotch::silu_gate_up_host<L>)
#define HOPSCOTCH_REGISTER_ROTARY(m, L)                               \
  m.impl("rotary_embedding", &::hopscotch::rotary_embedding_host<L>); \
  m.impl("rotary_embedding_out", &::hopscotch::rotary_embedding_out_host<L>); \
  m.impl("rotary_embedding_kv_cache", &::hopscotch::rotary_embedding_kv_cache_host<L>)

}  // namespace hopscotch
