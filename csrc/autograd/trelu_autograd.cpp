// Autograd of the tat_ext ops, registered for the Autograd dispatch key the way PyTorch's own
// operators are: one graph Node per call, and forward-mode tangents set on the outputs. So
// reverse mode, create_graph (double and higher) backward, forward mode and the torch.func
// transforms all see an ordinary differentiable operator, with no Python on the hot path.
//
// LReLU's derivative is piecewise constant, so every derivative here is one linear map,
//   t  ->  t * (scale if z > 0 else scale * slope)     (per element; z = x + bias[c] + in_shift)
// which trelu_backward applies (and sums per channel for the bias):
//   - the backward of trelu:          grad_x = D grad_y,  grad_bias[c] = sum_c D grad_y;
//   - the tangent of trelu:           y_t = D (x_t + bias_t[c]);
//   - the backward of trelu_backward: grad_grad_y = D (gg_x + gg_bias[c]); its derivative with
//     respect to the saved tensor and the bias is zero almost everywhere, and it is returned as
//     zeros (not as "unused"), as PyTorch's leaky_relu_backward does: so a second derivative
//     with respect to x or the bias is zeros in every save mode (in mask mode, whose mask has no
//     graph, TreluZeroDerivative links the gradient to x and the bias);
//   - the tangent of trelu_backward:  trelu_backward applied to grad_y_t.
#include <ATen/ATen.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/saved_variable.h>
#include <torch/library.h>

#include <mutex>
#include <optional>
#include <vector>

#include "../op_handles.h"
#include "../trelu_plan.h"

namespace tat_ext::autograd {
namespace {

using at::Tensor;
using torch::autograd::Node;
using torch::autograd::SavedVariable;
using torch::autograd::variable_list;

// The op's constants, and what its backward reads the signs of z from.
struct Constants {
  double slope, scale, in_shift, out_shift;
  int64_t channel_dim;
  SaveKind kind;
};

// trelu_backward through the dispatcher: differentiable when grad mode is on.
std::tuple<Tensor, Tensor> call_backward(const Tensor& grad_y, const Tensor& saved,
                                         const std::optional<Tensor>& bias, const Constants& k,
                                         std::optional<at::ScalarType> bias_grad_dtype) {
  return trelu_backward_op().call(grad_y, saved, bias, static_cast<int64_t>(k.kind), k.slope,
                                  k.scale, k.in_shift, k.out_shift, k.channel_dim,
                                  bias_grad_dtype);
}

// The strides a dense copy of t gets (t's own when it is dense already): the memory order that
// a packed sign mask made from it follows.
std::vector<int64_t> dense_strides(const Tensor& t) {
  if (t.is_non_overlapping_and_dense()) return t.strides().vec();
  return at::empty_like(t).strides().vec();
}

// t with the given strides; copied only when its layout differs.
Tensor with_strides(const Tensor& t, const std::vector<int64_t>& strides) {
  bool same = true;
  for (int64_t d = 0; d < t.dim(); ++d) same &= t.size(d) <= 1 || t.stride(d) == strides[d];
  if (same && t.is_non_overlapping_and_dense()) return t;
  return at::empty_strided(t.sizes(), strides, t.options()).copy_(t);
}

// t + b[c] broadcast along channel_dim, rounded once to `dtype` (either may be undefined; a
// zero-size b is the empty gradient of a missing bias). Undefined when both are.
Tensor add_per_channel(const Tensor& t, const Tensor& b, at::IntArrayRef sizes,
                       int64_t channel_dim, at::ScalarType dtype) {
  if (!b.defined() || b.numel() == 0) return t;
  std::vector<int64_t> shape(sizes.size(), 1);
  shape[channel_dim] = -1;
  const auto acc = dtype == at::kDouble ? at::kDouble : at::kFloat;
  const Tensor b_view = b.to(acc).view(shape);
  if (!t.defined()) return b_view.expand(sizes).to(dtype);
  return t.to(acc).add(b_view).to(dtype);
}

int64_t wrap_dim(int64_t dim, int64_t rank) { return dim < 0 ? dim + rank : dim; }

// What the graph nodes below keep: the constants and where the signs of z come from.
struct SignsNode : public Node {
  Constants k{};
  SavedVariable saved_;  // x, y or the mask, by k.kind
  SavedVariable bias_;   // SaveKind::Input: the bias takes part in the signs
  bool has_bias = false;

