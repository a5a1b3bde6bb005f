// The AVX2 lane: 8 fp32 values (needs AVX2, FMA and F16C). Same operation set and the same
// IEEE results as the scalar lane in scalar.h.
#pragma once
#include <immintrin.h>

#include "fastopt/numeric/convert.h"
#include "fastopt/numeric/quantize8.h"
#include "fastopt/numeric/random.h"

namespace fastopt {

struct VecAvx2 {
  static constexpr int width = 8;
  __m256 v;
  VecAvx2() = default;
  VecAvx2(__m256 x) : v(x) {}
  VecAvx2(float s) : v(_mm256_set1_ps(s)) {}
};

FASTOPT_HD VecAvx2 operator+(VecAvx2 a, VecAvx2 b) { return _mm256_add_ps(a.v, b.v); }
FASTOPT_HD VecAvx2 operator-(VecAvx2 a, VecAvx2 b) { return _mm256_sub_ps(a.v, b.v); }
FASTOPT_HD VecAvx2 operator*(VecAvx2 a, VecAvx2 b) { return _mm256_mul_ps(a.v, b.v); }
FASTOPT_HD VecAvx2 vdiv(VecAvx2 a, VecAvx2 b) { return _mm256_div_ps(a.v, b.v); }
FASTOPT_HD VecAvx2 vfma(VecAvx2 a, VecAvx2 b, VecAvx2 c) { return _mm256_fmadd_ps(a.v, b.v, c.v); }
FASTOPT_HD VecAvx2 vsqrt(VecAvx2 a) { return _mm256_sqrt_ps(a.v); }
FASTOPT_HD VecAvx2 vmax(VecAvx2 a, VecAvx2 b) { return _mm256_max_ps(a.v, b.v); }
FASTOPT_HD VecAvx2 vmin(VecAvx2 a, VecAvx2 b) { return _mm256_min_ps(a.v, b.v); }
FASTOPT_HD VecAvx2 vabs(VecAvx2 a) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), a.v); }
FASTOPT_HD int count_nonfinite(VecAvx2 a) {
  const __m256 d = _mm256_sub_ps(a.v, a.v);
  return __builtin_popcount(unsigned(_mm256_movemask_ps(_mm256_cmp_ps(d, _mm256_setzero_ps(), _CMP_NEQ_UQ))));
}
FASTOPT_HD VecAvx2 vfinite_or(VecAvx2 a, VecAvx2 b) {
  const __m256 finite = _mm256_cmp_ps(_mm256_sub_ps(a.v, a.v), _mm256_setzero_ps(), _CMP_EQ_OQ);
  return _mm256_blendv_ps(b.v, a.v, finite);
}
FASTOPT_HD VecAvx2 vsign(VecAvx2 a) {
  const __m256 zero = _mm256_setzero_ps();
  const __m256 r = _mm256_blendv_ps(a.v, _mm256_set1_ps(1.0f), _mm256_cmp_ps(a.v, zero, _CMP_GT_OQ));
  return _mm256_blendv_ps(r, _mm256_set1_ps(-1.0f), _mm256_cmp_ps(a.v, zero, _CMP_LT_OQ));
}

// Sums of squares of VecAvx2 values (fastopt/reduce.h): its 8 lanes as doubles,
// added to by fma (the square is exact: the same bits as scalar.h's acc + d * d).
struct SquaresAvx2 {
  __m256d lo, hi;  // lanes 0-3, 4-7
};
template <>
struct Squares<VecAvx2> {
  using type = SquaresAvx2;
};
FASTOPT_HD SquaresAvx2 add_square(VecAvx2 x, SquaresAvx2 acc) {
  const __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(x.v));
  const __m256d hi = _mm256_cvtps_pd(_mm256_extractf128_ps(x.v, 1));
  return {_mm256_fmadd_pd(lo, lo, acc.lo), _mm256_fmadd_pd(hi, hi, acc.hi)};
}
FASTOPT_HD void store(double* p, SquaresAvx2 x) {
  _mm256_storeu_pd(p, x.lo);
  _mm256_storeu_pd(p + 4, x.hi);
}

