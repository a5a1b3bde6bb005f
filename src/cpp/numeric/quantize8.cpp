// The tables of the 8-bit maps (fastopt/numeric/quantize8.h), built once on the host.
#include <cmath>

#include "fastopt/numeric/quantize8.h"

namespace fastopt::quant {
namespace {

// The largest float at most x (x in (0, 1)): a float y > x exactly when y > that float.
float round_down(double x) {
  float f = float(x);
  if (double(f) > x) f = std::nextafter(f, 0.0f);
  return f;
}

Tables build(bool is_signed) {
  Tables t{};
  t.is_signed = is_signed;
  dynamic_map(is_signed, t.map);
  for (int c = 0; c < kMapSize; ++c) {
    for (int b = 0; b < 4; ++b) t.map_bytes[b][c] = uint8_t(float_bits(t.map[c]) >> (8 * b));
  }
  // The magnitudes, ascending: 0, the positive fractions (decade by decade), 1.
  double mags[kMapSize + 1];
  int n = 0;
  mags[n++] = 0.0;
  for (int c = 0; c < kMapSize; ++c) {
    if (t.map[c] > 0.0f) mags[n++] = t.map[c];
  }
  t.one = n - 1;
  const int u = is_signed ? 0 : 1;  // the unsigned map has twice the fractions per decade
  for (int i = 0; i < kSlots - 2; ++i) {  // the decades
    const int first = (1 << (i + u)) - u, count = 1 << (i + u);
    double decade = 1.0;
    for (int k = i; k < 6; ++k) decade /= 10.0;
    const double spacing = 0.9 * decade / count;  // between fractions 0.1 + 0.9 (p + 1/2) / count
    t.lower[i + 1] = round_down((mags[first - 1] + mags[first]) / 2);
    t.scale[i + 1] = float(1.0 / spacing);
    t.shift[i + 1] = float(first - 0.1 * decade / spacing);
    t.last[i + 1] = float(first + count - 1);
  }
  if (!is_signed) {  // every positive magnitude takes a fraction: decade 0 from 0 on
    t.lower[1] = 0.0f;
    t.scale[1] = float(1.0 / (0.1e-6 + 0.9e-6 / 2));  // (its two fractions' midpoint)
    t.shift[1] = 1.0f;
  }
  t.lower[8] = round_down((mags[t.one - 1] + mags[t.one]) / 2);
  t.scale[8] = 1.0f, t.shift[8] = t.last[8] = float(t.one);
  for (int e = 0; e < 32; ++e) {  // (binade 0 holds everything below 2^-30, zero too)
    const double low = e ? std::ldexp(1.0, e - 31) : 0.0, high = std::ldexp(1.0, e - 30);
    t.binade_bound[e] = INFINITY;
    for (int s = 1; s < kSlots; ++s) {
      if (t.lower[s] < low) ++t.binade_slot[e];
      else if (t.lower[s] < high) t.binade_bound[e] = t.lower[s];
    }
  }
  return t;
}

}  // namespace

const Tables& tables(bool is_signed) {
  static const Tables s = build(true), u = build(false);
  return is_signed ? s : u;
}

}  // namespace fastopt::quant
