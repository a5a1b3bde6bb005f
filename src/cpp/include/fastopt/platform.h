// Portability macros shared by the host and CUDA compilations of the core headers.
#pragma once

#if defined(__CUDACC__)
#define FASTOPT_HD __host__ __device__ __forceinline__
#else
#define FASTOPT_HD inline
#endif

namespace fastopt {
// Selects a load overload by lane type: load(ptr, Lane<VecAvx2>{}) reads 8 values.
template <class V>
struct Lane {};

template <class V>
constexpr int lane_width = V::width;
template <>
constexpr int lane_width<float> = 1;
}  // namespace fastopt
