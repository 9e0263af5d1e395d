// Storing an accumulated float in a half-precision tensor from a `#pragma omp simd` loop. c10's float ->
// BFloat16 / Half conversions branch (NaN; Half's subnormals and overflow), which keeps such a loop scalar: a
// bfloat16 or float16 gradient took 5-10x the float32 one. These are the same round-to-nearest-even conversions
// (the same bits as c10's, any NaN a quiet NaN), branch-free, so the loop vectorises.
#pragma once
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <bit>
#include <cstdint>

namespace kdops {
namespace cpu {

template <typename scalar_t, typename acc>
inline __attribute__((always_inline)) scalar_t to_storage(acc value) {
  return static_cast<scalar_t>(value);
}

template <>
inline __attribute__((always_inline)) c10::BFloat16 to_storage<c10::BFloat16, float>(float value) {
  const uint32_t bits = std::bit_cast<uint32_t>(value);
  const uint32_t rounded = (bits + UINT32_C(0x7FFF) + ((bits >> 16) & 1u)) >> 16;
  return c10::BFloat16(static_cast<uint16_t>(value != value ? UINT32_C(0x7FC0) : rounded), c10::BFloat16::from_bits());
}

// float -> IEEE half, round to nearest even: normal results by rounding the mantissa bits (a carry moves into the
// exponent, up to infinity), subnormal ones by one float addition of a magic number (float addition rounds to
// nearest even), infinity and NaN by selects.
template <>
inline __attribute__((always_inline)) c10::Half to_storage<c10::Half, float>(float value) {
  constexpr uint32_t kRebias = static_cast<uint32_t>(15 - 127) << 23;   // float exponent -> half exponent
  constexpr uint32_t kMagic = static_cast<uint32_t>(127 - 15 + 23 - 10 + 1) << 23;  // 0.5f: aligns subnormals
  constexpr uint32_t kSubnormalBelow = static_cast<uint32_t>(113) << 23;            // 2^-14, the least normal
  constexpr uint32_t kOverflowFrom = static_cast<uint32_t>(127 + 16) << 23;         // 2^16
  constexpr uint32_t kInfinity = static_cast<uint32_t>(255) << 23;
  const uint32_t bits = std::bit_cast<uint32_t>(value);
  const uint32_t sign = bits & UINT32_C(0x80000000);
  const uint32_t magnitude = bits ^ sign;
  const uint32_t normal = (magnitude + kRebias + UINT32_C(0xFFF) + ((magnitude >> 13) & 1u)) >> 13;
  const uint32_t subnormal = std::bit_cast<uint32_t>(std::bit_cast<float>(magnitude) + std::bit_cast<float>(kMagic)) -
                             kMagic;
  const uint32_t finite = magnitude < kSubnormalBelow ? subnormal : normal;
  const uint32_t special = magnitude > kInfinity ? UINT32_C(0x7E00) : UINT32_C(0x7C00);
  const uint32_t half = magnitude >= kOverflowFrom ? special : finite;
  return c10::Half(static_cast<uint16_t>(half | (sign >> 16)), c10::Half::from_bits());
}

}  // namespace cpu
}  // namespace kdops
