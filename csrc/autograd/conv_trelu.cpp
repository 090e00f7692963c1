// tat_ext::conv_trelu: conv2d (no bias) then trelu, fused on the CPU into one oneDNN
// convolution+bias+Leaky ReLU primitive with the project's own backward.
//
// Since scale > 0,  scale * LReLU(z; a) = LReLU(scale * z; a),  z = conv(x, W) + b + in_shift, so
//   y = LReLU(conv(x, scale*W) + scale*(b + in_shift); a)                        (the fused call)
// (folding the scale changes the rounding: docs/fused_conv.md states the tolerance). Backward,
// with the sign of z read back from y (exact when slope >= 0 and out_shift == 0, as save="output"):
//   grad_z = grad_y * (scale if y > 0 else scale*slope),  grad_b = sum of grad_z per channel
// (trelu_backward, reduced in a fixed order), then grad_x, grad_W = convolution_backward(grad_z).
// Nothing beyond x, W and y is saved: the composition would keep conv(x, W) too.
//
// The fused primitive is used only where every promise of the composition holds; anywhere else
// (not CPU fp32, another save mode, slope < 0 or out_shift != 0, flush-to-zero, autocast, forward
// mode, torch.func transforms, tracing by torch.compile or other Python-key tensors, oneDNN
// disabled) the op computes exactly the composition conv2d -> trelu, so it is never wrong.
#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/saved_variable.h>
#include <torch/library.h>

#include <mutex>
#include <optional>
#include <vector>

#include "../trelu_plan.h"
#include "../op_handles.h"

namespace tat_ext::autograd {
namespace {

using at::Tensor;
using torch::autograd::Node;
using torch::autograd::SavedVariable;
using torch::autograd::variable_list;

struct ConvTrelu {
  std::vector<int64_t> stride, padding, dilation;
  int64_t groups;
  double slope, scale, in_shift, out_shift;
};

using PointwiseFn = Tensor(const Tensor&, const Tensor&, const std::optional<Tensor>&,
                           at::IntArrayRef, at::IntArrayRef, at::IntArrayRef, int64_t,
                           c10::string_view, c10::List<std::optional<at::Scalar>>,
                           std::optional<c10::string_view>);

// mkldnn::_convolution_pointwise: libtorch exports no oneDNN symbols, so through the dispatcher.
std::optional<c10::OperatorHandle> pointwise_op() {
  static const auto op = c10::Dispatcher::singleton().findOp({"mkldnn::_convolution_pointwise", ""});
  return op;
}

bool has_python_or_functorch(c10::DispatchKeySet ks) {
  return ks.has(c10::DispatchKey::Python) || ks.has(c10::DispatchKey::Functionalize) ||
         ks.has(c10::DispatchKey::FuncTorchDynamicLayerBackMode) ||
         ks.has(c10::DispatchKey::FuncTorchDynamicLayerFrontMode);
}

bool is_fp32_cpu(const Tensor& t) { return t.is_cpu() && t.scalar_type() == at::kFloat; }

// Whether the fused primitive keeps every promise of the composition for this call.
bool fusable(c10::DispatchKeySet ks, const Tensor& x, const Tensor& w,
             const std::optional<Tensor>& bias, const ConvTrelu& c, c10::string_view save) {
  // First: fake tensors (torch.compile) may have symbolic sizes that numel() cannot read.
  if (has_python_or_functorch(ks) || at::autocast::is_autocast_enabled(at::kCPU)) return false;
  if (!is_fp32_cpu(x) || !is_fp32_cpu(w) || (bias.has_value() && !is_fp32_cpu(*bias))) return false;
  if (x.dim() != 4 || w.dim() != 4 || x.numel() == 0 || w.numel() == 0) return false;
  if (save != "auto" && save != "output") return false;
  if (torch::autograd::isFwGradDefined(x) || torch::autograd::isFwGradDefined(w) ||
      torch::autograd::isFwGradDefined(bias)) return false;
  if (!at::hasMKLDNN() || !at::globalContext().userEnabledMkldnn() || !pointwise_op()) return false;
  // The sign of z read back from y: slope >= 0, scale > 0, out_shift == 0, no flush to zero.
  return resolve_save("auto", x, c.slope, c.scale, c.in_shift, c.out_shift) == SaveKind::Output;
}

Tensor unfused(const Tensor& x, const Tensor& w, const std::optional<Tensor>& bias,
               const ConvTrelu& c, c10::string_view save) {
  // conv2d, not convolution: autocast casts conv2d's inputs (as for nn.Conv2d).
  const Tensor z = at::conv2d(x, w, std::nullopt, c.stride, c.padding, c.dilation, c.groups);
  return trelu_op().call(z, bias, c.slope, c.scale, c.in_shift, c.out_shift, 1, save);
}

// The fused forward, below autograd. The input takes the memory format aten's conv2d would
// give its output (channels_last if x or W is), so y's layout is the composition's.
Tensor fused_forward(const Tensor& x, const Tensor& w, const std::optional<Tensor>& bias,
                     const ConvTrelu& c) {
  at::AutoDispatchBelowADInplaceOrView guard;
  const bool channels_last = x.suggest_memory_format() == at::MemoryFormat::ChannelsLast ||
                             w.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
  const auto format = channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const Tensor w_folded = w.mul(c.scale);
  const Tensor b_folded = bias.has_value()
                              ? bias->add(c.in_shift).mul_(c.scale)
                              : at::full({w.size(0)}, c.in_shift * c.scale, w.options());
  c10::List<std::optional<at::Scalar>> scalars;
  scalars.push_back(at::Scalar(c.slope));
  return pointwise_op()->typed<PointwiseFn>().call(
      x.contiguous(format), w_folded, b_folded, c.padding, c.stride, c.dilation, c.groups,
      "leaky_relu", scalars, std::nullopt);
}

struct ConvTreluBackward : public Node {
  ConvTrelu c;
  SavedVariable x_, w_, y_;
  bool has_bias = false;
  at::ScalarType bias_dtype = at::kFloat;

