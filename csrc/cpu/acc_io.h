// Loads and stores a SIMD-width group of scalars as vectors of the accumulation type:
// one Vectorized<float|double> for fp32/fp64, two Vectorized<float> for fp16/bf16.
#pragma once

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <tuple>

// Per instruction set (see TAT_ISA_BEGIN in trelu_math.h): included by the kernels of cpu/isa/.
namespace tat_ext::cpu::CPU_CAPABILITY {

using at::vec::Vectorized;

template <typename scalar_t>
struct AccIO {
  using acc_t = scalar_t;
  using Vec = Vectorized<acc_t>;
  static constexpr int kParts = 1;
  static constexpr int64_t kWidth = Vec::size();
  static void load(const scalar_t* p, Vec* v) { v[0] = Vec::loadu(p); }
  static void store(scalar_t* p, const Vec* v) { v[0].store(p); }
};

template <typename scalar_t>
struct ReducedAccIO {
  using acc_t = float;
  using Vec = Vectorized<float>;
  static constexpr int kParts = 2;
  static constexpr int64_t kWidth = 2 * Vec::size();
  static_assert(Vectorized<scalar_t>::size() == kWidth, "reduced vector holds two float vectors");
  static void load(const scalar_t* p, Vec* v) {
    std::tie(v[0], v[1]) = at::vec::convert_to_float<scalar_t>(Vectorized<scalar_t>::loadu(p));
  }
  static void store(scalar_t* p, const Vec* v) {
    at::vec::convert_from_float<scalar_t>(v[0], v[1]).store(p);
  }
};

template <>
struct AccIO<c10::Half> : ReducedAccIO<c10::Half> {};
template <>
struct AccIO<c10::BFloat16> : ReducedAccIO<c10::BFloat16> {};

}  // namespace tat_ext::cpu::CPU_CAPABILITY
