// CUDA kernels of the tat_ext::trelu_forward / trelu_backward operators: argument checks and
// planning are shared with the CPU backend (trelu_plan.h); this file picks the device and
// stream, allocates, and hands raw pointers to the kernels (trelu_forward.cu, trelu_backward.cu).
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "../trelu_plan.h"
#include "trelu_cuda.h"

namespace tat_ext::cuda {
namespace {

// The dispatcher sends a call here when ANY tensor argument is on a CUDA device; the first one
// decides the device. Mismatches among the others are reported by the shared plan checks.
void check_cuda(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.is_cuda(), op, ": ", name, " is on ", t.device(),
              " but another argument is on a CUDA device; put all tensors on the same device");
}

std::tuple<at::Tensor, at::Tensor> trelu_forward_cuda(const at::Tensor& x,
                                                      const c10::optional<at::Tensor>& bias,
                                                      double slope, double scale, double in_shift,
                                                      double out_shift, int64_t channel_dim,
                                                      int64_t save_kind) {
  check_cuda(x, "trelu", "x");
  const c10::cuda::CUDAGuard guard(x.device());
  ForwardPlan p = plan_forward(x, bias, slope, scale, in_shift, out_shift, channel_dim, save_kind);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.x.scalar_type(),
                                  "trelu_forward_cuda", [&] {
    using acc_t = acc_type_of<scalar_t>;
    const at::Tensor b_eff = make_b_eff(p.x.scalar_type(), p.bias, p.in_shift, p.x.options());
    const ForwardParams<scalar_t, acc_t> params{
        p.x.const_data_ptr<scalar_t>(),
        p.y.mutable_data_ptr<scalar_t>(),
        p.mask.numel() > 0 ? reinterpret_cast<uint32_t*>(p.mask.mutable_data_ptr<uint8_t>())
                           : nullptr,
        b_eff.const_data_ptr<acc_t>(),
        p.layout.numel,
        p.layout.channels,
        p.layout.inner,
        make_coeffs<acc_t>(p.x.scalar_type(), slope, scale, out_shift)};
    launch_trelu_forward<scalar_t>(params, stream);
  });
  return {p.y, p.mask};
}

std::tuple<at::Tensor, at::Tensor> trelu_backward_cuda(
    const at::Tensor& grad_y, const at::Tensor& saved, const c10::optional<at::Tensor>& bias,
    int64_t save_kind, double slope, double scale, double in_shift, double out_shift,
    int64_t channel_dim, c10::optional<at::ScalarType> bias_grad_dtype) {
  check_cuda(grad_y, "trelu_backward", "grad_y");
  const c10::cuda::CUDAGuard guard(grad_y.device());
  BackwardPlan p = plan_backward(grad_y, saved, bias, save_kind, slope, scale, in_shift, out_shift,
                                 channel_dim, bias_grad_dtype);
  if (p.layout.numel == 0) return empty_backward_result(p);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  at::Tensor grad_bias;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.grad_y.scalar_type(),
                                  "trelu_backward_cuda", [&] {
    using acc_t = acc_type_of<scalar_t>;
    const at::Tensor b_eff = p.kind == SaveKind::Input ? make_b_eff(p.grad_y.scalar_type(), p.bias,
                                                                    p.in_shift, p.grad_y.options())
                                                       : at::Tensor();
    BackwardParams<scalar_t, acc_t> params{
        p.grad_y.const_data_ptr<scalar_t>(),
        p.kind == SaveKind::Mask ? nullptr : p.saved.const_data_ptr<scalar_t>(),
        p.kind == SaveKind::Mask ? p.saved.const_data_ptr<uint8_t>() : nullptr,
        p.grad_x.mutable_data_ptr<scalar_t>(),
        p.kind == SaveKind::Input ? b_eff.const_data_ptr<acc_t>() : nullptr,
        p.layout.numel,
        p.layout.channels,
        p.layout.inner,
        make_coeffs<acc_t>(p.grad_y.scalar_type(), slope, scale, out_shift),
        p.kind,
        p.want_bias_grad};
    if (!p.want_bias_grad && p.kind != SaveKind::Input) {
      // Neither bias values nor sums: the channel structure is irrelevant, one flat plane.
      params.channels = 1;
      params.inner = std::max<int64_t>(params.numel, 1);
    }
    const BackwardLaunch plan = plan_trelu_backward<scalar_t>(params);
    const auto acc_options = p.grad_y.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
    at::Tensor workspace = at::empty({plan.workspace}, acc_options);
    if (p.want_bias_grad) grad_bias = at::empty({params.channels}, acc_options);
    acc_t* grad_bias_ptr = p.want_bias_grad ? grad_bias.mutable_data_ptr<acc_t>() : nullptr;
    launch_trelu_backward<scalar_t>(params, plan, workspace.mutable_data_ptr<acc_t>(),
                                    grad_bias_ptr, stream);
  });
  grad_bias = grad_bias.defined() ? grad_bias.to(p.bias_grad_dtype)
                                  : at::empty({0}, grad_y.options());
  return {p.grad_x, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(tat_ext, CUDA, m) {
  m.impl("trelu_forward", &trelu_forward_cuda);
  m.impl("trelu_backward", &trelu_backward_cuda);
}

}  // namespace tat_ext::cuda
