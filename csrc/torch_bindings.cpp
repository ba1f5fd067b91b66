// Every hopscotch_ext op schema, in one library. Implementations register per backend with
// TORCH_LIBRARY_IMPL next to their kernels: csrc/cpu/*.cpp (CPU) and csrc/*_kernels.cu (CUDA).
#include <torch/library.h>

TORCH_LIBRARY(hopscotch_ext, m) {
  // y = x / sqrt(mean(x^2) + eps) * weight over the last dim; float32 accumulation.
  m.def("rms_norm(Tensor x, Tensor weight, float eps) -> Tensor");
  // new_residual = s * residual + b * x (rounded to x's dtype); normed = rms_norm(new_residual, weight, eps).
  // Returns (normed, new_residual). b, s: 0-d tensors (Hopscotch's learned scalars).
  m.def(
      "scaled_add_rms_norm(Tensor x, Tensor residual, Tensor weight, Tensor b, Tensor s, float eps)"
      " -> (Tensor, Tensor)");
  // In-place inference form of scaled_add_rms_norm: residual <- new_residual, x <- normed.
  m.def(
      "scaled_add_rms_norm_(Tensor(a!) x, Tensor(b!) residual, Tensor weight, Tensor b, Tensor s, float eps)"
      " -> ()");
  // out = silu(gate) * up for gate_up = [gate | up] on the last dim.
  m.def("silu_and_mul(Tensor gate_up) -> Tensor");
  // silu(x @ W_gate^T + b_gate) * (x @ W_up^T + b_up) for gate_up_weight [2 * inter, hidden] = [W_gate ; W_up]:
  // the gated MLP up to down_proj; one fused kernel at decode sizes, the library GEMM + silu_and_mul above.
  m.def("silu_gate_up(Tensor x, Tensor gate_up_weight, Tensor? gate_up_bias=None) -> Tensor");
  // In place, half rotation (Llama / NeoX layout) of query [*P, q_heads, head_size] and optional key
  // [*P, kv_heads, head_size] at positions [*P]; cos_sin_cache [max_position, rot_dim] = [cos | sin].
  m.def("rotary_embedding(Tensor positions, Tensor(a!) query, Tensor(b!)? key, Tensor cos_sin_cache) -> ()");
  // Out-of-place rotary_embedding of x [*P, heads, head_size] (any strides; the result is contiguous).
  // inverse=True rotates by -angle (sin negated): the backward of the forward rotation.
  m.def("rotary_embedding_out(Tensor positions, Tensor x, Tensor cos_sin_cache, bool inverse=False) -> Tensor");
  // The decode step's cache write: rotates query [B, T, q_heads, head_size] in place, and writes the rotated key
  // and the value ([B, T, kv_heads, head_size], any strides with unit-stride features) straight into their slots
  // of key_cache / value_cache [B, kv_heads, capacity, head_size]: token t goes to slot slots[t] (of every batch
  // row). positions: [B, T] rows of cos_sin_cache. Nothing else of the caches is read or written.
  m.def(
      "rotary_embedding_kv_cache(Tensor positions, Tensor(a!) query, Tensor key, Tensor value, Tensor cos_sin_cache,"
      " Tensor(b!) key_cache, Tensor(c!) value_cache, Tensor slots) -> ()");
}
