// Host functions of every hopscotch_ext op. Schemas live in torch_bindings.cpp; implementations are
// registered per backend with TORCH_LIBRARY_IMPL in csrc/cpu/*.cpp (CPU) and csrc/*_kernels.cu (CUDA).
#pragma once

#include <ATen/core/Tensor.h>

namespace hopscotch {

// ---- CPU ----
at::Tensor rms_norm_cpu(const at::Tensor& x, const at::Tensor& weight, double eps);
std::tuple<at::Tensor, at::Tensor> scaled_add_rms_norm_cpu(const at::Tensor& x, const at::Tensor& residual,
                                                           const at::Tensor& weight, const at::Tensor& b,
                                                           const at::Tensor& s, double eps);
void scaled_add_rms_norm_inplace_cpu(at::Tensor& x, at::Tensor& residual, const at::Tensor& weight,
                                     const at::Tensor& b, const at::Tensor& s, double eps);
at::Tensor silu_and_mul_cpu(const at::Tensor& gate_up);
void rotary_embedding_cpu(const at::Tensor& positions, at::Tensor& query, const std::optional<at::Tensor>& key,
                          const at::Tensor& cos_sin_cache);

// ---- CUDA ----
at::Tensor rms_norm_cuda(const at::Tensor& x, const at::Tensor& weight, double eps);
std::tuple<at::Tensor, at::Tensor> scaled_add_rms_norm_cuda(const at::Tensor& x, const at::Tensor& residual,
                                                            const at::Tensor& weight, const at::Tensor& b,
                                                            const at::Tensor& s, double eps);
void scaled_add_rms_norm_inplace_cuda(at::Tensor& x, at::Tensor& residual, const at::Tensor& weight,
                                      const at::Tensor& b, const at::Tensor& s, double eps);
at::Tensor silu_and_mul_cuda(const at::Tensor& gate_up);
void rotary_embedding_cuda(const at::Tensor& positions, at::Tensor& query, const std::optional<at::Tensor>& key,
                           const at::Tensor& cos_sin_cache);

}  // namespace hopscotch