FASTOPT_HD VecAvx2 load(const float* p, Lane<VecAvx2>) { return _mm256_loadu_ps(p); }
FASTOPT_HD VecAvx2 load(const f16* p, Lane<VecAvx2>) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
FASTOPT_HD VecAvx2 load(const bf16* p, Lane<VecAvx2>) {
  const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
}

FASTOPT_HD void store(float* p, VecAvx2 x) { _mm256_storeu_ps(p, x.v); }
FASTOPT_HD void store(f16* p, VecAvx2 x) {
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p),
                   _mm256_cvtps_ph(x.v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
FASTOPT_HD void store(bf16* p, VecAvx2 x) {
  const __m256i u = _mm256_castps_si256(x.v);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  const __m256i rounded =
      _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7fff)), lsb), 16);
  const __m256i quiet = _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x40));
  const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(x.v, x.v, _CMP_UNORD_Q));
  const __m256i r = _mm256_blendv_epi8(rounded, quiet, nan);
  const __m128i packed = _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), packed);
}

// An fp32 master as a bfloat16 high half and a 16-bit low half (convert.h).
FASTOPT_HD VecAvx2 load_joined(const bf16* high, const uint16_t* low, Lane<VecAvx2>) {
  // Interleaved as 16-bit words, low then high: the little-endian fp32 of each pair.
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(high));
  const __m128i l = _mm_loadu_si128(reinterpret_cast<const __m128i*>(low));
  return _mm256_castsi256_ps(_mm256_set_m128i(_mm_unpackhi_epi16(l, h), _mm_unpacklo_epi16(l, h)));
}
FASTOPT_HD void store_split(bf16* high, uint16_t* low, VecAvx2 x) {
  // In each 128-bit half, the high 16 bits of its four lanes to bytes 0-7 and the low ones to
  // 8-15; then the 64-bit quarters reordered: the eight high halves, the eight low ones.
  const __m256i halves = _mm256_setr_epi8(2, 3, 6, 7, 10, 11, 14, 15, 0, 1, 4, 5, 8, 9, 12, 13,
                                          2, 3, 6, 7, 10, 11, 14, 15, 0, 1, 4, 5, 8, 9, 12, 13);
  const __m256i v = _mm256_permute4x64_epi64(_mm256_shuffle_epi8(_mm256_castps_si256(x.v), halves),
                                             _MM_SHUFFLE(3, 1, 2, 0));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(high), _mm256_castsi256_si128(v));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(low), _mm256_extracti128_si256(v, 1));
}

// 8-bit state (quantize8.h): a gather from the map; quantize8.h's arithmetic, lane by lane.
FASTOPT_HD VecAvx2 load_q8(const uint8_t* codes, const quant::Tables& t, VecAvx2 absmax, Lane<VecAvx2>) {
  const __m256i c = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(codes)));
  return _mm256_mul_ps(_mm256_i32gather_ps(t.map, c, 4), absmax.v);
}
// The quantizer's tables in registers, for a block's worth of store_q8. A permute holds 8
// slots: one's (the last) is a blend.
constexpr int kSlotsAvx2 = quant::kSlots - 1;
struct QuantizerAvx2 {
  __m256 lower[kSlotsAvx2], scale, shift, last, top;
  __m256i one;
  bool is_signed;
};
inline QuantizerAvx2 quantizer(const quant::Tables& t, Lane<VecAvx2>) {
  QuantizerAvx2 q;
  for (int j = 1; j < kSlotsAvx2; ++j) q.lower[j] = _mm256_set1_ps(t.lower[j]);
  q.scale = _mm256_loadu_ps(t.scale), q.shift = _mm256_loadu_ps(t.shift);
  q.last = _mm256_loadu_ps(t.last);
  q.top = _mm256_set1_ps(t.lower[kSlotsAvx2]), q.one = _mm256_set1_epi32(t.one), q.is_signed = t.is_signed;
  return q;
}
FASTOPT_HD void store_q8(uint8_t* codes, VecAvx2 y, const QuantizerAvx2& q) {
  const __m256 a = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), y.v);
  __m256i s = _mm256_setzero_si256();
  for (int j = 1; j < kSlotsAvx2; ++j) {  // (a true compare is -1)
    s = _mm256_sub_epi32(s, _mm256_castps_si256(_mm256_cmp_ps(a, q.lower[j], _CMP_GT_OQ)));
  }
  const __m256 v = _mm256_fmadd_ps(a, _mm256_permutevar8x32_ps(q.scale, s), _mm256_permutevar8x32_ps(q.shift, s));
  __m256i m = _mm256_cvttps_epi32(_mm256_min_ps(v, _mm256_permutevar8x32_ps(q.last, s)));
  m = _mm256_blendv_epi8(m, q.one, _mm256_castps_si256(_mm256_cmp_ps(a, q.top, _CMP_GT_OQ)));
  if (q.is_signed) {
    const __m256i c127 = _mm256_set1_epi32(127);
    m = _mm256_blendv_epi8(_mm256_add_epi32(c127, m), _mm256_sub_epi32(c127, _mm256_min_epi32(m, c127)),
                           _mm256_srai_epi32(_mm256_castps_si256(y.v), 31));
  }
  const __m128i w = _mm_packus_epi32(_mm256_castsi256_si128(m), _mm256_extracti128_si256(m, 1));
  _mm_storel_epi64(reinterpret_cast<__m128i*>(codes), _mm_packus_epi16(w, w));
}

