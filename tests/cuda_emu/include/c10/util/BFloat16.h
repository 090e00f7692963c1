// The CPU harness's c10::BFloat16: the upper 16 bits of a float, rounded to nearest even from
// float (NaN -> 0x7fc0) as c10 does; to float exactly.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

namespace c10 {

struct BFloat16 {
  uint16_t x;

  BFloat16() = default;
  BFloat16(float f) : x(from_float(f)) {}  // NOLINT: implicit, like c10::BFloat16
  operator float() const {
    const uint32_t u = static_cast<uint32_t>(x) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }

  static uint16_t from_float(float f) {
    if (std::isnan(f)) return 0x7fc0u;
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
  }
};

}  // namespace c10
