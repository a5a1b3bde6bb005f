// The tables of the 8-bit maps (fastopt/numeric/quantize8.h), built once on the host.
#include <cmath>
#include <stdexcept>

#include "fastopt/numeric/quantize8.h"

namespace fastopt::quant {
namespace {

// The largest float at most x (x in (0, 1)): y > x for a float y exactly when y > that float.
float round_down(double x) {
  float f = float(x);
  if (double(f) > x) f = std::nextafter(f, 0.0f);
  return f;
}

Tables build(bool is_signed) {
  Tables t{};
  t.is_signed = is_signed;
  dynamic_map(is_signed, t.map);
  // The magnitudes a code can have, ascending: 0, then the positive values (1 last).
  double mags[kMapSize + 1];
  int n = 0;
  mags[n++] = 0.0;
  for (int c = 0; c < kMapSize; ++c) {
    if (t.map[c] > 0.0f) mags[n++] = t.map[c];
  }
  // Threshold k separates magnitude codes k and k + 1.
  uint32_t thr[kMapSize];
  for (int k = 0; k + 1 < n; ++k) thr[k] = float_bits(round_down((mags[k] + mags[k + 1]) / 2));
  for (int j = 0; j < kBuckets; ++j) {
    const uint32_t hi = kBucketBase + uint32_t(j);
    uint32_t below = 0, low = 0xffffu;
    int inside = 0;
    for (int k = 0; k + 1 < n; ++k) {
      if ((thr[k] >> 16) < hi) ++below;
      else if ((thr[k] >> 16) == hi) low = thr[k] & 0xffffu, ++inside;
    }
    if (inside > 1 || (j == 0 && inside)) throw std::logic_error("quantize8: a bucket holds two thresholds");
    t.bucket[j] = below << 16 | low;
  }
  return t;
}

}  // namespace

const Tables& tables(bool is_signed) {
  static const Tables s = build(true), u = build(false);
  return is_signed ? s : u;
}

}  // namespace fastopt::quant
