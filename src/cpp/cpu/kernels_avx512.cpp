// AVX-512 target: compiled with -mavx512f -mavx512bw -mavx512vl -mavx512dq (plus the AVX2 set);
// 8-bit state dequantizes with AVX512-VBMI where the CPU has it (simd_avx512.h).
#include "fastopt/numeric/simd_avx512.h"
#define FASTOPT_ISA avx512
#define FASTOPT_LANE VecAvx512
#include "kernels.inl"
