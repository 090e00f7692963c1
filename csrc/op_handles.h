// Typed dispatcher handles of the tat_ext operators (schemas in ops.cpp), for the C++ code that
// calls them through the dispatcher: the Python entry (module.cpp) and the autograd
// (autograd/trelu_autograd.cpp). One declaration of each signature, matching its schema.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <optional>
#include <tuple>

namespace tat_ext {

// trelu(x, bias, slope, scale, in_shift, out_shift, channel_dim, save) -> y
using TreluFn = at::Tensor(const at::Tensor&, const std::optional<at::Tensor>&, double, double,
                           double, double, int64_t, c10::string_view);
// trelu_forward(x, bias, slope, scale, in_shift, out_shift, channel_dim, save_kind) -> (y, mask)
using TreluForwardFn = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&,
                                                          const std::optional<at::Tensor>&, double,
                                                          double, double, double, int64_t, int64_t);
// trelu_backward(grad_y, saved, bias, save_kind, slope, scale, in_shift, out_shift, channel_dim,
//                bias_grad_dtype) -> (grad_x, grad_bias)
using TreluBackwardFn = std::tuple<at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, int64_t, double,
    double, double, double, int64_t, std::optional<at::ScalarType>);

const c10::TypedOperatorHandle<TreluFn>& trelu_op();
const c10::TypedOperatorHandle<TreluForwardFn>& trelu_forward_op();
const c10::TypedOperatorHandle<TreluBackwardFn>& trelu_backward_op();

}  // namespace tat_ext
