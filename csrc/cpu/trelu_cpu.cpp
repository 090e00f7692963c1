// CPU backend of the fused transformed Leaky ReLU: plans the call, then runs the vectorized
// kernels of the instruction set cpu_dispatch.h chooses. Baseline code (no instruction-set flags).
#include <ATen/ATen.h>
#include <torch/library.h>

#include "../trelu_plan.h"
#include "cpu_dispatch.h"

namespace tat_ext::cpu {
namespace {

std::tuple<at::Tensor, at::Tensor> trelu_forward_cpu(const at::Tensor& x,
                                                     const c10::optional<at::Tensor>& bias,
                                                     double slope, double scale, double in_shift,
                                                     double out_shift, int64_t channel_dim,
                                                     int64_t save_kind) {
  const IsaKernels kernels = active_kernels();
  ForwardPlan p = plan_forward(x, bias, slope, scale, in_shift, out_shift, channel_dim, save_kind);
  kernels.forward(p, slope, scale, out_shift);
  return {p.y, p.mask};
}

std::tuple<at::Tensor, at::Tensor> trelu_backward_cpu(
    const at::Tensor& grad_y, const at::Tensor& saved, const c10::optional<at::Tensor>& bias,
    int64_t save_kind, double slope, double scale, double in_shift, double out_shift,
    int64_t channel_dim, c10::optional<at::ScalarType> bias_grad_dtype) {
  const IsaKernels kernels = active_kernels();
  BackwardPlan p = plan_backward(grad_y, saved, bias, save_kind, slope, scale, in_shift, out_shift,
                                 channel_dim, bias_grad_dtype);
  if (p.layout.numel == 0) return empty_backward_result(p);
  at::Tensor sums;  // reduced in fp32 (fp64 for fp64), then rounded once to the bias's dtype
  if (p.want_bias_grad) {
    const auto acc = p.grad_y.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
    sums = at::empty({p.layout.channels}, p.grad_y.options().dtype(acc));
  }
  kernels.backward(p, slope, scale, out_shift, sums.defined() ? sums.data_ptr() : nullptr);
  const at::Tensor grad_bias =
      sums.defined() ? sums.to(p.bias_grad_dtype) : at::empty({0}, grad_y.options());
  return {p.grad_x, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(tat_ext, CPU, m) {
  m.impl("trelu_forward", &trelu_forward_cpu);
  m.impl("trelu_backward", &trelu_backward_cpu);
}

}  // namespace tat_ext::cpu
