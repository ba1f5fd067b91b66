// Input validation shared by the CPU and CUDA implementations, so that both backends refuse the same
// inputs with the same message. Every message names the argument, what it was and what was expected.
#pragma once

#include <ATen/MemoryOverlap.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <initializer_list>
#include <optional>
#include <string>

namespace hopscotch {

inline bool is_supported_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kHalf || t == at::kBFloat16 || t == at::kDouble;
}

inline void check_float_dtype(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(is_supported_float(t.scalar_type()), op, ": ", name, " has dtype ", t.scalar_type(),
              "; expected float32, float16 or bfloat16");
}

inline void check_same_device(const at::Tensor& ref, const at::Tensor& t, const char* op, const char* ref_name,
                              const char* name) {
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " is on ", t.device(), " but ", ref_name, " is on ",
              ref.device(), "; expected both on the same device");
}

inline void check_same_dtype(const at::Tensor& ref, const at::Tensor& t, const char* op, const char* ref_name,
                             const char* name) {
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), op, ": ", name, " has dtype ", t.scalar_type(), " but ",
              ref_name, " has dtype ", ref.scalar_type(), "; expected the same dtype");
}

// weight: [hidden], same dtype and device as x.
inline void check_norm_weight(const at::Tensor& x, const at::Tensor& weight, const char* op) {
  check_float_dtype(x, op, "x");
  check_same_device(x, weight, op, "x", "weight");
  check_same_dtype(x, weight, op, "x", "weight");
  TORCH_CHECK(x.dim() >= 1, op, ": x must have at least one dimension (the hidden size); got a 0-d tensor");
  TORCH_CHECK(weight.dim() == 1 && weight.size(0) == x.size(-1), op, ": weight has shape ", weight.sizes(),
              "; expected [", x.size(-1), "] (the last dimension of x)");
}

// b and s: the Hopscotch scalars, 0-d (or one-element) floating tensors on x's device.
inline void check_scalar_param(const at::Tensor& x, const at::Tensor& p, const char* op, const char* name) {
  TORCH_CHECK(p.numel() == 1 && p.dim() <= 1, op, ": ", name, " has shape ", p.sizes(),
              "; expected a 0-d tensor (one learned scalar)");
  TORCH_CHECK(is_supported_float(p.scalar_type()), op, ": ", name, " has dtype ", p.scalar_type(),
              "; expected a floating dtype");
  check_same_device(x, p, op, "x", name);
}

inline void check_scaled_add_inputs(const at::Tensor& x, const at::Tensor& residual, const at::Tensor& weight,
                                    const at::Tensor& b, const at::Tensor& s, const char* op) {
  check_norm_weight(x, weight, op);
  check_same_device(x, residual, op, "x", "residual");
  check_same_dtype(x, residual, op, "x", "residual");
  TORCH_CHECK(residual.sizes() == x.sizes(), op, ": residual has shape ", residual.sizes(), " but x has shape ",
              x.sizes(), "; expected the same shape");
  check_scalar_param(x, b, op, "b");
  check_scalar_param(x, s, op, "s");
}

inline void check_silu_and_mul_input(const at::Tensor& gate_up, const char* op) {
  check_float_dtype(gate_up, op, "gate_up");
  TORCH_CHECK(gate_up.dim() >= 1 && gate_up.size(-1) % 2 == 0, op, ": gate_up has shape ", gate_up.sizes(),
              "; expected an even last dimension holding [gate | up]");
}

// gate_up_weight: [2 * intermediate, hidden] = [W_gate ; W_up]; x: [..., hidden]; gate_up_bias: [2 * intermediate].
inline void check_silu_gate_up_inputs(const at::Tensor& x, const at::Tensor& gate_up_weight,
                                      const std::optional<at::Tensor>& gate_up_bias, const char* op) {
  check_float_dtype(x, op, "x");
  check_same_device(x, gate_up_weight, op, "x", "gate_up_weight");
  check_same_dtype(x, gate_up_weight, op, "x", "gate_up_weight");
  TORCH_CHECK(x.dim() >= 1, op, ": x must have at least one dimension (the hidden size); got a 0-d tensor");
  TORCH_CHECK(gate_up_weight.dim() == 2 && gate_up_weight.size(0) % 2 == 0 &&
                  gate_up_weight.size(1) == x.size(-1),
              op, ": gate_up_weight has shape ", gate_up_weight.sizes(), "; expected [2 * intermediate, ",
              x.size(-1), "] holding [W_gate ; W_up]");
  if (gate_up_bias.has_value()) {
    const at::Tensor& b = *gate_up_bias;
    check_same_device(x, b, op, "x", "gate_up_bias");
    check_same_dtype(x, b, op, "x", "gate_up_bias");
    TORCH_CHECK(b.dim() == 1 && b.size(0) == gate_up_weight.size(0), op, ": gate_up_bias has shape ", b.sizes(),
                "; expected [", gate_up_weight.size(0), "]");
  }
}

