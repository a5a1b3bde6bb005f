// The AVX-512 lane: 16 fp32 values (needs AVX-512F/BW/VL/DQ). Same operation set and the same
// IEEE results as the scalar lane in scalar.h.
#pragma once
#include <immintrin.h>

#include "fastopt/numeric/convert.h"
#include "fastopt/numeric/quantize8.h"
#include "fastopt/numeric/random.h"

namespace fastopt {

struct VecAvx512 {
  static constexpr int width = 16;
  __m512 v;
  VecAvx512() = default;
  VecAvx512(__m512 x) : v(x) {}
  VecAvx512(float s) : v(_mm512_set1_ps(s)) {}
};

FASTOPT_HD VecAvx512 operator+(VecAvx512 a, VecAvx512 b) { return _mm512_add_ps(a.v, b.v); }
FASTOPT_HD VecAvx512 operator-(VecAvx512 a, VecAvx512 b) { return _mm512_sub_ps(a.v, b.v); }
FASTOPT_HD VecAvx512 operator*(VecAvx512 a, VecAvx512 b) { return _mm512_mul_ps(a.v, b.v); }
FASTOPT_HD VecAvx512 vdiv(VecAvx512 a, VecAvx512 b) { return _mm512_div_ps(a.v, b.v); }
FASTOPT_HD VecAvx512 vfma(VecAvx512 a, VecAvx512 b, VecAvx512 c) { return _mm512_fmadd_ps(a.v, b.v, c.v); }
FASTOPT_HD VecAvx512 vsqrt(VecAvx512 a) { return _mm512_sqrt_ps(a.v); }
FASTOPT_HD VecAvx512 vmax(VecAvx512 a, VecAvx512 b) { return _mm512_max_ps(a.v, b.v); }
FASTOPT_HD VecAvx512 vmin(VecAvx512 a, VecAvx512 b) { return _mm512_min_ps(a.v, b.v); }
FASTOPT_HD VecAvx512 vabs(VecAvx512 a) { return _mm512_abs_ps(a.v); }
FASTOPT_HD VecAvx512 vfinite_or(VecAvx512 a, VecAvx512 b) {
  const __mmask16 finite = _mm512_cmp_ps_mask(_mm512_sub_ps(a.v, a.v), _mm512_setzero_ps(), _CMP_EQ_OQ);
  return _mm512_mask_blend_ps(finite, b.v, a.v);
}
FASTOPT_HD int count_nonfinite(VecAvx512 a) {
  const __m512 d = _mm512_sub_ps(a.v, a.v);
  return __builtin_popcount(unsigned(_mm512_cmp_ps_mask(d, _mm512_setzero_ps(), _CMP_NEQ_UQ)));
}
FASTOPT_HD VecAvx512 vsign(VecAvx512 a) {
  const __m512 zero = _mm512_setzero_ps();
  const __m512 r = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(a.v, zero, _CMP_GT_OQ), a.v, _mm512_set1_ps(1.0f));
  return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(a.v, zero, _CMP_LT_OQ), r, _mm512_set1_ps(-1.0f));
}

// Sums of squares of VecAvx512 values (fastopt/reduce.h): its 16 lanes as doubles,
// added to by fma (the square is exact: the same bits as scalar.h's acc + d * d).
struct SquaresAvx512 {
  __m512d lo, hi;  // lanes 0-7, 8-15
};
template <>
struct Squares<VecAvx512> {
  using type = SquaresAvx512;
};
FASTOPT_HD SquaresAvx512 add_square(VecAvx512 x, SquaresAvx512 acc) {
  const __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(x.v));
  const __m512d hi = _mm512_cvtps_pd(_mm512_extractf32x8_ps(x.v, 1));
  return {_mm512_fmadd_pd(lo, lo, acc.lo), _mm512_fmadd_pd(hi, hi, acc.hi)};
}
FASTOPT_HD void store(double* p, SquaresAvx512 x) {
  _mm512_storeu_pd(p, x.lo);
  _mm512_storeu_pd(p + 8, x.hi);
}

FASTOPT_HD VecAvx512 load(const float* p, Lane<VecAvx512>) { return _mm512_loadu_ps(p); }
FASTOPT_HD VecAvx512 load(const f16* p, Lane<VecAvx512>) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
FASTOPT_HD VecAvx512 load(const bf16* p, Lane<VecAvx512>) {
  const __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
}

