// Typed handles of the tat_ext operators, for calls through the dispatcher from C++.
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>

#include <optional>
#include <tuple>

namespace tat_ext::autograd {

using TreluFn = at::Tensor(const at::Tensor&, const std::optional<at::Tensor>&, double, double,
                           double, double, int64_t, c10::string_view);
using ForwardFn = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&,
                                                      const std::optional<at::Tensor>&, double,
                                                      double, double, double, int64_t, int64_t);
using BackwardFn = std::tuple<at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, int64_t, double,
    double, double, double, int64_t, std::optional<at::ScalarType>);

inline const c10::TypedOperatorHandle<TreluFn>& trelu_op() {
  static const auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("tat_ext::trelu", "").typed<TreluFn>();
  return op;
}

inline const c10::TypedOperatorHandle<ForwardFn>& forward_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("tat_ext::trelu_forward", "")
                             .typed<ForwardFn>();
  return op;
}

inline const c10::TypedOperatorHandle<BackwardFn>& backward_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("tat_ext::trelu_backward", "")
                             .typed<BackwardFn>();
  return op;
}

}  // namespace tat_ext::autograd
