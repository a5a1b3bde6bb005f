// Part 1 of the per-rule kernels (see device.cuh: split to compile in parallel).
#include "rule_kernels.cuh"

template bool fastopt::cuda::launch_part<1>(fastopt::RuleId, const fastopt::cuda::RuleLaunch&);
