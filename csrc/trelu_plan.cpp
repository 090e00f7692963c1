#include "trelu_plan.h"

#include <ATen/ATen.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cmath>
#include <limits>
#if defined(__x86_64__) || defined(_M_X64)
#include <xmmintrin.h>
#endif

namespace tat_ext {
namespace {

bool is_supported_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

at::ScalarType acc_dtype(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

// A non-overlapping dense tensor can be walked as one flat buffer; anything else (a slice, an
// expanded tensor) is copied once into the layout empty_like would give it.
at::Tensor densify(const at::Tensor& t) {
  if (t.is_non_overlapping_and_dense()) return t;
  return at::empty_like(t).copy_(t);
}

// Strides equal on every dimension of size > 1 (size-1 strides carry no layout information).
bool same_layout(const at::Tensor& a, const at::Tensor& b) {
  for (int64_t d = 0; d < a.dim(); ++d) {
    if (a.size(d) > 1 && a.stride(d) != b.stride(d)) return false;
  }
  return true;
}

// A constant the kernels convert to the arithmetic's dtype: finite, and representable in float32
// unless x is float64 (a larger one would silently become inf there).
void check_param(const char* name, double value, at::ScalarType dtype) {
  TORCH_CHECK_VALUE(std::isfinite(value), "trelu: ", name, " must be finite, got ", value);
  TORCH_CHECK_VALUE(dtype == at::kDouble || std::abs(value) <= std::numeric_limits<float>::max(),
                    "trelu: ", name, "=", value, " is outside the float32 range used by the "
                    "arithmetic for ", dtype, " inputs (|", name, "| <= 3.4028235e38); use float64");
}

void check_params(at::ScalarType dtype, double slope, double scale, double in_shift,
                  double out_shift) {
  check_param("slope", slope, dtype);
  check_param("scale", scale, dtype);
  check_param("in_shift", in_shift, dtype);
  check_param("out_shift", out_shift, dtype);
}

// Whether this thread's CPU flushes subnormal results to zero or reads subnormal operands as zero
// (torch.set_flush_denormal(True)): then y can round a tiny positive z to 0 and y > 0 reads a
// stored subnormal as 0, so the sign of z cannot be read back from y.
bool cpu_flushes_subnormals() {
#if defined(__x86_64__) || defined(_M_X64)
  constexpr unsigned kFlushToZero = 0x8000, kDenormalsAreZero = 0x0040;
  return (_mm_getcsr() & (kFlushToZero | kDenormalsAreZero)) != 0;
#elif defined(__aarch64__)
  uint64_t fpcr;
  asm volatile("mrs %0, fpcr" : "=r"(fpcr));
  return (fpcr >> 24) & 1;  // FZ
#else
  return false;
#endif
}

SaveKind check_save_kind(int64_t save_kind) {
  TORCH_CHECK_VALUE(save_kind >= 0 && save_kind <= 2,
                    "trelu: save_kind must be 0 (input), 1 (output) or 2 (mask), got ", save_kind);
  return static_cast<SaveKind>(save_kind);
}

bool output_sign_is_exact(double slope, double scale, double out_shift) {
  return slope >= 0 && scale > 0 && out_shift == 0;
}

// Channel count and channel stride; with no bias every element is "channel 0".
ChannelLayout make_layout(const at::Tensor& dense, const c10::optional<at::Tensor>& bias,
                          int64_t channel_dim) {
  ChannelLayout l{dense.numel(), 1, std::max<int64_t>(dense.numel(), 1)};
  if (!bias.has_value()) return l;
  const int64_t c = dense.size(channel_dim);
  if (c > 1) {
    l.channels = c;
    // For a dense tensor the channel stride is the product of the sizes of all dimensions
    // that are faster in memory, so offset i lies in channel (i / stride) % C.
    l.inner = dense.stride(channel_dim);
  }
  return l;
}

int64_t wrap_channel_dim(const at::Tensor& x, int64_t channel_dim) {
  const int64_t rank = x.dim();
  TORCH_CHECK_VALUE(channel_dim >= -rank && channel_dim < rank, "trelu: channel_dim=", channel_dim,
                    " is out of range for x of rank ", rank);
  return channel_dim < 0 ? channel_dim + rank : channel_dim;
}

void check_bias(const at::Tensor& x, const at::Tensor& bias, int64_t channel_dim) {
  TORCH_CHECK_VALUE(bias.dim() == 1 && bias.size(0) == x.size(channel_dim),
                    "trelu: bias must be 1-D with x.shape[", channel_dim, "] = ",
                    x.size(channel_dim), " elements, got shape ", bias.sizes());
  TORCH_CHECK_TYPE(bias.scalar_type() == x.scalar_type() || bias.scalar_type() == at::kFloat,
                   "trelu: bias dtype must be x's dtype (", x.scalar_type(),
                   ") or torch.float32, got ", bias.scalar_type());
  TORCH_CHECK_VALUE(bias.device() == x.device(), "trelu: bias is on ", bias.device(),
                    " but x is on ", x.device());
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> empty_backward_result(const BackwardPlan& p) {
  at::Tensor grad_bias =
      p.want_bias_grad ? at::zeros({p.bias_grad_size}, p.grad_y.options().dtype(p.bias_grad_dtype))
                       : at::empty({0}, p.grad_y.options());
  return {p.grad_x, grad_bias};
}

at::Tensor make_b_eff(at::ScalarType dtype, const c10::optional<at::Tensor>& bias, double in_shift,
                      const at::TensorOptions& options) {
  const auto acc = acc_dtype(dtype);
  if (!bias.has_value()) return at::full({1}, in_shift, options.dtype(acc));
  return bias->to(acc).add(in_shift).contiguous();
}

int64_t mask_bytes(int64_t numel) {
  return (numel + kMaskWordBits - 1) / kMaskWordBits * (kMaskWordBits / 8);
}

SaveKind resolve_save(c10::string_view save, const at::Tensor& x, double slope, double scale,
                      double in_shift, double out_shift) {
  check_params(x.scalar_type(), slope, scale, in_shift, out_shift);
  // Exact only when the sign of y is the sign of z (see trelu_math.h) and the CPU keeps subnormals.
  const bool output_exact = output_sign_is_exact(slope, scale, out_shift) &&
                            !(x.device().is_cpu() && cpu_flushes_subnormals());
  if (save == "auto") return output_exact ? SaveKind::Output : SaveKind::Mask;
  if (save == "input") return SaveKind::Input;
  if (save == "mask") return SaveKind::Mask;
  TORCH_CHECK_VALUE(save == "output", "trelu: save must be one of ('auto', 'input', 'output', "
                    "'mask'), got '", save, "'");
  TORCH_CHECK_VALUE(output_sign_is_exact(slope, scale, out_shift),
                    "trelu: save='output' recovers the sign of the pre-activation from y, which is "
                    "exact only when slope >= 0, scale > 0 and out_shift == 0 (got slope=", slope,
                    ", scale=", scale, ", out_shift=", out_shift, "); use save='mask' or 'input'");
  TORCH_CHECK_VALUE(output_exact,
                    "trelu: save='output' is not exact while the CPU flushes subnormals to zero "
                    "(torch.set_flush_denormal(True)); use save='auto', 'mask' or 'input'");
  return SaveKind::Output;
}

template <typename acc_t>
TReluCoeffs<acc_t> make_coeffs(at::ScalarType dtype, double slope, double scale,
                               double out_shift) {
  double floor = -std::numeric_limits<double>::infinity();
  if (out_shift == 0 && scale > 0) {
    switch (dtype) {
      case at::kHalf: floor = static_cast<float>(std::numeric_limits<c10::Half>::denorm_min()); break;
      case at::kBFloat16:
        floor = static_cast<float>(std::numeric_limits<c10::BFloat16>::denorm_min());
        break;
      case at::kFloat: floor = std::numeric_limits<float>::denorm_min(); break;
      default: floor = std::numeric_limits<double>::denorm_min(); break;
    }
  }
  return TReluCoeffs<acc_t>{static_cast<acc_t>(slope),     static_cast<acc_t>(scale),
                            static_cast<acc_t>(out_shift), static_cast<acc_t>(floor),
                            static_cast<acc_t>(scale),     static_cast<acc_t>(scale * slope)};
}
template TReluCoeffs<float> make_coeffs<float>(at::ScalarType, double, double, double);
template TReluCoeffs<double> make_coeffs<double>(at::ScalarType, double, double, double);

ForwardPlan plan_forward(const at::Tensor& x, const c10::optional<at::Tensor>& bias, double slope,
                         double scale, double in_shift, double out_shift, int64_t channel_dim,
                         int64_t save_kind) {
  TORCH_CHECK_TYPE(is_supported_dtype(x.scalar_type()),
                   "trelu: x must be float32, float64, float16 or bfloat16, got ",
                   x.scalar_type());
  TORCH_CHECK_VALUE(x.dim() >= 1, "trelu: x must have at least one dimension");
  check_params(x.scalar_type(), slope, scale, in_shift, out_shift);
  const SaveKind kind = check_save_kind(save_kind);
  if (bias.has_value()) {
    channel_dim = wrap_channel_dim(x, channel_dim);
    check_bias(x, *bias, channel_dim);
  }
  ForwardPlan p;
  p.x = densify(x);
  p.y = at::empty_like(p.x);
  p.layout = make_layout(p.x, bias, channel_dim);
  p.bias = bias;
  p.in_shift = in_shift;
  p.mask = at::empty({kind == SaveKind::Mask ? mask_bytes(x.numel()) : 0},
                     x.options().dtype(at::kByte));
  return p;
}

BackwardPlan plan_backward(const at::Tensor& grad_y, const at::Tensor& saved,
                           const c10::optional<at::Tensor>& bias, int64_t save_kind, double slope,
                           double scale, double in_shift, double out_shift, int64_t channel_dim,
                           c10::optional<at::ScalarType> bias_grad_dtype) {
  TORCH_CHECK_TYPE(is_supported_dtype(grad_y.scalar_type()),
                   "trelu_backward: grad_y must be a floating dtype, got ", grad_y.scalar_type());
  check_params(grad_y.scalar_type(), slope, scale, in_shift, out_shift);
  BackwardPlan p;
  p.kind = check_save_kind(save_kind);
  TORCH_CHECK(saved.device() == grad_y.device(), "trelu_backward: saved tensor is on ",
              saved.device(), " but grad_y is on ", grad_y.device());
  if (p.kind == SaveKind::Mask) {
    TORCH_CHECK_TYPE(saved.scalar_type() == at::kByte, "trelu_backward: mask must be uint8");
    TORCH_CHECK_VALUE(saved.dim() == 1 && saved.numel() == mask_bytes(grad_y.numel()),
                      "trelu_backward: mask has ", saved.numel(), " bytes, expected ",
                      mask_bytes(grad_y.numel()));
    // The bit order follows grad_y's memory order; the autograd node (autograd/trelu_autograd.cpp)
    // hands grad_y in y's layout.
    p.grad_y = densify(grad_y);
  } else {
    TORCH_CHECK_VALUE(saved.sizes() == grad_y.sizes(), "trelu_backward: saved tensor shape ",
                      saved.sizes(), " differs from grad_y shape ", grad_y.sizes());
    TORCH_CHECK_TYPE(saved.scalar_type() == grad_y.scalar_type(), "trelu_backward: saved dtype ",
                     saved.scalar_type(), " differs from grad_y dtype ", grad_y.scalar_type());
    TORCH_CHECK_VALUE(p.kind != SaveKind::Output || output_sign_is_exact(slope, scale, out_shift),
                      "trelu_backward: save='output' needs slope >= 0, scale > 0, out_shift == 0");
    p.saved = densify(saved);
    p.grad_y = same_layout(grad_y, p.saved) && grad_y.is_non_overlapping_and_dense()
                   ? grad_y
                   : at::empty_like(p.saved).copy_(grad_y);
  }
  if (p.kind == SaveKind::Mask) p.saved = saved.contiguous();
  if (bias.has_value()) {
    channel_dim = wrap_channel_dim(grad_y, channel_dim);
    check_bias(grad_y, *bias, channel_dim);
  }
  TORCH_CHECK_VALUE(p.kind != SaveKind::Input || bias.has_value() || !bias_grad_dtype.has_value(),
                    "trelu_backward: save='input' with a bias gradient needs the bias");
  p.want_bias_grad = bias_grad_dtype.has_value();
  p.bias_grad_dtype = bias_grad_dtype.value_or(at::kFloat);
  p.bias_grad_size = 0;
  if (p.want_bias_grad) {
    // The channel structure comes from the bias (if any) or from channel_dim alone.
    channel_dim = wrap_channel_dim(grad_y, channel_dim);
    p.bias_grad_size = grad_y.size(channel_dim);
    ChannelLayout l{p.grad_y.numel(), p.grad_y.size(channel_dim), p.grad_y.stride(channel_dim)};
    if (l.channels <= 1) l = ChannelLayout{l.numel, 1, std::max<int64_t>(l.numel, 1)};
    p.layout = l;
  } else {
    p.layout = make_layout(p.grad_y, bias, channel_dim);
  }
  p.bias = bias;
  p.in_shift = in_shift;
  p.grad_x = at::empty_like(p.grad_y);
  return p;
}

}  // namespace tat_ext
