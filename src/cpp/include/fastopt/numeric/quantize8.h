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
#include "fastopt/numeric/scalar.h"
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

// Quantization by arithmetic (no table lookup per element: the vector lanes in simd_*.h compute
// the same float32 operations). A magnitude a = |y| takes a slot: 0 for zero, 1 + i for
// decade i and 8 for one (above the midpoint between the largest fraction and 1), counted as
// the slot bounds below it (`lower`: the exact midpoints between the last value of one slot and
// the first of the next, rounded down, so that `a > lower` says a is nearer the next, ties
// toward zero). In decade
// i the magnitude code is floor(fma(a, scale, shift)), which steps where a crosses the
// midpoints of the fractions (scale = 1 / their spacing, shift the code offset), at most the
// decade's last code (from its slot bound on, the formula is at least its first code + 1/5):
// the nearest value of the map, but for magnitudes within a few float32 rounding errors of a
// midpoint between two fractions, which may take the other neighbour. One exception on
// purpose: with the unsigned map (second moments) every positive magnitude takes at least the
// smallest fraction (its decade 0 starts at 0): a second moment rounded to zero under a first
// moment that is not would turn Adam's m / (sqrt(v) + eps) into m / eps.
// Codes: unsigned, the magnitude code (0: zero, 255: one); signed, 127 + it for y >= 0 and
// 127 - it below (no -1: the largest negative magnitude stops at 127).
constexpr int kSlots = 9;  // zero, the 7 decades, one

struct Tables {
  float map[kMapSize];  // code -> value, ascending
  uint8_t map_bytes[4][kMapSize];  // byte b of each value (little-endian): AVX-512 VBMI lookups
  bool is_signed;
  float lower[kSlots];  // slot s >= 1 starts at lower[s] (lower[0] = 0)
  // (one's slot: scale 1 and shift one, capped by last = one; not scale 0, which takes an inf to NaN)
  float scale[kSlots], shift[kSlots];
  float last[kSlots];  // the largest magnitude code of each slot
  int32_t one;         // the magnitude code of 1 (128 signed, 255 unsigned)
  // The slot count by binary exponent (AVX-512: one lookup for the eight compares): for
  // magnitudes in [2^(e - 31), 2^(e - 30)) (e clamped to 0 .. 31), the slot bounds below the
  // binade, and the one inside it (+inf for none; no binade holds two).
  int32_t binade_slot[32];
  float binade_bound[32];
};

// The tables of the signed or the unsigned map (built once, on the host).
const Tables& tables(bool is_signed);

FASTOPT_HD uint32_t float_bits(float x) {
  uint32_t u;
  __builtin_memcpy(&u, &x, 4);
  return u;
}

// The code of y (y = x / absmax, in [-1, 1]; larger magnitudes take the extreme codes). A NaN
// takes zero's code (vmax returns its second operand for a NaN; its block's absmax is NaN: the
// block reads back NaN).
FASTOPT_HD uint8_t quantize(float y, const Tables& t) {
  const float a = vabs(y);
  int s = 0;
  for (int j = 1; j < kSlots; ++j) s += a > t.lower[j] ? 1 : 0;
  // (>= 0: the conversion's truncation is the floor; vmin takes `last` for a NaN)
  int32_t m = int32_t(vmin(vfma(a, t.scale[s], t.shift[s]), t.last[s]));
  if (!t.is_signed) return uint8_t(m);
  return uint8_t(float_bits(y) >> 31 ? 127 - (m < 127 ? m : 127) : 127 + m);
}

FASTOPT_HD float dequantize(uint8_t code, float absmax, const Tables& t) { return t.map[code] * absmax; }

// The absmax of a block's new values: the largest |x| compared as bits, so a NaN (above inf)
// makes it NaN (the block reads back NaN, as float32 state would hold the NaN). An inf (a
// value that overflowed, as a squared grad may) takes the largest finite float instead: its
// element reads back as that, and the block stays finite, where an inf scale would read every
// element back as NaN (0 * inf). inv_absmax: what the values are scaled by before quantize (0
// for a block of zeros or a NaN absmax).
FASTOPT_HD float absmax_of_bits(uint32_t bits) {
  bits = bits == 0x7f800000u ? 0x7f7fffffu : bits;
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
// (The vector lanes quantize with their tables in registers: quantizer(t, Lane<V>{}).)
FASTOPT_HD const quant::Tables& quantizer(const quant::Tables& t, Lane<float>) { return t; }

}  // namespace fastopt
