// The rounding of a storage mode beyond round-to-nearest-even (convert.h), written once for
// every engine: stochastic rounding to bfloat16 and float16, and Kahan-compensated bfloat16
// params. (The fp32 master split into a bfloat16 param and its 16-bit remainder is a storage
// conversion: convert.h.)
//
// Stochastic rounding with 32 random bits r (random.h): x rounds away from zero, to the next
// representable magnitude, with probability (|x| - |truncated x|) / ulp, else toward zero: the
// expected value is x (exactly for bfloat16 and normal float16: the probability is a multiple of
// 2^-16, resp. 2^-13, drawn from that many uniform bits; within 2^-32 of a subnormal float16's
// ulp below the normal range). Magnitudes past the largest finite value round to it or to
// infinity the same way; inf stays inf; NaN stays NaN (quiet, as convert.h rounds it).
#pragma once
#include <cstdint>

#include "fastopt/numeric/convert.h"
#include "fastopt/numeric/random.h"
#include "fastopt/numeric/scalar.h"
#include "fastopt/platform.h"

namespace fastopt {

FASTOPT_HD bf16 bf16_stochastic(float x, uint32_t r) {
  const uint32_t u = f32_bits(x);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16{uint16_t((u >> 16) | 0x40u)};
  // Adding 16 uniform bits below the kept ones carries into them with probability dropped / 2^16;
  // on the magnitude (the sign bit is never reached: at most inf's bits come out).
  const uint32_t a = u & 0x7fffffffu;
  return bf16{uint16_t(((u >> 16) & 0x8000u) | ((a + (r >> 16)) >> 16))};
}

FASTOPT_HD f16 f16_stochastic(float x, uint32_t r) {
  const uint32_t u = f32_bits(x);
  const uint32_t sign = (u >> 16) & 0x8000u, a = u & 0x7fffffffu;
  uint32_t h;
  if (a > 0x7f800000u) {
    h = 0x7e00u | ((a >> 13) & 0x3ffu);  // NaN, as from_f32
  } else if (a >= 0x47800000u) {
    h = 0x7c00u;  // 2^16 and beyond: past the largest finite half, one ulp (32) away at most
  } else if (a >= 0x38800000u) {  // normal half: 13 bits dropped, 13 uniform bits added
    h = (a - 0x38000000u + (r >> 19)) >> 13;
  } else {  // subnormal half (units of 2^-24): m * 2^-s, in 32.32 fixed point, plus 32 uniform bits
    const uint32_t e = a >> 23, m = e ? (a & 0x7fffffu) | 0x800000u : a & 0x7fffffu;
    const uint32_t s = e ? 126u - e : 125u;  // (an fp32 subnormal: m * 2^-149 = m * 2^-125 units)
    const uint64_t fixed = s < 64u ? (uint64_t(m) << 32) >> s : 0u;
    h = uint32_t((fixed + r) >> 32);
  }
  return f16{uint16_t(sign | h)};
}

// Stochastic rounding of a whole lane: every lane type L has two overloads, found by argument-
// dependent lookup where a lane header adds them (here: the scalar lane; simd_avx2.h and
// simd_avx512.h: with vector integer arithmetic; pack_cuda.h: element by element):
//   lane_bits32(key, i, Lane<L>)       random::bits32(key, i + k) for each element k of a lane,
//                                      in the lane's integer form;
//   store_stochastic_bits(dst, v, r)   lane v rounded to bf16 or f16 with those bits, each
//                                      element exactly as bf16_stochastic / f16_stochastic,
//                                      stored at dst[0 .. W).
FASTOPT_HD uint32_t lane_bits32(uint64_t key, uint64_t i, Lane<float>) { return random::bits32(key, i); }
FASTOPT_HD void store_stochastic_bits(bf16* dst, float v, uint32_t r) { *dst = bf16_stochastic(v, r); }
FASTOPT_HD void store_stochastic_bits(f16* dst, float v, uint32_t r) { *dst = f16_stochastic(v, r); }

// Stores lane v at dst[0 .. W) (P = bf16 or f16), element k rounded stochastically with
// random::bits32(key, i + k): the bits of an element depend on its position only, so every
// lane type, and any split of a tensor into lanes, stores the same bits.
template <class P, class L>
FASTOPT_HD void store_stochastic_lane(P* dst, L v, uint64_t key, int64_t i) {
  store_stochastic_bits(dst, v, lane_bits32(key, uint64_t(i), Lane<L>{}));
}

// A bfloat16 param p with its compensation c (Kahan summation): the rule moved p's value to
// `value`; the change, plus what earlier roundings lost (c), is added to p, rounded to nearest
// even, and what this rounding loses is kept in c. c is itself bfloat16, so 8 bits of the lost
// part are kept: updates far below p's ulp accumulate instead of vanishing, with some drift
// (10^4 updates of 2^-13.3 from 1.0 end 2 ulps from the exact 2.0: tests/test_rounding.py).
// For any lane type L (the scalar lane, or a vector lane whose bf16 load and store are exact
// widening and rounding to nearest even): the rounded param is read back from where it was
// just stored. Where the sum is not finite (an inf or NaN param or value) the param takes the
// value as the other modes do, and the compensation restarts at 0.
template <class L>
FASTOPT_HD void kahan_store(bf16* p, bf16* c, L value) {
  const L old = load(p, Lane<L>{});
  const L change = (value - old) + load(c, Lane<L>{});
  store(p, vfinite_or(old + change, value));
  const L next = load(p, Lane<L>{});
  store(c, vfinite_or(change - (next - old), L(0.0f)));
}

FASTOPT_HD void kahan_bf16(float value, bf16& p, bf16& c) { kahan_store(&p, &c, value); }

}  // namespace fastopt
