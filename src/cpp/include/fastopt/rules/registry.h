// The registry of rules: every engine and binding instantiates the rules listed here.
// Adding an optimizer = its rule header, its include below and one line in FASTOPT_RULES.
#pragma once

#include "fastopt/rules/adam.h"
#include "fastopt/rules/sgd.h"

// X(id, Type): the rule's id (also its name in Python) and its struct.
#define FASTOPT_RULES(X) \
  X(sgd, Sgd)            \
  X(adam, Adam)

namespace fastopt {

// probe: the CPU bandwidth probe, a no-math rule over the same streams (cpu/kernels.inl).
enum class RuleId : int {
#define FASTOPT_RULE_ID(id, T) id,
  FASTOPT_RULES(FASTOPT_RULE_ID)
#undef FASTOPT_RULE_ID
  probe,
  count
};

}  // namespace fastopt
