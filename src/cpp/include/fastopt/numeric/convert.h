// Storage types and exact scalar conversions between them and fp32.
// fp32 -> fp16/bf16 rounds to nearest even; NaNs stay NaN (quiet bit set, upper payload
// kept), exactly as the F16C/AVX-512 instructions do, so every target stores the same bits.
#pragma once
#include <cstdint>
#include <cstring>

#include "fastopt/platform.h"
#include "fastopt/tensor_list.h"

namespace fastopt {

struct f16 { uint16_t bits; };
struct bf16 { uint16_t bits; };

FASTOPT_HD uint32_t f32_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
#endif
}

FASTOPT_HD float bits_f32(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, 4);
  return f;
#endif
}

FASTOPT_HD float to_f32(float x) { return x; }
FASTOPT_HD float to_f32(bf16 x) { return bits_f32(uint32_t(x.bits) << 16); }

FASTOPT_HD float to_f32(f16 x) {
  const uint32_t sign = uint32_t(x.bits & 0x8000u) << 16;
  const uint32_t e = (x.bits >> 10) & 0x1fu, m = x.bits & 0x3ffu;
  if (e == 31) return bits_f32(sign | 0x7f800000u | (m ? 0x400000u | (m << 13) : 0u));
  if (e == 0) {  // zero or subnormal: m * 2^-24 is exact in fp32
    const float mag = float(m) * 5.9604644775390625e-08f;
    return bits_f32(sign | f32_bits(mag));
  }
  return bits_f32(sign | ((e + 112u) << 23) | (m << 13));
}

FASTOPT_HD void from_f32(float x, float& out) { out = x; }

FASTOPT_HD void from_f32(float x, bf16& out) {
  const uint32_t u = f32_bits(x);
  if ((u & 0x7fffffffu) > 0x7f800000u) {
    out.bits = uint16_t((u >> 16) | 0x40u);
  } else {
    out.bits = uint16_t((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
  }
}

FASTOPT_HD void from_f32(float x, f16& out) {
  const uint32_t u = f32_bits(x);
  const uint32_t sign = (u >> 16) & 0x8000u, a = u & 0x7fffffffu;
  uint32_t h;
  if (a > 0x7f800000u) {
    h = 0x7e00u | ((a >> 13) & 0x3ffu);  // NaN: quiet, upper payload kept
  } else if (a >= 0x477ff000u) {
    h = 0x7c00u;  // rounds to infinity
  } else if (a >= 0x38800000u) {  // normal half
    h = (a - 0x38000000u + 0xfffu + ((a >> 13) & 1u)) >> 13;
  } else if (a > 0x33000000u) {  // subnormal half: round m * 2^(e-126) to an integer
    const uint32_t e = a >> 23, m = (a & 0x7fffffu) | 0x800000u, s = 126u - e;
    const uint32_t r = m >> s, rem = m & ((1u << s) - 1u), half = 1u << (s - 1u);
    h = r + ((rem > half || (rem == half && (r & 1u))) ? 1u : 0u);
  } else {
    h = 0;  // at most half the smallest subnormal: ties go to even zero
  }
  out.bits = uint16_t(sign | h);
}

}  // namespace fastopt

namespace fastopt {
// The DType tag of a storage type.
template <class T>
constexpr DType dtype_of = DType::f32;
template <>
constexpr DType dtype_of<f16> = DType::f16;
template <>
constexpr DType dtype_of<bf16> = DType::bf16;

// Scalar-lane storage access: one element, converted exactly to and from fp32.
template <class T>
FASTOPT_HD float load(const T* p, Lane<float>) { return to_f32(*p); }
template <class T>
FASTOPT_HD void store(T* p, float x) { from_f32(x, *p); }

// An fp32 master kept as two 16-bit halves: the high half is the bfloat16 param (the master
// truncated toward zero, which the model uses as is), the low half the remainder the optimizer
// keeps. Together they are exactly the fp32 master, at 4 bytes per param.
FASTOPT_HD float join_remainder(bf16 high, uint16_t low) { return bits_f32(uint32_t(high.bits) << 16 | low); }
FASTOPT_HD void split_remainder(float value, bf16& high, uint16_t& low) {
  const uint32_t u = f32_bits(value);
  high.bits = uint16_t(u >> 16);
  low = uint16_t(u);
}
FASTOPT_HD float load_joined(const bf16* high, const uint16_t* low, Lane<float>) { return join_remainder(*high, *low); }
FASTOPT_HD void store_split(bf16* high, uint16_t* low, float x) { split_remainder(x, *high, *low); }
}  // namespace fastopt
