// Run-time choice of the CPU target by CPUID and XGETBV, overridable by FASTOPT_CPU_ISA.
#pragma once
#include <string>

#include "kernels.h"

namespace fastopt::cpu {

// The targets this CPU and OS can run, best last: "scalar", then "avx2", then "avx512".
bool isa_supported(const std::string& name);

// The active kernel set. Chosen on first use: FASTOPT_CPU_ISA if set (an error if the CPU
// lacks it or the name is unknown), otherwise the best supported target.
const KernelSet& active_kernels();

// Forces a target (tests and benchmarks compare targets in one process). Throws
// std::invalid_argument for an unknown or unsupported name. Groups bound earlier keep theirs.
void set_isa(const std::string& name);

}  // namespace fastopt::cpu
