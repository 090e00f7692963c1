// SIMD overloads that let the templates of trelu_math.h run on at::vec::Vectorized.
// They live in at::vec's per-instruction-set namespace, so argument-dependent lookup finds them
// from inside those templates and each instruction set has its own copies.
#pragma once

#include <ATen/cpu/vec/vec.h>

namespace at::vec {
inline namespace CPU_CAPABILITY {

template <typename T>
inline Vectorized<T> tat_positive(const Vectorized<T>& v) {
  return v > Vectorized<T>(T(0));
}

template <typename T>
inline Vectorized<T> tat_select(const Vectorized<T>& mask, const Vectorized<T>& a,
                                const Vectorized<T>& b) {
  return Vectorized<T>::blendv(b, a, mask);  // lanes of `a` where mask is set
}

template <typename T>
inline Vectorized<T> tat_max(const Vectorized<T>& a, const Vectorized<T>& b) {
  return maximum(a, b);
}

}  // namespace CPU_CAPABILITY
}  // namespace at::vec
