// Counter-based random bits for stochastic rounding, the same on every CPU target, any thread
// count and the GPU: element i of a stream is a pure function of (key, i), so it needs no state
// and no order. The generator is SplitMix64 (Steele, Lea and Flood, "Fast splittable
// pseudorandom number generators", OOPSLA 2014), read at position i: its state after i + 1 steps
// is key + (i + 1) * gamma, and its output is the finalizer below of that state. A stream's key
// mixes the seed, the step and the tensor, so that every (step, tensor) rounds with fresh bits.
#pragma once
#include <cstdint>

#include "fastopt/platform.h"

namespace fastopt::random {

constexpr uint64_t kGamma = 0x9e3779b97f4a7c15ull;  // SplitMix64's increment (2^64 / golden ratio)
// SplitMix64's output multipliers (also those of the SIMD lanes' bits: simd_avx2.h, simd_avx512.h).
constexpr uint64_t kMix1 = 0xbf58476d1ce4e5b9ull, kMix2 = 0x94d049bb133111ebull;

// SplitMix64's output function (a bijection of 64-bit words with full avalanche).
FASTOPT_HD uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * kMix1;
  z = (z ^ (z >> 27)) * kMix2;
  return z ^ (z >> 31);
}

// The key of the streams of step `step` of a run seeded with `seed` (the engines pass it to the
// kernels with the step), and of the stream that tensor `tensor` (its index in its optimizer)
// rounds with then.
FASTOPT_HD uint64_t step_key(uint64_t seed, uint64_t step) { return mix64(seed ^ mix64(step * kGamma)); }
FASTOPT_HD uint64_t tensor_key(uint64_t step_key, uint64_t tensor) { return mix64(step_key + tensor * kGamma); }
FASTOPT_HD uint64_t stream_key(uint64_t seed, uint64_t step, uint64_t tensor) {
  return tensor_key(step_key(seed, step), tensor);
}

// The 32 random bits of element i of stream `key`: the high half of SplitMix64's output.
FASTOPT_HD uint32_t bits32(uint64_t key, uint64_t i) { return uint32_t(mix64(key + (i + 1) * kGamma) >> 32); }

}  // namespace fastopt::random