// Stochastic rounding (rounding.h): the random bits of 8 consecutive elements, and the roundings
// of bf16_stochastic and f16_stochastic in 32-bit integer arithmetic, bit for bit.

// a * c modulo 2^64 in each 64-bit element (AVX2 has no 64-bit multiply): a_lo * c_lo, plus the
// cross products a_lo * c_hi + a_hi * c_lo in the high half, both from one 32-bit multiply by
// (c_hi, c_lo). (a_hi * c_hi falls past bit 64.)
FASTOPT_HD __m256i mul64_avx2(__m256i a, uint64_t c) {
  const __m256i cross = _mm256_mullo_epi32(a, _mm256_set1_epi64x(int64_t(c << 32 | c >> 32)));
  const __m256i high = _mm256_slli_epi64(_mm256_add_epi64(cross, _mm256_srli_epi64(cross, 32)), 32);
  // (mul_epu32 reads the low halves)
  return _mm256_add_epi64(_mm256_mul_epu32(a, _mm256_set1_epi64x(int64_t(c))), high);
}

// random::mix64 of each 64-bit element.
FASTOPT_HD __m256i mix64_avx2(__m256i z) {
  z = mul64_avx2(_mm256_xor_si256(z, _mm256_srli_epi64(z, 30)), random::kMix1);
  z = mul64_avx2(_mm256_xor_si256(z, _mm256_srli_epi64(z, 27)), random::kMix2);
  return _mm256_xor_si256(z, _mm256_srli_epi64(z, 31));
}

// random::bits32(key, i + k) in 32-bit element k. The SplitMix64 states of the even and the
// odd elements go in two vectors, so that their high halves interleave by one blend.
FASTOPT_HD __m256i lane_bits32(uint64_t key, uint64_t i, Lane<VecAvx2>) {
  const auto g = [](uint64_t k) { return int64_t(k * random::kGamma); };
  const __m256i state = _mm256_set1_epi64x(int64_t(key + (i + 1) * random::kGamma));
  const __m256i even = mix64_avx2(_mm256_add_epi64(state, _mm256_setr_epi64x(0, g(2), g(4), g(6))));
  const __m256i odd = mix64_avx2(_mm256_add_epi64(state, _mm256_setr_epi64x(g(1), g(3), g(5), g(7))));
  return _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xaa);
}

// Eight 16-bit results (each 32-bit element at most 0xffff) stored in order.
FASTOPT_HD void store_u16_avx2(uint16_t* p, __m256i h) {
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p),
                   _mm_packus_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1)));
}

// a > c for non-negative 32-bit a, c (signed compares suffice for magnitudes of fp32 bits).
FASTOPT_HD __m256i above_avx2(__m256i a, uint32_t c) { return _mm256_cmpgt_epi32(a, _mm256_set1_epi32(int(c))); }

