// AVX2 target: compiled with -mavx2 -mfma -mf16c.
#include "fastopt/numeric/simd_avx2.h"
#define FASTOPT_ISA avx2
#define FASTOPT_LANE VecAvx2
#include "kernels.inl"
