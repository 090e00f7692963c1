// Device helpers shared by the trelu CUDA kernels: 16-byte packs with an edge-safe scalar path,
// uncontracted arithmetic for the shared math header, 64-bit division by launch constants,
// deterministic warp sums and warp-level packing of mask bits.
//
// Also compiled by a host C++ compiler in the CPU execution harness (tests/cuda_emu), whose
// cuda_runtime.h supplies the CUDA built-ins.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "../trelu_math.h"

namespace tat_ext::cuda {

constexpr int kWarpSize = 32;
constexpr unsigned kFullMask = 0xffffffffu;

// Elements per 16-byte access.
template <typename scalar_t>
constexpr int kVec16 = 16 / sizeof(scalar_t);

template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Pack {
  T v[VEC];
};

// Every store of the kernels to global memory. The CPU harness defines TAT_EMU_NOTE_STORE to
// count the writes of each output element, mask word and workspace slot (each must be exactly 1).
template <typename T>
__device__ __forceinline__ void store_global(T* p, const T& v) {
#ifdef TAT_EMU_NOTE_STORE
  TAT_EMU_NOTE_STORE(p, sizeof(T));
#endif
  *p = v;
}

// Whether every multiple of `vec` elements from p can be accessed as one Pack.
template <typename T>
bool is_pack_aligned(const T* p, int vec) {
  return reinterpret_cast<uintptr_t>(p) % (sizeof(T) * vec) == 0;
}

// Loads the VEC elements starting at element i (a multiple of VEC). Elements outside [lo, hi)
// are left zero: a slot that straddles the edge of a plane or of the tensor is read one element
// at a time, so it never touches memory that belongs to a neighbouring block.
template <int VEC, typename T>
__device__ __forceinline__ void load_slot(const T* __restrict__ p, int64_t i, int64_t lo,
                                          int64_t hi, T (&v)[VEC]) {
  if (i >= lo && i + VEC <= hi) {
    const Pack<T, VEC> pk = *reinterpret_cast<const Pack<T, VEC>*>(p + i);
#pragma unroll
    for (int e = 0; e < VEC; ++e) v[e] = pk.v[e];
  } else {
#pragma unroll
    for (int e = 0; e < VEC; ++e) v[e] = (i + e >= lo && i + e < hi) ? p[i + e] : T(0.0f);
  }
}

template <int VEC, typename T>
__device__ __forceinline__ void store_slot(T* __restrict__ p, int64_t i, int64_t lo, int64_t hi,
                                           const T (&v)[VEC]) {
  if (i >= lo && i + VEC <= hi) {
    Pack<T, VEC> pk;
#pragma unroll
    for (int e = 0; e < VEC; ++e) pk.v[e] = v[e];
    store_global(reinterpret_cast<Pack<T, VEC>*>(p + i), pk);
  } else {
#pragma unroll
    for (int e = 0; e < VEC; ++e) {
      if (i + e >= lo && i + e < hi) store_global(p + i + e, v[e]);
    }
  }
}

// VEC sign bits of element i (a multiple of VEC, VEC <= 8) from the packed mask: they share a
// byte, so one byte load serves the whole slot.
template <int VEC>
__device__ __forceinline__ uint32_t load_mask_bits(const uint8_t* __restrict__ mask, int64_t i) {
  return (static_cast<uint32_t>(mask[i >> 3]) >> (i & 7)) & ((1u << VEC) - 1u);
}

// Packs each lane's VEC sign bits (of the VEC consecutive elements it holds, lane-major) into
// 32-bit mask words. The word of lanes [g, g + 32/VEC) is returned on every lane of that group;
// lane g stores it. Whole words per warp: no two warps or blocks ever write the same word.
template <int VEC>
__device__ __forceinline__ uint32_t warp_pack_bits(uint32_t bits, int lane) {
  if constexpr (VEC == 1) {
    return __ballot_sync(kFullMask, bits != 0);
  } else {
    constexpr int kLanesPerWord = kWarpSize / VEC;
    uint32_t word = bits << ((lane * VEC) % kWarpSize);
#pragma unroll
    for (int offset = kLanesPerWord / 2; offset > 0; offset /= 2) {
      word |= __shfl_xor_sync(kFullMask, word, offset);
    }
    return word;
  }
}

// Sum over the warp; every lane gets the same value, in an order fixed by the lane layout.
template <typename acc_t>
__device__ __forceinline__ acc_t warp_sum(acc_t v) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    v += __shfl_xor_sync(kFullMask, v, offset);
  }
  return v;
}

