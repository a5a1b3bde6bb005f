// The registry of rules: every engine and binding instantiates the rules listed here.
// Adding an optimizer = its rule header, its include below and one line in FASTOPT_OPTIMIZER_RULES,
// and on the Python side python/fastopt/<id>.py with its class (found through _core.rules).
// A rule without state declares max_state = 1 (arrays of 0 are not C++), state_names {""} and
// num_state() = 0.
// A rule with factored state (fastopt/factored.h) declares `factored`, its unfactored_state and
// unfactored_state_names (a param of < 2 dims), and its factor() and row_value().
// The utility rules run on the same engines but are not optimizers: the params they update are
// buffers of their own (an average, an accumulator), their "grads" the model's tensors; Python
// wraps them in classes of their own (fastopt/ema.py, fastopt/accumulate.py).
#pragma once

#include "fastopt/rules/accumulate.h"
#include "fastopt/rules/adabelief.h"
#include "fastopt/rules/adafactor.h"
#include "fastopt/rules/adadelta.h"
#include "fastopt/rules/adagrad.h"
#include "fastopt/rules/adam.h"
#include "fastopt/rules/adamax.h"
#include "fastopt/rules/ema.h"
#include "fastopt/rules/lamb.h"
#include "fastopt/rules/lars.h"
#include "fastopt/rules/lion.h"
#include "fastopt/rules/nadam.h"
#include "fastopt/rules/radam.h"
#include "fastopt/rules/rmsprop.h"
#include "fastopt/rules/schedule_free.h"
#include "fastopt/rules/sgd.h"
#include "fastopt/rules/sophia.h"

// X(id, Type): the rule's id (also its name in Python) and its struct.
#define FASTOPT_OPTIMIZER_RULES(X) \
  X(sgd, Sgd)                   \
  X(adam, Adam)                 \
  X(adagrad, Adagrad)           \
  X(adadelta, Adadelta)         \
  X(rmsprop, RmsProp)           \
  X(adamax, Adamax)             \
  X(nadam, NAdam)               \
  X(radam, RAdam)               \
  X(adabelief, AdaBelief)       \
  X(lion, Lion)                 \
  X(lars, Lars)                 \
  X(lamb, Lamb)                 \
  X(adafactor, Adafactor)       \
  X(sophia, Sophia)             \
  X(schedule_free, ScheduleFree)

#define FASTOPT_UTILITY_RULES(X) \
  X(ema, Ema)                   \
  X(accumulate, Accumulate)

#define FASTOPT_RULES(X)     \
  FASTOPT_OPTIMIZER_RULES(X) \
  FASTOPT_UTILITY_RULES(X)

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
