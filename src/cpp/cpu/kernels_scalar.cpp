// Scalar target: portable C++, one element at a time.
#define FASTOPT_ISA scalar
#define FASTOPT_ISA_NAME "scalar"
#define FASTOPT_LANE float
#define FASTOPT_KERNEL_SET kernels_scalar
#include "kernels.inl"
