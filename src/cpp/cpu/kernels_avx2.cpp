// AVX2 target: compiled with -mavx2 -mfma -mf16c.
#include "fastopt/numeric/simd_avx2.h"
#define FASTOPT_ISA avx2
#define FASTOPT_ISA_NAME "avx2"
#define FASTOPT_LANE VecAvx2
#define FASTOPT_KERNEL_SET kernels_avx2
#include "kernels.inl"
