// Interface between the torch-facing CUDA glue (trelu_ops_cuda.cu) and the kernel files
// (trelu_forward.cu, trelu_backward.cu): raw pointers and sizes only, so the kernel files build
// without ATen's tensor headers (several seconds of nvcc time each).
//
// Both kernels see a dense tensor as a flat buffer of `numel` elements whose channel at memory
// offset i is (i / inner) % channels (trelu_plan.h's ChannelLayout; channels == 1: no channels).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <type_traits>

#include "../trelu_math.h"

namespace tat_ext::cuda {

// The accumulation type of the math: double for double, float for float/half/bfloat16.
template <typename scalar_t>
using acc_type_of = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

template <typename scalar_t, typename acc_t>
struct ForwardParams {
  const scalar_t* x;
  scalar_t* y;
  uint32_t* mask;      // packed sign words (save="mask"), else null
  const acc_t* b_eff;  // `channels` values of bias + in_shift
  int64_t numel, channels, inner;
  TReluCoeffs<acc_t> k;
};

template <typename scalar_t, typename acc_t>
struct BackwardParams {
  const scalar_t* grad_y;
  const scalar_t* saved;  // x (SaveKind::Input) or y (Output); null for Mask
  const uint8_t* mask;    // packed sign bits (Mask), else null
  scalar_t* grad_x;
  const acc_t* b_eff;     // Input only
  int64_t numel, channels, inner;
  TReluCoeffs<acc_t> k;
  SaveKind kind;
  bool bias_grad;         // also reduce dL/dz per channel
};

// How the backward is launched; a fixed function of the shape and the pointers' alignment, so
// the per-channel partial sums, and grad_bias, are bitwise reproducible.
struct BackwardLaunch {
  bool columns;     // the (rows x channels*inner) column grid, else the plane grid
  bool vectorized;  // 16-byte accesses
  // The partial sums form a [reduce_outer, channels, reduce_inner] array of acc_t (plane grid:
  // [outer, C, chunks of a plane]; column grid: [row blocks, C, inner]) that the second stage
  // sums over its first and last axes. workspace = its element count plus the second stage's
  // intermediate sums, in acc_t elements (0 without bias_grad).
  int64_t reduce_outer, reduce_inner;
  int64_t workspace;
};

template <typename scalar_t>
void launch_trelu_forward(const ForwardParams<scalar_t, acc_type_of<scalar_t>>& p,
                          cudaStream_t stream);

template <typename scalar_t>
BackwardLaunch plan_trelu_backward(const BackwardParams<scalar_t, acc_type_of<scalar_t>>& p);

// grad_x, and with p.bias_grad the `channels` sums of dL/dz into grad_bias (acc_t), through
// `workspace` (plan.workspace elements).
template <typename scalar_t>
void launch_trelu_backward(const BackwardParams<scalar_t, acc_type_of<scalar_t>>& p,
                           const BackwardLaunch& plan, acc_type_of<scalar_t>* workspace,
                           acc_type_of<scalar_t>* grad_bias, cudaStream_t stream);

}  // namespace tat_ext::cuda
