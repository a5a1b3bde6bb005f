// The CUDA vector lane: 8 fp32 values per thread, loaded and stored with 16-byte accesses
// (two for fp32 storage, one for fp16/bf16). Every operation is the scalar lane's, element by
// element, so the GPU computes exactly what the CPU does. Needs 16-byte-aligned addresses.
#pragma once
#include <cstdint>

#include "fastopt/numeric/convert.h"
#include "fastopt/numeric/quantize8.h"
#include "fastopt/numeric/random.h"
#include "fastopt/numeric/rounding.h"
#include "fastopt/numeric/scalar.h"

namespace fastopt {

struct Pack8 {
  static constexpr int width = 8;
  float v[8];
  Pack8() = default;
  __device__ __forceinline__ Pack8(float s) {
#pragma unroll
    for (int k = 0; k < 8; ++k) v[k] = s;
  }
};

#define FASTOPT_PACK_OP(expr)                  \
  Pack8 r;                                     \
  _Pragma("unroll") for (int k = 0; k < 8; ++k) r.v[k] = (expr); \
  return r;

__device__ __forceinline__ Pack8 operator+(const Pack8& a, const Pack8& b) { FASTOPT_PACK_OP(__fadd_rn(a.v[k], b.v[k])) }
__device__ __forceinline__ Pack8 operator-(const Pack8& a, const Pack8& b) { FASTOPT_PACK_OP(__fsub_rn(a.v[k], b.v[k])) }
__device__ __forceinline__ Pack8 operator*(const Pack8& a, const Pack8& b) { FASTOPT_PACK_OP(__fmul_rn(a.v[k], b.v[k])) }
__device__ __forceinline__ Pack8 vdiv(const Pack8& a, const Pack8& b) { FASTOPT_PACK_OP(vdiv(a.v[k], b.v[k])) }
__device__ __forceinline__ Pack8 vfma(const Pack8& a, const Pack8& b, const Pack8& c) { FASTOPT_PACK_OP(vfma(a.v[k], b.v[k], c.v[k])) }
__device__ __forceinline__ Pack8 vsqrt(const Pack8& a) { FASTOPT_PACK_OP(vsqrt(a.v[k])) }
__device__ __forceinline__ Pack8 vmax(const Pack8& a, const Pack8& b) { FASTOPT_PACK_OP(vmax(a.v[k], b.v[k])) }
__device__ __forceinline__ Pack8 vmin(const Pack8& a, const Pack8& b) { FASTOPT_PACK_OP(vmin(a.v[k], b.v[k])) }
__device__ __forceinline__ Pack8 vabs(const Pack8& a) { FASTOPT_PACK_OP(vabs(a.v[k])) }
__device__ __forceinline__ Pack8 vsign(const Pack8& a) { FASTOPT_PACK_OP(vsign(a.v[k])) }
__device__ __forceinline__ Pack8 vfinite_or(const Pack8& a, const Pack8& b) { FASTOPT_PACK_OP(vfinite_or(a.v[k], b.v[k])) }
#undef FASTOPT_PACK_OP
__device__ __forceinline__ int count_nonfinite(const Pack8& a) {
  int n = 0;
#pragma unroll
  for (int k = 0; k < 8; ++k) n += count_nonfinite(a.v[k]);
  return n;
}

__device__ __forceinline__ Pack8 load(const float* p, Lane<Pack8>) {
  const float4 a = reinterpret_cast<const float4*>(p)[0], b = reinterpret_cast<const float4*>(p)[1];
  Pack8 r;
  r.v[0] = a.x, r.v[1] = a.y, r.v[2] = a.z, r.v[3] = a.w;
  r.v[4] = b.x, r.v[5] = b.y, r.v[6] = b.z, r.v[7] = b.w;
  return r;
}

__device__ __forceinline__ void store(float* p, const Pack8& x) {
  reinterpret_cast<float4*>(p)[0] = make_float4(x.v[0], x.v[1], x.v[2], x.v[3]);
  reinterpret_cast<float4*>(p)[1] = make_float4(x.v[4], x.v[5], x.v[6], x.v[7]);
}

// fp16 and bf16: eight 16-bit values in one 16-byte access, converted by the exact scalar
// conversions of convert.h.
template <class T>
__device__ __forceinline__ Pack8 load(const T* p, Lane<Pack8>) {
  const uint4 w = *reinterpret_cast<const uint4*>(p);
  const uint32_t words[4] = {w.x, w.y, w.z, w.w};
  Pack8 r;
#pragma unroll
  for (int k = 0; k < 8; ++k) r.v[k] = to_f32(T{uint16_t(words[k / 2] >> (16 * (k % 2)))});
  return r;
}

template <class T>
__device__ __forceinline__ void store(T* p, const Pack8& x) {
  uint32_t words[4];
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    T lo, hi;
    from_f32(x.v[2 * k], lo);
    from_f32(x.v[2 * k + 1], hi);
    words[k] = uint32_t(lo.bits) | (uint32_t(hi.bits) << 16);
  }
  *reinterpret_cast<uint4*>(p) = make_uint4(words[0], words[1], words[2], words[3]);
}

// An fp32 master as a bfloat16 high half and a 16-bit low half (convert.h), element by element.
__device__ __forceinline__ Pack8 load_joined(const bf16* high, const uint16_t* low, Lane<Pack8>) {
  Pack8 r;
#pragma unroll
  for (int k = 0; k < 8; ++k) r.v[k] = join_remainder(high[k], low[k]);
  return r;
}
__device__ __forceinline__ void store_split(bf16* high, uint16_t* low, const Pack8& x) {
#pragma unroll
  for (int k = 0; k < 8; ++k) split_remainder(x.v[k], high[k], low[k]);
}

// 8-bit state (quantize8.h), element by element.
__device__ __forceinline__ Pack8 load_q8(const uint8_t* codes, const quant::Tables& t, const Pack8& absmax, Lane<Pack8>) {
  Pack8 r;
#pragma unroll
  for (int k = 0; k < 8; ++k) r.v[k] = quant::dequantize(codes[k], absmax.v[k], t);
  return r;
}
__device__ __forceinline__ const quant::Tables& quantizer(const quant::Tables& t, Lane<Pack8>) { return t; }
__device__ __forceinline__ void store_q8(uint8_t* codes, const Pack8& y, const quant::Tables& t) {
#pragma unroll
  for (int k = 0; k < 8; ++k) codes[k] = quant::quantize(y.v[k], t);
}

// Stochastic rounding (rounding.h), element by element with the scalar lane's functions.
struct Bits8 {
  uint32_t v[8];
};
__device__ __forceinline__ Bits8 lane_bits32(uint64_t key, uint64_t i, Lane<Pack8>) {
  Bits8 r;
#pragma unroll
  for (int k = 0; k < 8; ++k) r.v[k] = random::bits32(key, i + k);
  return r;
}
template <class T>
__device__ __forceinline__ void store_stochastic_bits(T* p, const Pack8& x, const Bits8& r) {
#pragma unroll
  for (int k = 0; k < 8; ++k) store_stochastic_bits(p + k, x.v[k], r.v[k]);
}

}  // namespace fastopt