// Leading dims of t (name) equal positions' shape: t is [*positions.shape, heads, head_size].
inline void check_rotary_leading(const at::Tensor& positions, const at::Tensor& t, const char* op, const char* name,
                                 const char* heads) {
  bool ok = t.dim() == positions.dim() + 2;
  for (int64_t d = 0; ok && d < positions.dim(); ++d) ok = t.size(d) == positions.size(d);
  TORCH_CHECK(ok, op, ": ", name, " has shape ", t.sizes(), " and positions ", positions.sizes(), "; expected ",
              name, " to be [*positions.shape, ", heads, ", head_size]");
}

// query (name): [*P, q_heads, head_size]; key: [*P, kv_heads, head_size]; positions: [*P] integer;
// cos_sin_cache: [max_position, rot_dim], rot_dim even and <= head_size. The in-place op writes through
// query / key and needs unit-stride head features; the out-of-place op reads any layout.
inline void check_rotary_inputs(const at::Tensor& positions, const at::Tensor& query,
                                const std::optional<at::Tensor>& key, const at::Tensor& cos_sin_cache,
                                const char* op, const char* name = "query", bool require_unit_stride = true) {
  check_float_dtype(query, op, name);
  TORCH_CHECK(positions.scalar_type() == at::kLong || positions.scalar_type() == at::kInt, op,
              ": positions has dtype ", positions.scalar_type(), "; expected int64 or int32");
  check_same_device(query, positions, op, name, "positions");
  check_same_device(query, cos_sin_cache, op, name, "cos_sin_cache");
  check_rotary_leading(positions, query, op, name, "num_heads");
  const int64_t head_size = query.size(-1);
  TORCH_CHECK(cos_sin_cache.dim() == 2, op, ": cos_sin_cache has shape ", cos_sin_cache.sizes(),
              "; expected [max_position, rot_dim]");
  const int64_t rot_dim = cos_sin_cache.size(1);
  TORCH_CHECK(rot_dim % 2 == 0 && rot_dim > 0 && rot_dim <= head_size, op, ": cos_sin_cache has rot_dim ",
              rot_dim, "; expected an even number between 2 and head_size (", head_size, ")");
  TORCH_CHECK(cos_sin_cache.scalar_type() == at::kFloat || cos_sin_cache.scalar_type() == query.scalar_type(), op,
              ": cos_sin_cache has dtype ", cos_sin_cache.scalar_type(), "; expected float32 or ", name,
              "'s dtype (", query.scalar_type(), ")");
  TORCH_CHECK(!require_unit_stride || query.stride(-1) == 1, op, ": ", name, "'s last dimension has stride ",
              query.stride(-1), "; expected 1 (head features contiguous)");
  if (key.has_value()) {
    const at::Tensor& k = *key;
    check_same_device(query, k, op, name, "key");
    check_same_dtype(query, k, op, name, "key");
    TORCH_CHECK(k.dim() == query.dim() && k.size(-1) == head_size, op, ": key has shape ", k.sizes(),
                "; expected [*positions.shape, num_kv_heads, ", head_size, "]");
    check_rotary_leading(positions, k, op, "key", "num_kv_heads");
    TORCH_CHECK(!require_unit_stride || k.stride(-1) == 1, op, ": key's last dimension has stride ", k.stride(-1),
                "; expected 1 (head features contiguous)");
  }
}

// rotary_embedding_kv_cache: positions [B, T]; query [B, T, q_heads, D]; key and value [B, T, kv_heads, D]
// (unit-stride features, any other strides); key_cache and value_cache [B, kv_heads, capacity, D] with unit-stride
// features; slots [T] integer (each slot is checked by the kernels: it depends on device data).
inline void check_rotary_kv_cache_inputs(const at::Tensor& positions, const at::Tensor& query, const at::Tensor& key,
                                         const at::Tensor& value, const at::Tensor& cos_sin_cache,
                                         const at::Tensor& key_cache, const at::Tensor& value_cache,
                                         const at::Tensor& slots, const char* op) {
  TORCH_CHECK(positions.dim() == 2, op, ": positions has shape ", positions.sizes(),
              "; expected [batch, tokens]");
  check_rotary_inputs(positions, query, key, cos_sin_cache, op, "query");
  check_same_device(query, value, op, "query", "value");
  check_same_dtype(query, value, op, "query", "value");
  TORCH_CHECK(value.sizes() == key.sizes() && value.stride(-1) == 1, op, ": value has shape ", value.sizes(),
              " and strides ", value.strides(), "; expected key's shape ", key.sizes(),
              " with unit-stride features");
  const auto check_cache = [&](const at::Tensor& c, const char* name) {
    check_same_device(query, c, op, "query", name);
    check_same_dtype(query, c, op, "query", name);
    TORCH_CHECK(c.dim() == 4 && c.size(0) == key.size(0) && c.size(1) == key.size(2) && c.size(3) == key.size(3) &&
                    c.stride(3) == 1,
                op, ": ", name, " has shape ", c.sizes(), " and strides ", c.strides(), "; expected [",
                key.size(0), ", ", key.size(2), ", capacity, ", key.size(3), "] with unit-stride features");
  };
  check_cache(key_cache, "key_cache");
  check_cache(value_cache, "value_cache");
  TORCH_CHECK(value_cache.sizes() == key_cache.sizes(), op, ": value_cache has shape ", value_cache.sizes(),
              " but key_cache has shape ", key_cache.sizes(), "; expected the same shape");
  TORCH_CHECK(slots.scalar_type() == at::kLong || slots.scalar_type() == at::kInt, op, ": slots has dtype ",
              slots.scalar_type(), "; expected int64 or int32");
  check_same_device(query, slots, op, "query", "slots");
  TORCH_CHECK(slots.dim() == 1 && slots.size(0) == positions.size(1), op, ": slots has shape ", slots.sizes(),
              "; expected [", positions.size(1), "] (one cache slot per token)");
}