// Round-to-nearest arithmetic that nvcc never contracts into a fused multiply-add. The C++ build
// uses -ffp-contract=off; evaluating trelu_value/trelu_grad in this type makes the CUDA kernels
// round every step the same way (nvcc would fuse slope * z + out_shift), so y and grad_x match
// the CPU kernels and the reference bit for bit.
template <typename T>
struct Uncontracted {
  T v;
  __host__ __device__ Uncontracted(T x) : v(x) {}
};

__device__ __forceinline__ Uncontracted<float> operator+(Uncontracted<float> a,
                                                         Uncontracted<float> b) {
  return __fadd_rn(a.v, b.v);
}
__device__ __forceinline__ Uncontracted<float> operator*(Uncontracted<float> a,
                                                         Uncontracted<float> b) {
  return __fmul_rn(a.v, b.v);
}
__device__ __forceinline__ Uncontracted<double> operator+(Uncontracted<double> a,
                                                          Uncontracted<double> b) {
  return __dadd_rn(a.v, b.v);
}
__device__ __forceinline__ Uncontracted<double> operator*(Uncontracted<double> a,
                                                          Uncontracted<double> b) {
  return __dmul_rn(a.v, b.v);
}
// The overloads trelu_math.h's templates find by argument-dependent lookup.
template <typename T>
__device__ __forceinline__ bool tat_positive(Uncontracted<T> a) {
  return tat_ext::tat_positive(a.v);
}
template <typename T>
__device__ __forceinline__ Uncontracted<T> tat_select(bool m, Uncontracted<T> a,
                                                      Uncontracted<T> b) {
  return m ? a : b;
}
template <typename T>
__device__ __forceinline__ Uncontracted<T> tat_max(Uncontracted<T> a, Uncontracted<T> b) {
  return tat_ext::tat_max(a.v, b.v);
}

// y for the pre-activation z = x + b (x already in acc_t).
template <typename acc_t>
__device__ __forceinline__ acc_t forward_value(acc_t x, acc_t b, const TReluCoeffs<acc_t>& k,
                                               bool& positive) {
  const Uncontracted<acc_t> z = Uncontracted<acc_t>(x) + Uncontracted<acc_t>(b);
  positive = tat_positive(z);
  return trelu_value(z, k).v;
}

template <typename acc_t>
__device__ __forceinline__ acc_t grad_value(acc_t grad_y, bool positive,
                                            const TReluCoeffs<acc_t>& k) {
  return trelu_grad(Uncontracted<acc_t>(grad_y), positive, k).v;
}

// n / d for a divisor fixed at launch, with one 64x64 high multiply instead of a 64-bit
// division (Granlund & Montgomery; exact for every n < 2^64, d in [1, 2^63]).
struct DivMod64 {
  uint64_t divisor;
  uint64_t magic;
  unsigned shift1, shift2;

  DivMod64() = default;
  explicit DivMod64(uint64_t d) : divisor(d) {
    unsigned l = 0;
    while (l < 64 && (uint64_t{1} << l) < d) ++l;  // l = ceil(log2 d)
    const unsigned __int128 two_l = static_cast<unsigned __int128>(1) << l;
    magic = static_cast<uint64_t>((two_l - d) * (static_cast<unsigned __int128>(1) << 64) / d) + 1;
    shift1 = l < 1 ? l : 1;
    shift2 = l < 1 ? 0 : l - 1;
  }
  __device__ __forceinline__ uint64_t div(uint64_t n) const {
    const uint64_t t = __umul64hi(magic, n);
    return (t + ((n - t) >> shift1)) >> shift2;
  }
  __device__ __forceinline__ uint64_t mod(uint64_t n) const { return n - div(n) * divisor; }
};

}  // namespace tat_ext::cuda
