// Links against fastopt::fastopt_cuda: reports the CUDA devices (0 without a GPU), nothing more.
#include <fastopt/cuda_optimizer.h>

#include <cstdio>

int main() {
  std::printf("cuda_consumer: ok (%d CUDA devices)\n", fastopt::cuda_device_count());
  return 0;
}
