// The AVX-512 lane: 16 fp32 values (needs AVX-512F/BW/VL). Same operation set and the same
// IEEE results as the scalar lane in scalar.h.
#pragma once
#include <immintrin.h>

#include "fastopt/numeric/convert.h"
#include "fastopt/numeric/quantize8.h"

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

// 8-bit state (quantize8.h): a gather from the map, and one from the magnitude buckets.
FASTOPT_HD VecAvx512 load_q8(const uint8_t* codes, const quant::Tables& t, VecAvx512 absmax, Lane<VecAvx512>) {
  const __m512i c = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(codes)));
  return _mm512_mul_ps(_mm512_i32gather_ps(c, t.map, 4), absmax.v);
}
FASTOPT_HD void store_q8(uint8_t* codes, VecAvx512 y, const quant::Tables& t) {
  const __m512i u = _mm512_castps_si512(y.v), low = _mm512_set1_epi32(0xffff);
  const __m512i a = _mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff));
  __m512i j = _mm512_sub_epi32(_mm512_srli_epi32(a, 16), _mm512_set1_epi32(int(quant::kBucketBase)));
  j = _mm512_min_epi32(_mm512_max_epi32(j, _mm512_setzero_si512()), _mm512_set1_epi32(quant::kBuckets - 1));
  const __m512i e = _mm512_i32gather_epi32(j, t.bucket, 4);
  const __mmask16 up = _mm512_cmpgt_epi32_mask(_mm512_and_si512(a, low), _mm512_and_si512(e, low));
  const __m512i base = _mm512_srli_epi32(e, 16);
  __m512i m = _mm512_mask_add_epi32(base, up, base, _mm512_set1_epi32(1));
  if (t.is_signed) {
    const __m512i c127 = _mm512_set1_epi32(127);
    const __mmask16 neg = _mm512_cmplt_epi32_mask(u, _mm512_setzero_si512());
    m = _mm512_mask_sub_epi32(_mm512_add_epi32(c127, m), neg, c127, _mm512_min_epi32(m, c127));
  }
  _mm_storeu_si128(reinterpret_cast<__m128i*>(codes), _mm512_cvtepi32_epi8(m));
}

}  // namespace fastopt
