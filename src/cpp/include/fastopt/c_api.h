/* fastopt's C ABI: the C++ API (fastopt/optimizer.h) behind plain C types, for engines in C,
 * Rust, Julia, Zig, ... Every call returns a fastopt_status; on an error nothing was changed and
 * fastopt_last_error() gives the message (the C++ API's, naming the bad tensor). Tensors are
 * caller memory, described, never copied or owned: they must outlive the optimizer. The CPU
 * engine only; no lr schedules (set "lr" between steps). While fastopt's major version is 0, a
 * minor version may change the structs (FASTOPT_ABI_VERSION says which layout; the library's
 * SONAME, libfastopt.so.0.MINOR, keeps a binary from loading another minor version's):
 * rebuild against the new header.
 *
 * Thread-safety: the last error is per thread. An optimizer is used by one thread at a time. */
#ifndef FASTOPT_C_API_H
#define FASTOPT_C_API_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum fastopt_status {
  FASTOPT_OK = 0,
  FASTOPT_ERROR_TENSOR = 1,    /* a tensor cannot be used (TensorError) */
  FASTOPT_ERROR_ARGUMENT = 2,  /* a bad argument: hyperparameter, option, index, name */
  FASTOPT_ERROR_RUNTIME = 3    /* the engine cannot go on (out of memory, threads, a step count at 2**63 - 1) */
} fastopt_status;

#define FASTOPT_ABI_VERSION 3 /* 2: fastopt_param gained remainder, compensation, stochastic_rounding;
                                 3: state_absmax and state_stochastic_rounding, FASTOPT_UINT8 */
int32_t fastopt_abi_version(void); /* FASTOPT_ABI_VERSION of the library linked */

typedef enum fastopt_dtype {
  FASTOPT_FLOAT32 = 0,
  FASTOPT_FLOAT16 = 1,
  FASTOPT_BFLOAT16 = 2,
  FASTOPT_UINT16 = 3, /* remainders only */
  FASTOPT_UINT8 = 4   /* 8-bit state codes only */
} fastopt_dtype;

/* A C-contiguous tensor: `ndim` dimensions in `shape` (ndim 0: a scalar). device_type as
 * DLPack numbers it: 1 CPU (the C ABI's optimizers run on the CPU engine), 3 pinned host. */
typedef struct fastopt_tensor {
  void* data;
  const int64_t* shape;
  int32_t ndim;
  int32_t dtype; /* a fastopt_dtype */
  int32_t device_type;
  int32_t device_id;
  int32_t readonly; /* nonzero: fastopt must not write it (refused but for grads) */
} fastopt_tensor;

/* One param's tensors (all of its shape). master.data NULL: no master weights. `state`:
 * num_state arrays in the rule's order (fastopt_state_name; adafactor's, for a param of >= 2
 * dims: row_var and col_var, shaped as the param with its last, or second-to-last, dim 1; for
 * one of < 2 dims: variance alone, its shape), all float32, bfloat16 or uint8
 * (8-bit codes: then state_absmax holds num_state float32 absmax arrays of ceil(numel / 2048)
 * elements; else NULL): fastopt::ParamTensors::state. remainder.data NULL: none; else, for a
 * bfloat16 param without master, the uint16 low halves of its fp32 master
 * (fastopt::ParamTensors::remainder). */
typedef struct fastopt_param {
  fastopt_tensor param, grad, master;
  const fastopt_tensor* state;
  int32_t num_state;
  fastopt_tensor remainder;
  fastopt_tensor compensation; /* data NULL: none; else a bfloat16 param's Kahan compensation (bfloat16) */
  int32_t stochastic_rounding; /* nonzero: a float16/bfloat16 param without master, rounded stochastically */
  const fastopt_tensor* state_absmax;
  int32_t state_stochastic_rounding; /* nonzero: bfloat16 state rounded stochastically */
} fastopt_param;

typedef struct fastopt_optimizer fastopt_optimizer;

/* The message of this thread's last failing call; every successful call that can fail (those
 * returning a fastopt_status, and fastopt_state_name and fastopt_cpu_isa) clears it to "".
 * Valid until this thread's next such call. */
const char* fastopt_last_error(void);

/* Binds `num_params` params to a new optimizer of rule `rule` ("sgd", "adam", ...: see
 * fastopt/rules/registry.h), split into `num_groups` param groups of group_sizes[j]
 * consecutive params, each starting at the rule's default hyperparameters
 * (fastopt_set_hyper changes them). *out is set to the optimizer, or to NULL on an error. */
