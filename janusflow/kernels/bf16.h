// bf16 <-> fp32 scalar conversions shared by the decoding kernels (bf16 travels as uint16_t),
// whether this CPU runs the kernels at all, and whether they take AVX512-BF16's dot instruction.
#pragma once
#include <cstdint>
#include <cstdlib>
#include <cstring>

namespace janusflow_bf16 {

// Whether this CPU runs the kernels (AVX-512 F and BW; each library's *Supported() export asks
// before the loader registers its handlers).
inline bool HasAvx512FBw() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
}

// Whether this CPU has AVX512-BF16's dot product instruction; JANUSFLOW_GEMV_WIDEN_BF16=1 says
// no on any CPU (tests of the widening paths).
inline bool HasDotInstruction() {
  static const bool has = [] {
    const char* widen = std::getenv("JANUSFLOW_GEMV_WIDEN_BF16");
    if (widen && widen[0] == '1') return false;
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512bf16") != 0;
  }();
  return has;
}

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
