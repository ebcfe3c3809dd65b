// bf16 <-> fp32 scalar conversions shared by the decoding kernels (bf16 travels as uint16_t).
#pragma once
#include <cstdint>
#include <cstring>

namespace janusflow_bf16 {

inline float FromBf16(uint16_t h) {
  const uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// fp32 -> bf16, round to nearest even (the rounding of XLA's convert); NaN stays NaN.
inline uint16_t ToBf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

inline float ToF32(float f) { return f; }
inline float ToF32(uint16_t h) { return FromBf16(h); }

}  // namespace janusflow_bf16
