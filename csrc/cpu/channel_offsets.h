// The per-channel offsets b_eff[c] = bias[c] + in_shift (trelu_math.h) for the CPU kernels, read
// straight from the bias: no tensor op (their fixed cost dominates small calls).
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <vector>

// Per instruction set (see TAT_ISA_BEGIN in trelu_math.h): included by the kernels of cpu/isa/.
namespace tat_ext::cpu::CPU_CAPABILITY {

// bias rounded to acc_t, then in_shift (rounded to acc_t) added: the reference's rounding.
// Without a bias, the single value in_shift.
template <typename acc_t>
std::vector<acc_t> channel_offsets(const c10::optional<at::Tensor>& bias, double in_shift) {
  const acc_t shift = static_cast<acc_t>(in_shift);
  if (!bias.has_value()) return {shift};
  std::vector<acc_t> out(bias->size(0));
  const int64_t stride = bias->stride(0);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, bias->scalar_type(), "channel_offsets",
                                  [&] {
    const scalar_t* b = bias->const_data_ptr<scalar_t>();
    for (size_t c = 0; c < out.size(); ++c) out[c] = static_cast<acc_t>(b[c * stride]) + shift;
  });
  return out;
}

}  // namespace tat_ext::cpu::CPU_CAPABILITY