FASTOPT_HD void store_stochastic_bits(bf16* p, VecAvx2 x, __m256i r) {
  const __m256i u = _mm256_castps_si256(x.v);
  const __m256i a = _mm256_and_si256(u, _mm256_set1_epi32(0x7fffffff));
  // The sum of magnitude and bits stays below 2^31, so adding to u itself keeps the sign bit.
  const __m256i rounded = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_srli_epi32(r, 16)), 16);
  const __m256i quiet = _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x40));
  store_u16_avx2(reinterpret_cast<uint16_t*>(p), _mm256_blendv_epi8(rounded, quiet, above_avx2(a, 0x7f800000u)));
}

// f16_stochastic of magnitudes a (fp32 bits) below the normal halves: m * 2^-s units of 2^-24,
// split at the binary point into whole (m >> s) and the 32 bits below it, into which the bits r
// are added: whole + the carry. Variable shifts by 32 or more give 0, as every out-of-range
// shift here needs.
FASTOPT_HD __m256i f16_subnormal_avx2(__m256i a, __m256i r) {
  const __m256i e = _mm256_srli_epi32(a, 23);
  const __m256i zero_e = _mm256_cmpeq_epi32(e, _mm256_setzero_si256());  // (an fp32 subnormal: no implicit bit)
  const __m256i m = _mm256_or_si256(_mm256_and_si256(a, _mm256_set1_epi32(0x7fffff)),
                                    _mm256_andnot_si256(zero_e, _mm256_set1_epi32(0x800000)));
  const __m256i s = _mm256_sub_epi32(_mm256_set1_epi32(126), _mm256_max_epi32(e, _mm256_set1_epi32(1)));
  const __m256i thirty_two = _mm256_set1_epi32(32);
  const __m256i below = _mm256_or_si256(_mm256_sllv_epi32(m, _mm256_sub_epi32(thirty_two, s)),
                                        _mm256_srlv_epi32(m, _mm256_sub_epi32(s, thirty_two)));
  const __m256i sum = _mm256_add_epi32(below, r);
  const __m256i bias = _mm256_set1_epi32(INT32_MIN);  // unsigned sum < below (a carry) as a signed compare
  const __m256i carry = _mm256_cmpgt_epi32(_mm256_xor_si256(below, bias), _mm256_xor_si256(sum, bias));
  return _mm256_sub_epi32(_mm256_srlv_epi32(m, s), carry);  // (carry is -1 where set)
}

FASTOPT_HD void store_stochastic_bits(f16* p, VecAvx2 x, __m256i r) {
  const __m256i u = _mm256_castps_si256(x.v);
  const __m256i a = _mm256_and_si256(u, _mm256_set1_epi32(0x7fffffff));
  // Normal halves: 13 bits dropped, 13 uniform bits added.
  __m256i h = _mm256_srli_epi32(
      _mm256_add_epi32(_mm256_sub_epi32(a, _mm256_set1_epi32(0x38000000)), _mm256_srli_epi32(r, 19)), 13);
  // Subnormal halves cost as much as the rest and are rare in params: only for lanes that hold one.
  const __m256i tiny = _mm256_cmpgt_epi32(_mm256_set1_epi32(0x38800000), a);
  if (!_mm256_testz_si256(tiny, tiny)) h = _mm256_blendv_epi8(h, f16_subnormal_avx2(a, r), tiny);
  h = _mm256_blendv_epi8(h, _mm256_set1_epi32(0x7c00), above_avx2(a, 0x477fffffu));  // 2^16 and beyond
  const __m256i payload = _mm256_and_si256(_mm256_srli_epi32(a, 13), _mm256_set1_epi32(0x3ff));
  const __m256i nan = _mm256_or_si256(_mm256_set1_epi32(0x7e00), payload);  // (quiet, as from_f32)
  h = _mm256_blendv_epi8(h, nan, above_avx2(a, 0x7f800000u));
  const __m256i sign = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x8000));
  store_u16_avx2(reinterpret_cast<uint16_t*>(p), _mm256_or_si256(h, sign));
}

}  // namespace fastopt
