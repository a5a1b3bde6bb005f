// Portability macros shared by the host and CUDA compilations of the core headers.
#pragma once

// Always inlined: the CPU build compiles these headers once per ISA, and an out-of-line
// copy made with one target's flags must never be shared with another target.
#if defined(__CUDACC__)
#define FASTOPT_HD __host__ __device__ __forceinline__
#else
#define FASTOPT_HD inline __attribute__((always_inline))
#endif

namespace fastopt {
// Selects a load overload by lane type: load(ptr, Lane<VecAvx2>{}) reads 8 values.
template <class V>
struct Lane {};

template <class V>
constexpr int lane_width = V::width;
template <>
constexpr int lane_width<float> = 1;

// The accumulator of sums of squares of a lane type V (fastopt/reduce.h): lane_width<V>
// doubles. Each lane header specializes it, with add_square and store(double*, ...).
template <class V>
struct Squares;
template <>
struct Squares<float> {
  using type = double;
};
template <class V>
using squares_t = typename Squares<V>::type;
}  // namespace fastopt
