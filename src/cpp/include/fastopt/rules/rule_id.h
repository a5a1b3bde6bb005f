// The registry of rules that the engines instantiate: one entry per rule header.
#pragma once

namespace fastopt {

// probe: the CPU bandwidth probe, a no-math rule over the same streams (cpu/kernels.inl).
enum class RuleId : int { sgd = 0, adam = 1, probe = 2, count };

}  // namespace fastopt