// ---- written arguments: no element written twice, nothing written that another argument holds ----
// The semantics of ATen's at::assert_no_internal_overlap / at::assert_no_overlap (a stride-0 dimension of size > 1
// is internal overlap; two tensors overlap when both are dense and their byte ranges in one storage meet; a pair
// of strided views, e.g. q and k sliced from one fused qkv buffer, is "too hard" to decide and accepted), with
// messages that name the arguments. hopscotch_ext/_checks.py applies the same rule to the reference fallback.

inline void check_no_internal_overlap(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(at::has_internal_overlap(t) != at::MemOverlap::Yes, op, ": ", name, " has shape ", t.sizes(),
              " and strides ", t.strides(), "; the op writes it, so expected no element stored twice (a stride-0 "
              "dimension, e.g. from expand(), would be written twice); pass a tensor of its own (.clone())");
}

inline void check_no_overlap(const at::Tensor& written, const at::Tensor& other, const char* op,
                             const char* written_name, const char* other_name) {
  const at::MemOverlapStatus lap = at::get_overlap_status(written, other);
  TORCH_CHECK(lap != at::MemOverlapStatus::Full && lap != at::MemOverlapStatus::Partial, op, ": ", written_name,
              " and ", other_name, " share memory; the op writes ", written_name,
              ", so expected them not to overlap (pass tensors of their own, e.g. .clone())");
}

// Every written argument: no internal overlap, and no overlap with any other argument (written or read).
struct Arg {
  const at::Tensor* t;
  const char* name;
};
inline void check_written_args(std::initializer_list<Arg> written, std::initializer_list<Arg> read, const char* op) {
  for (const Arg& w : written) {
    if (!w.t) continue;
    check_no_internal_overlap(*w.t, op, w.name);
    bool after = false;  // each written pair once
    for (const Arg& o : written) {
      if (o.t == w.t) {
        after = true;
      } else if (after && o.t) {
        check_no_overlap(*w.t, *o.t, op, w.name, o.name);
      }
    }
    for (const Arg& r : read) {
      if (r.t) check_no_overlap(*w.t, *r.t, op, w.name, r.name);
    }
  }
}

// Index values (positions into cos_sin_cache, slots into the KV cache): every value of idx in [0, limit). idx: a
// contiguous int64 CPU tensor (the CPU kernels check before they run; the CUDA kernels cannot without a sync, so
// the Python wrappers check before launch: docs/ARCHITECTURE.md §2.10). The message names the smallest value when
// one is negative, else the largest, so every backend names the same value.
inline void check_index_range(const at::Tensor& idx, int64_t limit, const char* op, const char* name,
                              const char* noun, const char* what) {
  const int64_t* p = idx.const_data_ptr<int64_t>();
  const int64_t n = idx.numel();
  if (n == 0) return;
  int64_t lo = p[0], hi = p[0];
  for (int64_t i = 1; i < n; ++i) {
    lo = p[i] < lo ? p[i] : lo;
    hi = p[i] > hi ? p[i] : hi;
  }
  TORCH_CHECK(lo >= 0 && hi < limit, op, ": ", name, " holds ", lo < 0 ? lo : hi, "; expected 0 <= ", noun, " < ",
              limit, " (", what, ")");
}

// A [tokens, heads, head_size] view of q or k that shares its storage (the op writes in place).
inline at::Tensor rotary_token_view(const at::Tensor& t, const char* op, const char* name) {
  const int64_t tokens = t.numel() == 0 ? 0 : t.numel() / (t.size(-1) * t.size(-2));
  std::optional<at::Tensor> v;
  try {
    v = t.view({tokens, t.size(-2), t.size(-1)});
  } catch (const c10::Error&) {
    TORCH_CHECK(false, op, ": ", name, " has shape ", t.sizes(), " and strides ", t.strides(),
                "; its leading dimensions cannot be viewed as one token dimension, which an in-place op needs. "
                "Pass a tensor whose leading dimensions are contiguous with each other (e.g. .contiguous()).");
  }
  return *v;
}

}  // namespace hopscotch