FASTOPT_HD void store(float* p, VecAvx512 x) { _mm512_storeu_ps(p, x.v); }
FASTOPT_HD void store(f16* p, VecAvx512 x) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p),
                      _mm512_cvtps_ph(x.v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
FASTOPT_HD void store(bf16* p, VecAvx512 x) {
  // Integer round-to-nearest-even rather than VCVTNEPS2BF16, which flushes subnormals.
  const __m512i u = _mm512_castps_si512(x.v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  const __m512i rounded =
      _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)), lsb), 16);
  const __m512i quiet = _mm512_or_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
  const __mmask16 nan = _mm512_cmp_ps_mask(x.v, x.v, _CMP_UNORD_Q);
  const __m512i r = _mm512_mask_blend_epi32(nan, rounded, quiet);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(r));
}

// An fp32 master as a bfloat16 high half and a 16-bit low half (convert.h).
FASTOPT_HD VecAvx512 load_joined(const bf16* high, const uint16_t* low, Lane<VecAvx512>) {
  const __m512i h = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(high)));
  const __m512i l = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(low)));
  return _mm512_castsi512_ps(_mm512_or_si512(_mm512_slli_epi32(h, 16), l));
}
FASTOPT_HD void store_split(bf16* high, uint16_t* low, VecAvx512 x) {
  const __m512i u = _mm512_castps_si512(x.v);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(high), _mm512_cvtepi32_epi16(_mm512_srli_epi32(u, 16)));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(low), _mm512_cvtepi32_epi16(u));  // (truncates: the low half)
}

