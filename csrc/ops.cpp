// Operator schemas of the tat_ext library, and their typed handles (op_handles.h). Backend
// kernels are registered per backend (cpu/, cuda/), autograd for the Autograd key (autograd/),
// fake kernels from Python (tat_ext/ops.py).
#include <torch/library.h>

#include "op_handles.h"

TORCH_LIBRARY(tat_ext, m) {
  // The public op: y = scale * (LReLU(x + bias[c] + in_shift; slope) + out_shift), c = index
  // along channel_dim. `save` ("auto" | "input" | "output" | "mask") is what the forward keeps
  // for the backward. Differentiable to any order, in reverse and forward mode.
  m.def(
      "trelu(Tensor x, Tensor? bias, float slope, float scale=1., float in_shift=0., "
      "float out_shift=0., int channel_dim=1, str save=\"auto\") -> Tensor");
  // Conv2d (no bias in the conv) followed by trelu with `bias` on the channels, for 4-D x:
  // y = trelu(conv2d(x, weight), bias, ...). On the CPU, in fp32, when save is "auto" or
  // "output" and reading the sign back from y is exact, one oneDNN conv+bias+LReLU primitive with
  // the scale folded into weight and bias (csrc/autograd/conv_trelu.cpp); otherwise exactly the
  // composition. Differentiable like trelu.
  m.def(
      "conv_trelu(Tensor x, Tensor weight, Tensor? bias, int[2] stride, int[2] padding, "
      "int[2] dilation, int groups, float slope, float scale=1., float in_shift=0., "
      "float out_shift=0., str save=\"auto\") -> Tensor");
  // The kernels below the autograd layer. Returns (y, mask); mask holds the packed signs of the
  // pre-activation when save_kind == 2 (see trelu_math.h), else it is empty. y has x's strides
  // when x is dense.
  m.def(
      "trelu_forward(Tensor x, Tensor? bias, float slope, float scale, float in_shift, "
      "float out_shift, int channel_dim, int save_kind) -> (Tensor, Tensor)");
  // Returns (grad_x, grad_bias). `saved` is x (save_kind 0), y (1) or the packed mask (2);
  // grad_bias is reduced in fp32 (fp64 for fp64) in a fixed order, and empty when
  // bias_grad_dtype is None. Linear in grad_y, so it is also the forward-mode tangent map.
  m.def(
      "trelu_backward(Tensor grad_y, Tensor saved, Tensor? bias, int save_kind, float slope, "
      "float scale, float in_shift, float out_shift, int channel_dim, "
      "ScalarType? bias_grad_dtype) -> (Tensor, Tensor)");
}

namespace tat_ext {

const c10::TypedOperatorHandle<TreluFn>& trelu_op() {
  static const auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("tat_ext::trelu", "").typed<TreluFn>();
  return op;
}

const c10::TypedOperatorHandle<TreluForwardFn>& trelu_forward_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("tat_ext::trelu_forward", "")
                             .typed<TreluForwardFn>();
  return op;
}

const c10::TypedOperatorHandle<TreluBackwardFn>& trelu_backward_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("tat_ext::trelu_backward", "")
                             .typed<TreluBackwardFn>();
  return op;
}

}  // namespace tat_ext
