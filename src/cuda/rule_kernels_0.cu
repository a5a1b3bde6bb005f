// Part 0 of the per-rule kernels (see device.cuh: split to compile in parallel).
#include "rule_kernels.cuh"

template bool fastopt::cuda::launch_part<0>(fastopt::RuleId, const fastopt::cuda::RuleLaunch&);