  std::string name() const override { return "ConvTreluBackward"; }

  void release_variables() override {
    std::lock_guard<std::mutex> lock(mutex_);
    x_.reset_data();
    w_.reset_data();
    y_.reset_data();
  }

  variable_list apply(variable_list&& grads) override {
    std::lock_guard<std::mutex> lock(mutex_);
    variable_list out(3);
    const Tensor& grad_y = grads[0];
    if (!grad_y.defined()) return out;
    const bool want_x = task_should_compute_output(0), want_w = task_should_compute_output(1);
    const bool want_b = has_bias && task_should_compute_output(2);
    // Differentiable calls: with create_graph they record their own backward (double backward).
    auto [grad_z, grad_b] = trelu_backward_op().call(
        grad_y, y_.unpack(getptr()), std::nullopt, static_cast<int64_t>(SaveKind::Output),
        c.slope, c.scale, c.in_shift, c.out_shift, 1,
        want_b ? std::optional(bias_dtype) : std::nullopt);
    if (want_x || want_w) {
      auto [grad_x, grad_w, unused] = at::convolution_backward(
          grad_z, x_.unpack(), w_.unpack(), std::nullopt, c.stride, c.padding, c.dilation, false,
          {0, 0}, c.groups, {want_x, want_w, false});
      if (want_x) out[0] = std::move(grad_x);
      if (want_w) out[1] = std::move(grad_w);
    }
    if (want_b) out[2] = std::move(grad_b);
    return out;
  }
};

ConvTrelu make_config(at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                      int64_t groups, double slope, double scale, double in_shift,
                      double out_shift) {
  return {stride.vec(), padding.vec(), dilation.vec(), groups, slope, scale, in_shift, out_shift};
}

Tensor conv_trelu_autograd(c10::DispatchKeySet ks, const Tensor& x, const Tensor& w,
                           const std::optional<Tensor>& bias, at::IntArrayRef stride,
                           at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                           double slope, double scale, double in_shift, double out_shift,
                           c10::string_view save) {
  const ConvTrelu c =
      make_config(stride, padding, dilation, groups, slope, scale, in_shift, out_shift);
  if (!fusable(ks, x, w, bias, c, save)) return unfused(x, w, bias, c, save);
  c10::intrusive_ptr<ConvTreluBackward> node;
  if (torch::autograd::compute_requires_grad(x, w, bias)) {
    node = c10::make_intrusive<ConvTreluBackward>();
    node->set_next_edges(torch::autograd::collect_next_edges(x, w, bias));
    node->c = c;
  }
  Tensor y = fused_forward(x, w, bias, c);
  if (node) {
    torch::autograd::set_history(y, node);
    node->x_ = SavedVariable(x, false);
    node->w_ = SavedVariable(w, false);
    node->y_ = SavedVariable(y, true);
    if (bias.has_value()) {
      node->has_bias = true;
      node->bias_dtype = bias->scalar_type();
    }
  }
  return y;
}

// Without autograd (inference mode, or below the autograd layer): the same choice, no graph.
Tensor conv_trelu_no_autograd(const Tensor& x, const Tensor& w, const std::optional<Tensor>& bias,
                              at::IntArrayRef stride, at::IntArrayRef padding,
                              at::IntArrayRef dilation, int64_t groups, double slope, double scale,
                              double in_shift, double out_shift, c10::string_view save) {
  const ConvTrelu c =
      make_config(stride, padding, dilation, groups, slope, scale, in_shift, out_shift);
  const auto ks = c10::impl::tls_local_dispatch_key_set().included_ | x.key_set() | w.key_set();
  if (!fusable(ks, x, w, bias, c, save)) return unfused(x, w, bias, c, save);
  return fused_forward(x, w, bias, c);
}

}  // namespace

TORCH_LIBRARY_IMPL(tat_ext, Autograd, m) { m.impl("conv_trelu", &conv_trelu_autograd); }

TORCH_LIBRARY_IMPL(tat_ext, CompositeExplicitAutograd, m) {
  m.impl("conv_trelu", &conv_trelu_no_autograd);
}

}  // namespace tat_ext::autograd