// 8-bit state (quantize8.h): a gather from the map; quantize8.h's arithmetic, lane by lane.
FASTOPT_HD VecAvx512 load_q8(const uint8_t* codes, const quant::Tables& t, VecAvx512 absmax, Lane<VecAvx512>) {
  const __m512i c = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(codes)));
  return _mm512_mul_ps(_mm512_i32gather_ps(c, t.map, 4), absmax.v);
}
// The quantizer's tables in registers, for a block's worth of store_q8.
struct QuantizerAvx512 {
  __m512i slot_lo, slot_hi;
  __m512 bound_lo, bound_hi, scale, shift, last;
  bool is_signed;
};
inline QuantizerAvx512 quantizer(const quant::Tables& t, Lane<VecAvx512>) {
  constexpr __mmask16 slots = (1 << quant::kSlots) - 1;
  return {_mm512_loadu_si512(t.binade_slot),  _mm512_loadu_si512(t.binade_slot + 16),
          _mm512_loadu_ps(t.binade_bound),    _mm512_loadu_ps(t.binade_bound + 16),
          _mm512_maskz_loadu_ps(slots, t.scale), _mm512_maskz_loadu_ps(slots, t.shift),
          _mm512_maskz_loadu_ps(slots, t.last),  t.is_signed};
}
// The codes of n vectors (in the low byte of each 32-bit lane): quantize8.h's arithmetic with the
// slot from the binade tables, and without a branch for the NaNs: a NaN stays NaN up to the
// conversion, whose 0x80000000 has the low byte 0 (0 + 127 signed): zero's code, as
// quant::quantize gives it. Each step is taken for every vector before the next, so that the
// core has n independent chains at hand.
template <int n>
FASTOPT_HD void codes_of(const __m512 (&y)[n], const QuantizerAvx512& q, __m512i (&out)[n]) {
  __m512 a[n], m[n];
  __m512i s[n];
  for (int k = 0; k < n; ++k) a[k] = _mm512_abs_ps(y[k]);
  for (int k = 0; k < n; ++k) {
    // The binade: the exponent less 96, saturated at 0 (an unsigned 16-bit subtraction on the
    // exponent's half of the lane), at most 31 (inf and NaN too).
    const __m512i e = _mm512_subs_epu16(_mm512_castps_si512(a[k]), _mm512_set1_epi32((127 - 31) << 23));
    s[k] = _mm512_min_epu32(_mm512_srli_epi32(e, 23), _mm512_set1_epi32(31));
  }
  for (int k = 0; k < n; ++k) {
    const __m512 bound = _mm512_permutex2var_ps(q.bound_lo, s[k], q.bound_hi);
    const __m512i slot = _mm512_permutex2var_epi32(q.slot_lo, s[k], q.slot_hi);
    s[k] = _mm512_mask_add_epi32(slot, _mm512_cmp_ps_mask(a[k], bound, _CMP_GT_OQ), slot, _mm512_set1_epi32(1));
  }
  for (int k = 0; k < n; ++k) {
    const __m512 v = _mm512_fmadd_ps(a[k], _mm512_permutexvar_ps(s[k], q.scale), _mm512_permutexvar_ps(s[k], q.shift));
    m[k] = _mm512_min_ps(_mm512_permutexvar_ps(s[k], q.last), v);  // (min's second operand for a NaN)
  }
  if (q.is_signed) {
    // y's sign on the magnitude code, at least -127: 127 - min(m, 127) below zero, 127 + m
    // above, by one addition (max, as min, passes a NaN through as its second operand).
    for (int k = 0; k < n; ++k) {
      const __m512i sign = _mm512_set1_epi32(int(0x80000000u));  // m | (y & sign):
      m[k] = _mm512_castsi512_ps(
          _mm512_ternarylogic_epi32(_mm512_castps_si512(m[k]), _mm512_castps_si512(y[k]), sign, 0xf8));
      m[k] = _mm512_max_ps(_mm512_set1_ps(-127.0f), m[k]);
    }
    for (int k = 0; k < n; ++k) out[k] = _mm512_add_epi32(_mm512_cvttps_epi32(m[k]), _mm512_set1_epi32(127));
  } else {
    for (int k = 0; k < n; ++k) out[k] = _mm512_cvttps_epi32(m[k]);
  }
}
FASTOPT_HD void store_q8(uint8_t* codes, VecAvx512 y, const QuantizerAvx512& q) {
  __m512i c[1];
  codes_of<1>({y.v}, q, c);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(codes), _mm512_cvtepi32_epi8(c[0]));
}
// The codes of 64 values, x times inv, in one store: the low bytes packed by saturating packs
// (in lane order) and put in order by one permute. (Measured in cache on one core of the 2-core
// AVX-512 machine: 0.18 and 0.22 ns per value, unsigned and signed map, where store_q8 vector by
// vector took 0.22 and 0.27.)
inline void store_q8_chunk(uint8_t* codes, const float* x, float inv, const QuantizerAvx512& q, Lane<VecAvx512>) {
  __m512 y[4];
  __m512i c[4];
  for (int k = 0; k < 4; ++k) y[k] = _mm512_mul_ps(_mm512_loadu_ps(x + 16 * k), _mm512_set1_ps(inv));
  codes_of<4>(y, q, c);
  for (int k = 0; k < 4; ++k) c[k] = _mm512_and_si512(c[k], _mm512_set1_epi32(0xff));
  const __m512i bytes = _mm512_packus_epi16(_mm512_packus_epi32(c[0], c[1]), _mm512_packus_epi32(c[2], c[3]));
  // (each 128-bit lane holds 4 codes of each vector)
  const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  _mm512_storeu_si512(codes, _mm512_permutexvar_epi32(order, bytes));
}

// Whether this CPU has AVX512-VBMI (byte permutes): 8-bit state then dequantizes without gathers.
inline bool has_vbmi() {
  static const bool vbmi = __builtin_cpu_supports("avx512vbmi");
  return vbmi;
}
// VPERMT2B (AVX512-VBMI): byte j of the result is byte index[j] % 128 of hi:lo. In assembly, as
// the kernels are compiled for AVX-512 F/BW/VL/DQ alone (the compiler refuses the intrinsic
// there); called only where has_vbmi(), and volatile so that the compiler never moves it ahead
// of that test (on a CPU without VBMI it would fault).
inline __m512i permute_bytes(__m512i lo, __m512i index, __m512i hi) {
  __asm__ volatile("vpermt2b %2, %1, %0" : "+v"(lo) : "v"(index), "v"(hi));
  return lo;
}
// The byte and word orders that interleave four byte planes into float32 lanes.
struct PlaneOrder {
  alignas(64) uint8_t pairs[2][64];  // bytes j of two sources side by side: [j, 64 + j] from j = 0 or 32
  alignas(64) uint16_t quads[2][32];  // words j of two sources side by side, from j = 0 or 16
};
constexpr PlaneOrder plane_order() {
  PlaneOrder o{};
  for (int h = 0; h < 2; ++h) {
    for (int j = 0; j < 32; ++j) o.pairs[h][2 * j] = uint8_t(32 * h + j), o.pairs[h][2 * j + 1] = uint8_t(64 + 32 * h + j);
    for (int j = 0; j < 16; ++j) o.quads[h][2 * j] = uint16_t(16 * h + j), o.quads[h][2 * j + 1] = uint16_t(16 * h + 32 + j);
  }
  return o;
}
inline constexpr PlaneOrder kPlaneOrder = plane_order();

