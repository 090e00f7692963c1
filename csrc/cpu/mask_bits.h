// Reading and writing the packed sign mask (format in trelu_math.h) a SIMD vector at a time.
#pragma once

#include <ATen/cpu/vec/vec.h>

#include <cstdint>

// Per instruction set (see TAT_ISA_BEGIN in trelu_math.h): included by the kernels of cpu/isa/.
namespace tat_ext::cpu::CPU_CAPABILITY {

// Bits of the lanes of a compare result (all-ones lanes -> 1). zero_mask() flags the lanes
// that are exactly 0.0, i.e. the false ones.
template <typename T>
inline uint64_t lane_bits(const at::vec::Vectorized<T>& compare) {
  constexpr int64_t n = at::vec::Vectorized<T>::size();
  const uint64_t all = n >= 64 ? ~uint64_t(0) : (uint64_t(1) << n) - 1;
  return ~static_cast<uint64_t>(static_cast<uint32_t>(compare.zero_mask())) & all;
}

// ORs `bits` (at most 32 of them) into the mask starting at bit i. The caller owns every word
// it touches: a word is only written when it receives a set bit of this run.
inline void or_bits(uint32_t* words, int64_t i, uint64_t bits) {
  const uint64_t shifted = bits << (i & 31);
  uint32_t* w = words + (i >> 5);
  w[0] |= static_cast<uint32_t>(shifted);
  if (shifted >> 32) w[1] |= static_cast<uint32_t>(shifted >> 32);
}

// n <= 32 mask bits starting at bit i, without reading past the word holding bit i + n - 1.
inline uint64_t read_bits(const uint32_t* words, int64_t i, int64_t n) {
  const int64_t w = i >> 5, last = (i + n - 1) >> 5;
  uint64_t v = words[w];
  if (last != w) v |= static_cast<uint64_t>(words[last]) << 32;
  return (v >> (i & 31)) & ((uint64_t(1) << n) - 1);
}

// A compare-style vector (all-ones lanes where the bit is set) from the low lanes of `bits`.
template <typename T>
inline at::vec::Vectorized<T> bits_to_lanes(uint64_t bits) {
  using Vec = at::vec::Vectorized<T>;
  __at_align__ T lanes[Vec::size()];
  for (int64_t l = 0; l < Vec::size(); ++l) lanes[l] = static_cast<T>((bits >> l) & 1);
  return Vec::loadu(lanes) > Vec(T(0));
}

}  // namespace tat_ext::cpu::CPU_CAPABILITY
