// Host-side argument checking and launch planning for the trelu ops, shared by the CPU and CUDA
// backends: both see a dense tensor as a flat buffer whose channel at memory offset i is
// (i / inner) % channels.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>
#include <c10/util/string_view.h>

#include <cstdint>
#include <tuple>

#include "trelu_math.h"

namespace tat_ext {

struct ChannelLayout {
  int64_t numel;
  int64_t channels;  // 1 when there is no bias
  int64_t inner;     // distance in memory between consecutive channels
};

struct ForwardPlan {
  at::Tensor x;      // dense (non-overlapping) view or copy of the input
  at::Tensor y;      // output, same strides as x
  at::Tensor mask;   // packed sign bits (save="mask"), else empty
  c10::optional<at::Tensor> bias;  // b_eff = bias + in_shift (make_b_eff / cpu::channel_offsets)
  double in_shift;
  ChannelLayout layout;
};

struct BackwardPlan {
  at::Tensor grad_y;     // dense, same strides as the saved tensor
  at::Tensor saved;      // x, y or the mask
  at::Tensor grad_x;     // output, strides of grad_y
  c10::optional<at::Tensor> bias;  // SaveKind::Input: b_eff = bias + in_shift gives the signs
  double in_shift;
  bool want_bias_grad;
  at::ScalarType bias_grad_dtype;
  int64_t bias_grad_size;  // channels of the bias gradient (may be 0; layout.channels is >= 1)
  ChannelLayout layout;
  SaveKind kind;
};

// The concrete save mode for the user's `save` ("auto" | "input" | "output" | "mask"); validates
// `save` and the constants (finite, and within the range of the arithmetic's dtype for x).
// "auto" is "output" when reading the sign of z back from y is exact, else "mask".
SaveKind resolve_save(c10::string_view save, const at::Tensor& x, double slope, double scale,
                      double in_shift, double out_shift);

ForwardPlan plan_forward(const at::Tensor& x, const c10::optional<at::Tensor>& bias, double slope,
                         double scale, double in_shift, double out_shift, int64_t channel_dim,
                         int64_t save_kind);

BackwardPlan plan_backward(const at::Tensor& grad_y, const at::Tensor& saved,
                           const c10::optional<at::Tensor>& bias, int64_t save_kind, double slope,
                           double scale, double in_shift, double out_shift, int64_t channel_dim,
                           c10::optional<at::ScalarType> bias_grad_dtype);

// (grad_x, grad_bias) for an input with no elements: nothing to launch, a zero bias gradient.
std::tuple<at::Tensor, at::Tensor> empty_backward_result(const BackwardPlan& p);

// b_eff = bias + in_shift (`channels` values; one, in_shift, without a bias) in the accumulation
// dtype of `dtype`, on the bias's device: bias rounded to that dtype, then in_shift added (the
// reference's rounding).
at::Tensor make_b_eff(at::ScalarType dtype, const c10::optional<at::Tensor>& bias, double in_shift,
                      const at::TensorOptions& options);

// Size in bytes of the packed mask for n elements (whole 32-bit words).
int64_t mask_bytes(int64_t numel);

// The accumulation-type coefficients for a tensor of dtype `dtype`.
template <typename acc_t>
TReluCoeffs<acc_t> make_coeffs(at::ScalarType dtype, double slope, double scale, double out_shift);

}  // namespace tat_ext
