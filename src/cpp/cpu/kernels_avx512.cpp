// AVX-512 target: compiled with -mavx512f -mavx512bw -mavx512vl (plus the AVX2 set).
#include "fastopt/numeric/simd_avx512.h"
#define FASTOPT_ISA avx512
#define FASTOPT_ISA_NAME "avx512"
#define FASTOPT_LANE VecAvx512
#define FASTOPT_KERNEL_SET kernels_avx512
#include "kernels.inl"