  void release_variables() override {
    std::lock_guard<std::mutex> lock(mutex_);
    saved_.reset_data();
    bias_.reset_data();
  }
};

// d(grad_x, grad_bias)/d(x, bias) = 0 for a gradient computed from the sign mask: a node that
// returns zeros for x and the bias. Without it a create_graph gradient in mask mode would have no
// path to them (the mask is not differentiable), and its derivative would be "unused".
struct TreluZeroDerivative : public Node {
  std::vector<int64_t> x_sizes, bias_sizes;
  at::TensorOptions x_options, bias_options;

  std::string name() const override { return "TreluZeroDerivative"; }

  variable_list apply(variable_list&& /*grads*/) override {
    variable_list out(2);
    if (task_should_compute_output(0)) out[0] = at::zeros(x_sizes, x_options);
    if (task_should_compute_output(1)) out[1] = at::zeros(bias_sizes, bias_options);
    return out;
  }
};

// Reverse mode of trelu: grad_y -> (grad_x, grad_bias).
struct TreluBackward : public SignsNode {
  at::ScalarType bias_dtype = at::kFloat;
  std::vector<int64_t> y_strides;  // SaveKind::Mask: the mask's bit order is y's memory order
  std::vector<int64_t> sizes;      // SaveKind::Mask: of x (for zeros of x and the bias)
  at::ScalarType x_dtype = at::kFloat;

  std::string name() const override { return "TreluBackward"; }

  variable_list apply(variable_list&& grads) override {
    std::lock_guard<std::mutex> lock(mutex_);
    variable_list out(2);
    const Tensor& grad_y = grads[0];
    if (!grad_y.defined()) return out;
    const bool want_bias = has_bias && task_should_compute_output(1);
    // y is an output of this node: unpacking it needs the node (SavedVariable's rule).
    const Tensor saved = k.kind == SaveKind::Output ? saved_.unpack(getptr()) : saved_.unpack();
    std::optional<Tensor> bias;
    if (k.kind == SaveKind::Input && has_bias) bias = bias_.unpack();
    const Tensor g = k.kind == SaveKind::Mask ? with_strides(grad_y, y_strides) : grad_y;
    auto [grad_x, grad_bias] =
        call_backward(g, saved, bias, k, want_bias ? std::optional(bias_dtype) : std::nullopt);
    if (task_should_compute_output(0)) out[0] = std::move(grad_x);
    if (want_bias) out[1] = std::move(grad_bias);
    if (k.kind == SaveKind::Mask && at::GradMode::is_enabled()) link_to_inputs(out);
    return out;
  }

  // create_graph: adds to each gradient a zero scalar whose graph leads to x and the bias
  // through TreluZeroDerivative, as the saved x or y does in the other modes.
  void link_to_inputs(variable_list& grads) {
    const Tensor& any = grads[0].defined() ? grads[0] : grads[1];
    if (!any.defined()) return;
    auto node = c10::make_intrusive<TreluZeroDerivative>();
    node->set_next_edges({next_edge(0), next_edge(1)});
    node->x_sizes = sizes;
    node->x_options = any.options().dtype(x_dtype);
    if (has_bias) {
      node->bias_sizes = {sizes[wrap_dim(k.channel_dim, static_cast<int64_t>(sizes.size()))]};
      node->bias_options = any.options().dtype(bias_dtype);
    }
    Tensor zero = at::zeros({}, any.options());
    torch::autograd::set_history(zero, node);
    for (Tensor& grad : grads) {
      if (grad.defined()) grad = grad.add(zero);
    }
  }
};

// Reverse mode of trelu_backward: (gg_x, gg_bias) -> grad of grad_y, and zeros for the saved
// tensor and the bias (the derivative is zero almost everywhere).
struct TreluBackwardBackward : public SignsNode {
  std::vector<int64_t> sizes, strides;  // of grad_y as the kernel read it (the mask's order)
  at::ScalarType dtype = at::kFloat;

