// Per-element math of the transformed Leaky ReLU, shared by the C++ (CPU) and CUDA kernels.
//
//   z = x + b_eff[c],   b_eff[c] = bias[c] + in_shift                       (pre-activation)
//   y = scale * (LReLU(z; slope) + out_shift),  LReLU(z; s) = z if z > 0 else s*z
//   dy/dz = scale if z > 0 else scale*slope   (PyTorch's convention at z == 0)
//
// Every function is a template over the value type V so the same expression serves a scalar
// (float/double, host or device) and a SIMD vector (at::vec::Vectorized on the CPU). V only needs
// +, *, construction from the accumulation type, and the tat_select/tat_max/tat_positive overloads
// (scalar ones below; vector ones in cpu/vec_ops.h; FMA-free CUDA ones in cuda/cuda_utils.cuh).
#pragma once

#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define TAT_HD __host__ __device__ __forceinline__
#else
#define TAT_HD inline
#endif

// The CPU kernels are compiled once per instruction set (csrc/cpu/isa/, build_flags.py). Every
// inline function such a translation unit compiles lives in a namespace named after its
// instruction set (CPU_CAPABILITY, as in ATen's at::vec), so the linker never swaps an AVX-512
// copy of a shared inline function into baseline code. Types carry no code: they stay shared.
#if defined(TAT_EXT_ISA_KERNELS)
#define TAT_ISA_BEGIN inline namespace CPU_CAPABILITY {
#define TAT_ISA_END }
#else
#define TAT_ISA_BEGIN
#define TAT_ISA_END
#endif

namespace tat_ext {

// What forward keeps for backward (mirrors SAVE_KIND in tat_ext/_checks.py). Here rather than in
// trelu_plan.h so the CUDA kernel files can use it without ATen's tensor headers.
enum class SaveKind : int64_t { Input = 0, Output = 1, Mask = 2 };

// Coefficients in the accumulation type (float for fp16/bf16/fp32, double for fp64).
template <typename acc_t>
struct TReluCoeffs {
  acc_t slope;
  acc_t scale;
  acc_t out_shift;
  // Lower bound of a positive-side output. When out_shift == 0 and scale > 0 it is the smallest
  // positive value of the OUTPUT dtype, so a positive z never rounds to y == 0: the sign of z can
  // then be recovered exactly from y (save="output"). Otherwise -inf (no effect).
  acc_t pos_floor;
  acc_t pos_grad;  // scale
  acc_t neg_grad;  // scale * slope, rounded once from double on the host
};

TAT_ISA_BEGIN

TAT_HD bool tat_positive(float v) { return v > 0.0f; }
TAT_HD bool tat_positive(double v) { return v > 0.0; }
TAT_HD float tat_select(bool m, float a, float b) { return m ? a : b; }
TAT_HD double tat_select(bool m, double a, double b) { return m ? a : b; }
TAT_HD float tat_max(float a, float b) { return a > b ? a : b; }
TAT_HD double tat_max(double a, double b) { return a > b ? a : b; }

// y from the pre-activation z (forward).
template <typename V, typename acc_t>
TAT_HD V trelu_value(const V& z, const TReluCoeffs<acc_t>& k) {
  const auto pos = tat_positive(z);
  const V scale(k.scale);
  const V out_shift(k.out_shift);
  const V positive_side = tat_max(scale * (z + out_shift), V(k.pos_floor));
  const V negative_side = scale * (V(k.slope) * z + out_shift);
  return tat_select(pos, positive_side, negative_side);
}

// dL/dz from dL/dy and the sign of z (backward; M is bool or a vector mask).
template <typename V, typename M, typename acc_t>
TAT_HD V trelu_grad(const V& grad_y, const M& z_positive, const TReluCoeffs<acc_t>& k) {
  return grad_y * tat_select(z_positive, V(k.pos_grad), V(k.neg_grad));
}

TAT_ISA_END

// Bit-packed sign mask (save="mask"): bit (i % 32) of 32-bit word i / 32 holds z_i > 0, for the
// element at memory offset i. Words are little-endian, so byte j's bit b is element 8*j + b.
constexpr int kMaskWordBits = 32;

}  // namespace tat_ext
