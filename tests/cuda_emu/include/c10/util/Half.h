// The CPU harness's c10::Half: IEEE binary16 storage, converted from float with round to nearest
// even (subnormals kept, overflow to inf, NaN stays NaN) as c10 does; to float exactly.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

namespace c10 {

struct Half {
  uint16_t x;

  Half() = default;
  Half(float f) : x(from_float(f)) {}  // NOLINT: implicit, like c10::Half
  operator float() const { return to_float(x); }

  static uint16_t from_float(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    const uint16_t sign = (u >> 16) & 0x8000u;
    const uint32_t a = u & 0x7fffffffu;
    if (a >= 0x7f800000u) return sign | (a > 0x7f800000u ? 0x7e00u : 0x7c00u);  // NaN, inf
    if (a >= 0x477ff000u) return sign | 0x7c00u;  // rounds to >= 65520: inf
    if (a < 0x38800000u) {  // below 2^-14: a subnormal half, |f| * 2^24 rounded to an integer
      const float scaled = std::fabs(f) * 16777216.0f;  // exact: a power-of-two scaling
      return sign | static_cast<uint16_t>(std::nearbyint(scaled));
    }
    const uint32_t mant = a & 0x7fffffu;
    uint32_t h = ((((a >> 23) - 127 + 15) << 10) | (mant >> 13));
    const uint32_t rest = mant & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;  // carries into the exponent
    return sign | static_cast<uint16_t>(h);
  }

  static float to_float(uint16_t h) {
    const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
    const uint32_t exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
    float f;
    if (exp == 0) {
      f = std::ldexp(static_cast<float>(mant), -24);
      uint32_t u;
      std::memcpy(&u, &f, 4);
      u |= sign;
      std::memcpy(&f, &u, 4);
      return f;
    }
    const uint32_t u = sign | (exp == 31 ? 0x7f800000u | (mant << 13)
                                         : ((exp - 15 + 127) << 23) | (mant << 13));
    std::memcpy(&f, &u, 4);
    return f;
  }
};

}  // namespace c10