  std::string name() const override { return "TreluBackwardBackward"; }

  variable_list apply(variable_list&& grads) override {
    std::lock_guard<std::mutex> lock(mutex_);
    variable_list out(3);
    const Tensor saved = saved_.unpack();
    std::optional<Tensor> bias;
    if (has_bias) bias = bias_.unpack();
    if (task_should_compute_output(1)) out[1] = at::zeros_like(saved);
    if (has_bias && task_should_compute_output(2)) out[2] = at::zeros_like(*bias);
    if (!task_should_compute_output(0)) return out;
    const int64_t cd = wrap_dim(k.channel_dim, static_cast<int64_t>(sizes.size()));
    const Tensor t = add_per_channel(grads[0], grads[1], sizes, cd, dtype);
    if (!t.defined()) return out;
    out[0] = std::get<0>(call_backward(with_strides(t, strides), saved, bias, k, std::nullopt));
    return out;
  }
};

// Forward-mode tangent of trelu at (x, bias): D (x_t + bias_t[c]), or undefined.
Tensor trelu_tangent(const Tensor& x, const std::optional<Tensor>& bias, const Constants& k) {
  const Tensor x_t = x._fw_grad(/*level=*/0);
  const Tensor b_t = bias.has_value() ? bias->_fw_grad(/*level=*/0) : Tensor();
  if (!x_t.defined() && !b_t.defined()) return Tensor();
  const int64_t cd = bias.has_value() ? wrap_dim(k.channel_dim, x.dim()) : 0;
  const Tensor t = add_per_channel(x_t, b_t, x.sizes(), cd, x.scalar_type());
  // Signs from x and the bias: the same z as the forward, whatever the forward saved.
  Constants from_input = k;
  from_input.kind = SaveKind::Input;
  return std::get<0>(call_backward(t, x, bias, from_input, std::nullopt));
}

Tensor trelu_autograd(c10::DispatchKeySet ks, const Tensor& x, const std::optional<Tensor>& bias,
                      double slope, double scale, double in_shift, double out_shift,
                      int64_t channel_dim, c10::string_view save) {
  const Constants k{slope, scale, in_shift, out_shift, channel_dim,
                    resolve_save(save, x, slope, scale, in_shift, out_shift)};
  c10::intrusive_ptr<TreluBackward> node;
  if (torch::autograd::compute_requires_grad(x, bias)) {
    node = c10::make_intrusive<TreluBackward>();
    node->set_next_edges(torch::autograd::collect_next_edges(x, bias));
    node->k = k;
  }
  Tensor y, mask;
  if (ks.has(c10::DispatchKey::FuncTorchDynamicLayerBackMode)) {
    // Inside a torch.func transform the call below reaches the enclosing transform's autograd,
    // which must see trelu itself (as PyTorch's own ops redispatch to themselves); the signs
    // then come from the input, which every level has.
    if (node) node->k.kind = SaveKind::Input;
    at::AutoDispatchBelowADInplaceOrView guard;
    y = trelu_op().redispatch(ks & c10::after_ADInplaceOrView_keyset, x, bias, slope, scale,
                              in_shift, out_shift, channel_dim, "input");
  } else {
    // Without a backward the forward keeps nothing (SaveKind::Input adds no mask).
    const SaveKind kind = node ? k.kind : SaveKind::Input;
    at::AutoDispatchBelowADInplaceOrView guard;
    std::tie(y, mask) = trelu_forward_op().redispatch(
        ks & c10::after_ADInplaceOrView_keyset, x, bias, slope, scale, in_shift, out_shift,
        channel_dim, static_cast<int64_t>(kind));
  }
  if (node) {
    torch::autograd::set_history(y, node);
    switch (node->k.kind) {
      case SaveKind::Input: node->saved_ = SavedVariable(x, false); break;
      case SaveKind::Output: node->saved_ = SavedVariable(y, true); break;
      case SaveKind::Mask:
        node->saved_ = SavedVariable(mask, false);
        node->y_strides = y.strides().vec();
        node->sizes = x.sizes().vec();
        node->x_dtype = x.scalar_type();
        break;
    }
    if (bias.has_value()) {
      node->has_bias = true;
      node->bias_dtype = bias->scalar_type();
      if (node->k.kind == SaveKind::Input) node->bias_ = SavedVariable(*bias, false);
    }
  }
  if (torch::autograd::isFwGradDefined(x) || torch::autograd::isFwGradDefined(bias)) {
    y._set_fw_grad(trelu_tangent(x, bias, k), /*level=*/0, /*is_inplace_op=*/false);
  }
  return y;
}

std::tuple<Tensor, Tensor> trelu_backward_autograd(
    c10::DispatchKeySet ks, const Tensor& grad_y, const Tensor& saved,
    const std::optional<Tensor>& bias, int64_t save_kind, double slope, double scale,
    double in_shift, double out_shift, int64_t channel_dim,
    std::optional<at::ScalarType> bias_grad_dtype) {
  TORCH_CHECK_VALUE(save_kind >= 0 && save_kind <= 2,
                    "trelu_backward: save_kind must be 0 (input), 1 (output) or 2 (mask), got ",
                    save_kind);
  const Constants k{slope, scale, in_shift, out_shift, channel_dim,
                    static_cast<SaveKind>(save_kind)};
  c10::intrusive_ptr<TreluBackwardBackward> node;
  if (torch::autograd::compute_requires_grad(grad_y, saved, bias)) {
    node = c10::make_intrusive<TreluBackwardBackward>();
    node->set_next_edges(torch::autograd::collect_next_edges(grad_y, saved, bias));
    node->k = k;
    node->saved_ = SavedVariable(saved, false);
    if (bias.has_value()) {
      node->has_bias = true;
      node->bias_ = SavedVariable(*bias, false);
    }
    node->sizes = grad_y.sizes().vec();
    node->strides = dense_strides(grad_y);
    node->dtype = grad_y.scalar_type();
  }
  auto [grad_x, grad_bias] = [&] {
    at::AutoDispatchBelowADInplaceOrView guard;
    return trelu_backward_op().redispatch(ks & c10::after_ADInplaceOrView_keyset, grad_y, saved,
                                          bias, save_kind, slope, scale, in_shift, out_shift,
                                          channel_dim, bias_grad_dtype);
  }();
  if (node) torch::autograd::set_history({grad_x, grad_bias}, node);
  if (torch::autograd::isFwGradDefined(grad_y)) {
    const Tensor g_t = grad_y._fw_grad(/*level=*/0);
    const Tensor g = k.kind == SaveKind::Mask ? with_strides(g_t, dense_strides(grad_y)) : g_t;
    auto [grad_x_t, grad_bias_t] = call_backward(g, saved, bias, k, bias_grad_dtype);
    grad_x._set_fw_grad(grad_x_t, /*level=*/0, /*is_inplace_op=*/false);
    if (bias_grad_dtype.has_value()) {
      grad_bias._set_fw_grad(grad_bias_t, /*level=*/0, /*is_inplace_op=*/false);
    }
  }
  return {grad_x, grad_bias};
}

// trelu where autograd is not involved (inference mode, or below the autograd layer as in
// tracing): the forward alone, keeping nothing.
Tensor trelu_no_autograd(const Tensor& x, const std::optional<Tensor>& bias, double slope,
                         double scale, double in_shift, double out_shift, int64_t channel_dim,
                         c10::string_view save) {
  resolve_save(save, x, slope, scale, in_shift, out_shift);  // same argument checks
  return std::get<0>(trelu_forward_op().call(x, bias, slope, scale, in_shift, out_shift,
                                             channel_dim, static_cast<int64_t>(SaveKind::Input)));
}

}  // namespace

TORCH_LIBRARY_IMPL(tat_ext, Autograd, m) {
  m.impl("trelu", &trelu_autograd);
  m.impl("trelu_backward", &trelu_backward_autograd);
  // The internal forward returns the raw mask; only trelu knows how to differentiate it.
  m.impl("trelu_forward", torch::autograd::autogradNotImplementedFallback());
}

TORCH_LIBRARY_IMPL(tat_ext, CompositeExplicitAutograd, m) {
  m.impl("trelu", &trelu_no_autograd);
}

}  // namespace tat_ext::autograd
