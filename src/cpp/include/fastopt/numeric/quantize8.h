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

// The index of the map value nearest to y (ties to the lower index); map ascending.
FASTOPT_HD uint8_t quantize(float y, const float* map) {
  int lo = 0, hi = kMapSize - 1;  // map[lo] <= y <= map[hi] once clamped
  if (!(y > map[lo])) return uint8_t(lo);
  if (!(y < map[hi])) return uint8_t(hi);
  while (hi - lo > 1) {
    const int mid = (lo + hi) / 2;
    if (map[mid] <= y) lo = mid;
    else hi = mid;
  }
  return uint8_t(y - map[lo] <= map[hi] - y ? lo : hi);
}

FASTOPT_HD float dequantize(uint8_t code, float absmax, const float* map) { return map[code] * absmax; }

// One block (n <= kQuantBlock values of x): its absmax, and each value's code for x / absmax
// (all codes of 0 for a block of zeros). A NaN makes the absmax NaN, and the block NaN.
FASTOPT_HD void quantize_block(const float* x, int64_t n, const float* map, uint8_t* codes, float* absmax) {
  float m = 0.0f;
  for (int64_t i = 0; i < n; ++i) {
    const float a = x[i] < 0 ? -x[i] : x[i];
    m = (a > m || a != a) ? a : m;
  }
  *absmax = m;
  const float inv = m > 0.0f ? 1.0f / m : 0.0f;
  for (int64_t i = 0; i < n; ++i) codes[i] = quantize(x[i] * inv, map);
}

}  // namespace fastopt::quant