// 64 codes of 8-bit state dequantized into four vectors. With VBMI each byte of the codes' map
// values is looked up as a byte (two 128-entry lookups and a blend on the code's top bit) and the
// four bytes interleaved into float32 lanes, in order; without, by gathers. The same values as
// load_q8.
[[gnu::always_inline]] inline void load_q8_chunk(const uint8_t* codes, const quant::Tables& t, float absmax,
                                                 VecAvx512 (&out)[4]) {
  const __m512 scale = _mm512_set1_ps(absmax);
  if (!has_vbmi()) {
    for (int k = 0; k < 4; ++k) out[k] = load_q8(codes + 16 * k, t, scale, Lane<VecAvx512>{});
    return;
  }
  const __m512i c = _mm512_loadu_si512(codes);
  const __mmask64 upper = _mm512_movepi8_mask(c);  // codes 128 .. 255
  __m512i byte[4];
  for (int b = 0; b < 4; ++b) {
    const uint8_t* plane = t.map_bytes[b];
    const __m512i low = permute_bytes(_mm512_loadu_si512(plane), c, _mm512_loadu_si512(plane + 64));
    const __m512i high = permute_bytes(_mm512_loadu_si512(plane + 128), c, _mm512_loadu_si512(plane + 192));
    byte[b] = _mm512_mask_blend_epi8(upper, low, high);
  }
  for (int h = 0; h < 2; ++h) {
    const __m512i pair = _mm512_load_si512(kPlaneOrder.pairs[h]);
    const __m512i w01 = permute_bytes(byte[0], pair, byte[1]), w23 = permute_bytes(byte[2], pair, byte[3]);
    for (int k = 0; k < 2; ++k) {
      const __m512i v = _mm512_permutex2var_epi16(w01, _mm512_load_si512(kPlaneOrder.quads[k]), w23);
      out[2 * h + k] = _mm512_mul_ps(_mm512_castsi512_ps(v), scale);
    }
  }
}

// Stochastic rounding (rounding.h): the random bits of 16 consecutive elements, and the roundings
// of bf16_stochastic and f16_stochastic in 32-bit integer arithmetic, bit for bit.

// random::mix64 of each 64-bit element (VPMULLQ: AVX512DQ, which the avx512 target requires).
FASTOPT_HD __m512i mix64_avx512(__m512i z) {
  z = _mm512_mullo_epi64(_mm512_xor_si512(z, _mm512_srli_epi64(z, 30)), _mm512_set1_epi64(int64_t(random::kMix1)));
  z = _mm512_mullo_epi64(_mm512_xor_si512(z, _mm512_srli_epi64(z, 27)), _mm512_set1_epi64(int64_t(random::kMix2)));
  return _mm512_xor_si512(z, _mm512_srli_epi64(z, 31));
}

// random::bits32(key, i + k) in 32-bit element k. The SplitMix64 states of the even and the
// odd elements go in two vectors, so that their high halves interleave by one blend.
FASTOPT_HD __m512i lane_bits32(uint64_t key, uint64_t i, Lane<VecAvx512>) {
  const auto g = [](uint64_t k) { return int64_t(k * random::kGamma); };
  const __m512i state = _mm512_set1_epi64(int64_t(key + (i + 1) * random::kGamma));
  const __m512i even = mix64_avx512(
      _mm512_add_epi64(state, _mm512_set_epi64(g(14), g(12), g(10), g(8), g(6), g(4), g(2), 0)));
  const __m512i odd = mix64_avx512(
      _mm512_add_epi64(state, _mm512_set_epi64(g(15), g(13), g(11), g(9), g(7), g(5), g(3), g(1))));
  return _mm512_mask_blend_epi32(0xaaaa, _mm512_srli_epi64(even, 32), odd);
}