fastopt_status fastopt_optimizer_create(const char* rule, const fastopt_param* params, int64_t num_params,
                                        const int64_t* group_sizes, int32_t num_groups, fastopt_optimizer** out);
void fastopt_optimizer_destroy(fastopt_optimizer* opt); /* NULL is fine */

/* A hyperparameter of param group `group` by its field name (fastopt/rules/<rule>.h: "lr",
 * "beta1", "weight_decay", "decoupled", ...); flags are 0 or 1. Setting validates the group's
 * whole set (ranges, state arrays bound) and applies it from the next step. */
fastopt_status fastopt_set_hyper(fastopt_optimizer* opt, int32_t group, const char* name, double value);
fastopt_status fastopt_get_hyper(const fastopt_optimizer* opt, int32_t group, const char* name, double* value);
/* Several hyperparameters of group `group` at once (names[k] = values[k]), validated together:
 * for values that are only valid together (SGD's nesterov with momentum; LARS bound without a
 * momentum buffer, whose default momentum is 0.9, with momentum 0). All or nothing. */
fastopt_status fastopt_set_hypers(fastopt_optimizer* opt, int32_t group, const char* const* names,
                                  const double* values, int32_t n);

/* The name of the rule's k-th state array ("exp_avg", ...), or NULL past the last. */
const char* fastopt_state_name(const char* rule, int32_t k);
/* The state arrays group `group` needs with its current hyperparameters. */
fastopt_status fastopt_num_state(const fastopt_optimizer* opt, int32_t group, int32_t* out);

typedef struct fastopt_step_options {
  double grad_scale;    /* the loss scale the grads carry (1: none) */
  double max_grad_norm; /* > 0: clip by global norm */
  float clip_value;     /* > 0: clamp grads */
  int32_t skip_nonfinite, grad_norm, diagnostics; /* flags */
  /* NULL, or the 1-based step count each group's rule sees at this step (num_groups of them;
   * by default each group's steps taken + 1; SGD: its momentum buffer's updates + 1) */
  const int64_t* rule_steps;
} fastopt_step_options;

/* {grad_scale 1, everything else off, rule_steps NULL}. */
fastopt_step_options fastopt_default_step_options(void);

typedef struct fastopt_step_result {
  double grad_norm;  /* NaN where the step computed none */
  int32_t skipped;
} fastopt_step_result;

/* One step (options NULL: the defaults). *result may be NULL. With options->diagnostics, the
 * per-param numbers are then read with fastopt_diagnostics. */
fastopt_status fastopt_step(fastopt_optimizer* opt, const fastopt_step_options* options,
                            fastopt_step_result* result);

/* The last step's diagnostics, num_params values per array (any array may be NULL): grad
 * norms, non-finite grad counts, param norms, update norms, update/param ratios (the last three
 * NaN for a skipped step). FASTOPT_ERROR_ARGUMENT if the last step had no diagnostics. */
fastopt_status fastopt_diagnostics(const fastopt_optimizer* opt, double* grad_norm, int64_t* nonfinite_grads,
                                   double* param_norm, double* update_norm, double* update_ratio);

/* The seed of stochastic rounding (default 0). */
fastopt_status fastopt_set_seed(fastopt_optimizer* opt, uint64_t seed);

/* Steps taken by each param group (num_groups values), for checkpoints. */
fastopt_status fastopt_get_steps(const fastopt_optimizer* opt, int64_t* steps, int32_t num_groups);
fastopt_status fastopt_set_steps(fastopt_optimizer* opt, const int64_t* steps, int32_t num_groups);

/* Per param: the sum of squares of its grad (of its fp32 value: the master where it has one; a
 * param with a remainder: its bfloat16 half)
 * in the canonical order of fastopt/reduce.h, and its count of inf/NaN elements (num_params
 * values in each array; either may be NULL). */
fastopt_status fastopt_grad_sumsq(const fastopt_optimizer* opt, double* sums, int64_t* nonfinite);
fastopt_status fastopt_param_sumsq(const fastopt_optimizer* opt, double* sums, int64_t* nonfinite);

/* New grad buffers, one per param (validated; nothing changes on an error). */
fastopt_status fastopt_set_grads(fastopt_optimizer* opt, const fastopt_tensor* grads, int64_t num_params);

/* The active CPU target ("avx512", "avx2", "scalar"; NULL with the error set if FASTOPT_CPU_ISA
 * names one this CPU lacks), and the threads a step uses. */
const char* fastopt_cpu_isa(void);
fastopt_status fastopt_set_num_threads(int32_t n);
int32_t fastopt_get_num_threads(void);

#ifdef __cplusplus
}
#endif

#endif /* FASTOPT_C_API_H */
