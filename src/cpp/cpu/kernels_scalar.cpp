// Scalar target: portable C++, one element at a time.
#define FASTOPT_ISA scalar
#define FASTOPT_LANE float
#include "kernels.inl"