// a > c, unsigned.
FASTOPT_HD __mmask16 above_avx512(__m512i a, uint32_t c) {
  return _mm512_cmpgt_epu32_mask(a, _mm512_set1_epi32(int(c)));
}

FASTOPT_HD void store_stochastic_bits(bf16* p, VecAvx512 x, __m512i r) {
  const __m512i u = _mm512_castps_si512(x.v);
  const __m512i a = _mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff));
  // The sum of magnitude and bits stays below 2^31, so adding to u itself keeps the sign bit.
  const __m512i rounded = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_srli_epi32(r, 16)), 16);
  const __m512i quiet = _mm512_or_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
  const __m512i h = _mm512_mask_blend_epi32(above_avx512(a, 0x7f800000u), rounded, quiet);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(h));
}

// f16_stochastic of magnitudes a (fp32 bits) below the normal halves: m * 2^-s units of 2^-24,
// split at the binary point into whole (m >> s) and the 32 bits below it, into which the bits r
// are added: whole + the carry. Variable shifts by 32 or more give 0, as every out-of-range
// shift here needs.
FASTOPT_HD __m512i f16_subnormal_avx512(__m512i a, __m512i r) {
  const __m512i e = _mm512_srli_epi32(a, 23);
  const __m512i fraction = _mm512_and_si512(a, _mm512_set1_epi32(0x7fffff));
  const __mmask16 normal_f32 = _mm512_test_epi32_mask(e, e);  // (an fp32 subnormal: no implicit bit)
  const __m512i m = _mm512_mask_or_epi32(fraction, normal_f32, fraction, _mm512_set1_epi32(0x800000));
  const __m512i s = _mm512_sub_epi32(_mm512_set1_epi32(126), _mm512_max_epi32(e, _mm512_set1_epi32(1)));
  const __m512i thirty_two = _mm512_set1_epi32(32);
  const __m512i below = _mm512_or_si512(_mm512_sllv_epi32(m, _mm512_sub_epi32(thirty_two, s)),
                                        _mm512_srlv_epi32(m, _mm512_sub_epi32(s, thirty_two)));
  const __m512i whole = _mm512_srlv_epi32(m, s);
  const __mmask16 carry = _mm512_cmplt_epu32_mask(_mm512_add_epi32(below, r), below);
  return _mm512_mask_add_epi32(whole, carry, whole, _mm512_set1_epi32(1));
}

FASTOPT_HD void store_stochastic_bits(f16* p, VecAvx512 x, __m512i r) {
  const __m512i u = _mm512_castps_si512(x.v);
  const __m512i a = _mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff));
  // Normal halves: 13 bits dropped, 13 uniform bits added.
  __m512i h = _mm512_srli_epi32(
      _mm512_add_epi32(_mm512_sub_epi32(a, _mm512_set1_epi32(0x38000000)), _mm512_srli_epi32(r, 19)), 13);
  // Subnormal halves cost as much as the rest and are rare in params: only for lanes that hold one.
  const __mmask16 tiny = _mm512_cmplt_epu32_mask(a, _mm512_set1_epi32(0x38800000));
  if (tiny) h = _mm512_mask_blend_epi32(tiny, h, f16_subnormal_avx512(a, r));
  h = _mm512_mask_blend_epi32(above_avx512(a, 0x477fffffu), h, _mm512_set1_epi32(0x7c00));  // 2^16 and beyond
  const __m512i payload = _mm512_and_si512(_mm512_srli_epi32(a, 13), _mm512_set1_epi32(0x3ff));
  const __m512i nan = _mm512_or_si512(_mm512_set1_epi32(0x7e00), payload);  // (quiet, as from_f32)
  h = _mm512_mask_blend_epi32(above_avx512(a, 0x7f800000u), h, nan);
  const __m512i sign = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x8000));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(_mm512_or_si512(h, sign)));
}

}  // namespace fastopt
