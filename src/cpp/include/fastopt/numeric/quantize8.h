// 8-bit block-wise quantization of optimizer state (Dettmers, Lewis, Shleifer and Zettlemoyer,
// "8-bit Optimizers via Block-wise Quantization", ICLR 2022), written once for every engine.
//
// A state tensor is cut into blocks of kQuantBlock elements from its start; each block keeps its
// absolute maximum (float32) and one byte per element: the index of the value of the dynamic
// map nearest to x / absmax. The dynamic map (dynamic tree quantization: Dettmers 2015, "8-Bit
// Approximations for Parallelism in Deep Learning"; its 2022 form above) spends its codes on
// magnitudes by decimal exponent: for each of 10^-6 .. 10^0, linearly spaced fractions of
// (0.1, 1] times it, twice as many at each larger exponent; plus 0 and 1. A signed map (first
// moments, momentum buffers) has both signs; an unsigned one (second moments, never negative)
// twice the fractions, at the same 256 codes.
#pragma once
#include <cstdint>

#include "fastopt/numeric/convert.h"
#include "fastopt/platform.h"

namespace fastopt::quant {

constexpr int64_t kQuantBlock = 2048;  // elements per absmax: reduce.h's block
constexpr int kMapSize = 256;

// The 256 values of the dynamic map, ascending, in (-1, 1] (signed: 127 negative values, 0 and
// 128 positive ones) or [0, 1] (unsigned): for i = 0 .. 6, the midpoints of the 2^i (unsigned:
// 2^(i+1)) intervals between evenly spaced points of [0.1, 1], times 10^(i - 6), and their
// negatives where signed; then 0 and 1. Computed in double, each rounded once to float.
inline void dynamic_map(bool is_signed, float (&out)[kMapSize]) {
  double v[kMapSize];
  int n = 0;
  for (int i = 0; i < 7; ++i) {
    const int points = (is_signed ? (1 << i) : (2 << i)) + 1;
    double scale = 1.0;
    for (int k = i; k < 6; ++k) scale /= 10.0;
    for (int p = 0; p + 1 < points; ++p) {
      const double a = 0.1 + 0.9 * p / (points - 1), b = 0.1 + 0.9 * (p + 1) / (points - 1);
      const double mid = scale * (a + b) / 2;
      v[n++] = mid;
      if (is_signed) v[n++] = -mid;
    }
  }
  v[n++] = 0.0;
  v[n++] = 1.0;  // (n == kMapSize)
  for (int i = 1; i < kMapSize; ++i) {  // insertion sort: 256 values, once
    const double x = v[i];
    int j = i - 1;
    for (; j >= 0 && v[j] > x; --j) v[j + 1] = v[j];
    v[j + 1] = x;
  }
  for (int i = 0; i < kMapSize; ++i) out[i] = float(v[i]);
}

// Quantization in one table lookup: the code of y is the number of thresholds (midpoints of
// adjacent map values, exact) below it, so it is the nearest map value, ties toward zero. The
// thresholds are counted on |y|'s magnitude code, read from buckets that are the bfloat16
// intervals of magnitudes from 2^-23 (below every threshold) to 1: no bucket holds two of them
// (the map's closest values are 0.9/128 apart near 1, buckets there 2^-8 wide). A bucket's entry
// is the magnitude code at its start (high 16 bits) and the low 16 bits of its threshold
// (0xffff for none): a magnitude in it is one code higher where its low bits are greater. The
// vector lanes (simd_*.h) compute exactly this, with gathers.
constexpr uint32_t kBucketBase = 0x3400;  // bits >> 16 of 2^-23
constexpr int kBuckets = 0x3f80 - kBucketBase + 1;  // ... through 1.0 (bits >> 16 = 0x3f80)

struct Tables {
  float map[kMapSize];        // code -> value, ascending
  uint32_t bucket[kBuckets];  // magnitude buckets, as above
  bool is_signed;
};

// The tables of the signed or the unsigned map (built once, on the host).
const Tables& tables(bool is_signed);

FASTOPT_HD uint32_t float_bits(float x) {
  uint32_t u;
  __builtin_memcpy(&u, &x, 4);
  return u;
}

// The code of y (y = x / absmax, in [-1, 1]; larger magnitudes take the extreme codes). The
// signed map has no -1: magnitude codes beyond its last negative value stop there. An unsigned
// map codes |y|. NaN takes the top code (its block's absmax is NaN: the block reads back NaN).
FASTOPT_HD uint8_t quantize(float y, const Tables& t) {
  const uint32_t a = float_bits(y) & 0x7fffffffu;
  int64_t j = int64_t(a >> 16) - int64_t(kBucketBase);
  j = j < 0 ? 0 : (j >= kBuckets ? kBuckets - 1 : j);
  const uint32_t e = t.bucket[j];
  const uint32_t m = (e >> 16) + ((a & 0xffffu) > (e & 0xffffu) ? 1u : 0u);
  if (!t.is_signed) return uint8_t(m);
  return uint8_t(float_bits(y) >> 31 ? 127u - (m < 127u ? m : 127u) : 127u + m);
}

FASTOPT_HD float dequantize(uint8_t code, float absmax, const Tables& t) { return t.map[code] * absmax; }

// The absmax of a block's new values: the largest |x| compared as bits, so a NaN (above inf)
// makes it NaN. inv_absmax: what the values are scaled by before quantize (0 for a block of
// zeros, or a NaN/inf absmax: such a block reads back non-finite).
FASTOPT_HD float absmax_of_bits(uint32_t bits) {
  float m;
  __builtin_memcpy(&m, &bits, 4);
  return m;
}
FASTOPT_HD float inv_absmax(float m) { return m > 0.0f ? 1.0f / m : 0.0f; }

// One block (n <= kQuantBlock values of x), element by element: its absmax and codes. The
// engines' vector versions (cpu/kernels.inl, cuda) give the same bytes.
FASTOPT_HD void quantize_block(const float* x, int64_t n, const Tables& t, uint8_t* codes, float* absmax) {
  uint32_t mb = 0;
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t a = float_bits(x[i]) & 0x7fffffffu;
    mb = a > mb ? a : mb;
  }
  *absmax = absmax_of_bits(mb);
  const float inv = inv_absmax(*absmax);
  for (int64_t i = 0; i < n; ++i) codes[i] = quantize(x[i] * inv, t);
}

}  // namespace fastopt::quant

namespace fastopt {

// The scalar lane of 8-bit state: one code read (times its block's absmax), one written.
FASTOPT_HD float load_q8(const uint8_t* codes, const quant::Tables& t, float absmax, Lane<float>) {
  return quant::dequantize(*codes, absmax, t);
}
FASTOPT_HD void store_q8(uint8_t* codes, float y, const quant::Tables& t) { *codes = quant::quantize(y, t); }

}  // namespace fastopt
