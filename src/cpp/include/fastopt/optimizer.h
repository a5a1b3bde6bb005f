// fastopt's C++ API: an optimizer bound once to caller-owned tensors, stepped many times, in
// place, on the CPU engine (AVX-512, AVX2 or scalar kernels chosen at run time, one parallel
// region per step). The Python package is a layer over this API: the same validation, the same
// messages, the same bits. See fastopt/cuda_optimizer.h for the CUDA engine and
// fastopt/c_api.h for the C ABI.
//
// Thread-safety: an Optimizer is stepped (and its hyperparameters, steps and grads set) by one
// thread at a time; distinct optimizers may be used from distinct threads (their parallel
// regions then take turns on the pool, or run on the calling thread alone).
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "fastopt/hyper.h"
#include "fastopt/schedule.h"
#include "fastopt/tensor.h"

namespace fastopt {

// One param's tensors, all of the param's shape, each with its own memory (no two tensors of an
// optimizer may overlap; tensors of no elements have no memory, and never overlap).
struct ParamTensors {
  Tensor param;  // float32, float16 or bfloat16; updated in place
  Tensor grad;   // float32, float16 or bfloat16; only read (may be read-only)
  // float32 master weights of a float16/bfloat16 param, or data == nullptr for none. With a
  // master, a step updates the master and rewrites the param from it, rounded to nearest even.
  Tensor master;
  // The rule's state arrays, in the order of state_names(rule): at least num_state(hyper) of
  // them for the param group's hyperparameters, the param's shape, all of one dtype: float32;
  // bfloat16 (each step computes in float32 and rounds to nearest even, or stochastically with
  // state_stochastic_rounding: 2 bytes per element); or uint8, 8-bit block-wise codes
  // (fastopt/numeric/quantize8.h: blocks of 2048 elements from the tensor's start, one float32
  // absmax each in state_absmax; a nearest value of the dynamic map of Dettmers et al. 2022,
  // the unsigned map for streams that are never negative: 1 byte per element; not for Adagrad).
  // They start at 0 (codes: the map's zero, 127 signed or 0 unsigned, with absmax 0; Adagrad's
  // `sum` at initial_accumulator_value: the caller fills it) and are updated in place.
  std::vector<Tensor> state;
  // With uint8 state: one float32 absmax tensor per state array, of shape (ceil(numel / 2048),).
  std::vector<Tensor> state_absmax{};
  // With bfloat16 state: round it stochastically (random bits of the optimizer's seed, the
  // step, the param's index, the state array and the element), not to nearest even.
  bool state_stochastic_rounding = false;
  // Instead of a master, for a bfloat16 param: the low halves (uint16) of the fp32 master whose
  // high halves are the param (the master truncated toward zero), or data == nullptr for none.
  // The same trajectory as a float32 master, bit for bit, in 4 bytes per param instead of 6.
  Tensor remainder{};
  // Instead of a master, for a bfloat16 param: its Kahan compensation (bfloat16), or data ==
  // nullptr for none: each step adds the update plus what earlier roundings lost to the param,
  // rounded to nearest even, and keeps what this rounding loses (4 bytes per param).
  Tensor compensation{};
  // Instead of a master, for a float16/bfloat16 param: round it stochastically at each step
  // (fastopt/numeric/rounding.h), with random bits that depend only on the optimizer's seed, the
  // step (StepOptions::round_step), the param's index and the element (2 bytes per param).
  bool stochastic_rounding = false;
};

// A param group: the params that share one set of hyperparameters.
struct ParamGroup {
  Hyper hyper;
  std::vector<ParamTensors> params;
};

// Per tensor (by param index): sums of squares of fp32 values, in reduce.h's canonical order,
// and counts of inf/NaN elements.
struct GradSums {
  std::vector<double> sumsq;
  std::vector<int64_t> nonfinite;
};

// What a step does around the update (torch semantics; python/fastopt/optimizer.py documents
// each option at length).
struct StepOptions {
  // The loss scale the grads carry: the update unscales them by float(1 / grad_scale), as
  // torch's GradScaler does (finite and > 0, with a finite float32 reciprocal).
  double grad_scale = 1.0;
  // > 0: clip by global norm, as torch.nn.utils.clip_grad_norm_: every grad is scaled by
  // max_grad_norm / (norm + 1e-6) when the norm exceeds it. 0: off.
  double max_grad_norm = 0.0;
  // > 0: clamp every grad element (after unscaling and norm clipping) to +-clip_value. 0: off.
  float clip_value = 0.0f;
  // Skip the whole step (nothing written, step counts unchanged) when a grad holds an inf or NaN
  // or an unscaled grad may overflow float32.
  bool skip_nonfinite = false;
  // Compute the global grad norm even when no option above needs it.
  bool grad_norm = false;
  // Per-tensor diagnostics in the result (a norm pass over the grads; the update pass then
  // sums the updates and the old values as it goes).
  bool diagnostics = false;
  // The 1-based step count each param group's rule sees at this step, num_groups() of them;
  // null: steps()[j] + 1. (The counts kept by the optimizer advance either way.)
  const int64_t* rule_steps = nullptr;
  // The step whose random bits stochastic rounding draws (with set_seed's seed); 0: the
  // optimizer's largest step count + 1. An engine that restores its own counts passes its own.
  int64_t round_step = 0;
  // For a step sharded across processes (fastopt.distributed), where the caller combines the
  // norms over every process (CPU engine only; the CUDA engine refuses both):
  // grad_factor: the multiplier of every grad element, decided by the caller (step_control.h
  // over the global norm); the step then takes no norm pass, so grad_scale must be 1 and
  // max_grad_norm, skip_nonfinite, grad_norm and diagnostics off.
  std::optional<float> grad_factor;
  // combine_sums: called with a two-pass rule's per-tensor first-pass sums (num_sums of them per
  // tensor, by param index) before the update's coefficients are taken from them; it may replace
  // them (sums over a whole tensor cut across processes). Every tensor then takes its two passes
  // apart.
  using CombineSums = std::function<void(double* sums, size_t num_tensors, int num_sums)>;
  CombineSums combine_sums;
  // The grads' per-tensor sums of squares (reduce.h's canonical order) and non-finite counts,
  // computed by the caller (the value_sums of an Accumulate step over these very grads, as
  // accumulators): the step takes them in place of its norm pass, with every option above
  // deciding as if it had summed them itself (the same bits). num_params() of each.
  const GradSums* grad_sums = nullptr;
  // For a rule that produces values (Accumulate): sum the squares of the new values and count
  // the non-finite ones per tensor as the update writes them (StepResult::value_sums), with no
  // norm pass; the other options must be off.
  bool value_sums = false;
};

// Per-tensor numbers of one step, by param index (global index, across groups).
struct Diagnostics {
  std::vector<double> grad_norm;         // L2 norm of each grad after unscaling, before clipping
  std::vector<int64_t> nonfinite_grads;  // its count of inf/NaN elements
  // Empty for a skipped step: L2 norms of each param's fp32 value before the update and of the
  // change it made, and their ratio (inf where the param was 0).
  std::vector<double> param_norm, update_norm, update_ratio;
};

struct StepResult {
  // The global L2 norm of the grads after unscaling, before clipping, where the step computed
  // it (max_grad_norm, skip_nonfinite, grad_norm or diagnostics).
  std::optional<double> grad_norm;
  bool skipped = false;  // the step was skipped for a non-finite grad
  std::optional<Diagnostics> diagnostics;
  std::optional<GradSums> value_sums;  // StepOptions::value_sums
};

class Optimizer {
 public:
  // Binds the tensors of every param group: each is validated once (device: host memory;
  // dtype; shape; writability; masters only for float16/bfloat16 params; no two tensors
  // overlapping), then never again. All groups must hold the same rule's hyperparameters,
  // each in range (the state arrays they need are checked by set_hyper and by each step). Throws TensorError (naming the tensor: "param 3", "grad 3", "master 3",
  // "exp_avg 3", indexed across groups) or std::invalid_argument; nothing is kept on error.
  explicit Optimizer(std::vector<ParamGroup> groups);
  // The same with the rule named (an optimizer over no param groups has no Hyper to tell it).
  Optimizer(RuleId rule, std::vector<ParamGroup> groups);
  ~Optimizer();
  // A moved-from optimizer may only be destroyed or assigned to.
  Optimizer(Optimizer&&) noexcept;
  Optimizer& operator=(Optimizer&&) noexcept;

  // One step over every param, in place. Nothing is written when it throws:
  // std::invalid_argument for bad options, a rule step < 1, a group whose hyperparameters need
  // more state arrays than were bound, or a schedule's lr out of range; std::overflow_error
  // when a step count reached 2**63 - 1.
  StepResult step(const StepOptions& options = {});

  RuleId rule() const;
  size_t num_groups() const;
  size_t num_params() const;

  // Group j's hyperparameters; set_hyper validates them (same rule, in range, no more state
  // arrays than were bound) and they apply from the next step. set_hypers sets every group's
  // (one per group), all or none.
  const Hyper& hyper(size_t group) const;
  void set_hyper(size_t group, const Hyper& h);
  void set_hypers(const std::vector<Hyper>& hypers);

  // Group j's lr from now on: lr_at(*schedule, steps()[j]) at each step (the schedule is
  // copied; std::invalid_argument if malformed, and a step refuses an lr it gives that is not
  // finite and >= 0); null: the Hyper's lr again. fastopt/schedule.h builds schedules.
  void set_schedule(size_t group, const Schedule* schedule);

  // The seed of stochastic rounding (default 0).
  void set_seed(uint64_t seed);

  // Steps taken by each group (skipped steps not counted); set_steps restores them from a
  // checkpoint (each >= 0). The rule's step is steps()[j] + 1, except SGD's: the count of its
  // momentum buffer's updates (steps taken with momentum != 0; torch.optim.SGD's semantics),
  // which set_steps also sets to `steps` (a checkpoint of a run that switched momentum on
  // mid-run resumes with StepOptions::rule_steps).
  const std::vector<int64_t>& steps() const;
  void set_steps(const std::vector<int64_t>& steps);

  // The tensors bound for param i (its state arrays and master: what a checkpoint saves and
  // restores, by writing their memory).
  const ParamTensors& tensors(size_t param) const;

  // New grad buffers, one per param in order (those equal to the bound ones are kept),
  // validated as at binding; nothing changes on an error.
  void set_grads(const std::vector<Tensor>& grads);

  // Per param: the sum of squares of the grad's (or the param's fp32 value's: its master's where
  // it has one; a param with a remainder: its bfloat16 half) elements in the canonical order of fastopt/reduce.h, and its non-finite count.
  void grad_sumsq(double* sums, int64_t* nonfinite) const;
  void param_sumsq(double* sums, int64_t* nonfinite) const;

  const char* isa() const;   // the kernels this optimizer runs: "avx512", "avx2" or "scalar"
  size_t num_tasks() const;  // the parallel tasks a one-pass rule's step is cut into

  struct Impl;

 private:
  struct Adopt {};  // (a tag: this constructor never competes with the public ones)
  Optimizer(Adopt, std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
  friend class BandwidthProbe;
};

// Rules with an eval point (rule_has_eval_point(rule): Schedule-Free) train at one point of each param,
// y, and are evaluated at another, x, kept through the param and the rule's first state array z.
// A mode switch moves every param between the two, in place, in one pass: its fp32 value p (its
// master where it has one, its bfloat16 half and remainder joined, or the param) becomes
// p + w (z - p), w given by its group's hyperparameters and the direction (Schedule-Free:
// 1 - 1/beta1 to x, 1 - beta1 back to y), and is stored as a step stores the param (rounded to
// nearest even, split into its remainder, Kahan-compensated, or rounded stochastically). It is not
// a step: no grad is read, no state written, no step count advanced. Which point the params hold
// is the caller's to track (python/fastopt/schedule_free.py does): a step taken at x trains from
// the wrong point.
class ModeSwitch {
 public:
  // `groups` as for an Optimizer of `rule`, each param's `grad` being its z (float32 or bfloat16,
  // the param's shape; the optimizer's state array) and its `state` empty. Validated as an
  // Optimizer validates its tensors (TensorError names z i as "grad i"); std::invalid_argument
  // for a rule without an eval point.
  ModeSwitch(RuleId rule, std::vector<ParamGroup> groups);
  ~ModeSwitch();
  ModeSwitch(ModeSwitch&&) noexcept;
  ModeSwitch& operator=(ModeSwitch&&) noexcept;

  // Moves the params of each group j to x (to_eval) or back to y, with its hyperparameters
  // hypers[j], where steps[j] (the steps group j has taken) > 0: before its first step a group's z
  // is not set (x = y = z), and it is left as it is. Stochastic rounding draws the bits of `seed`
  // at the pseudo-step 2^63 + 2 max(steps) + (1 to x, 0 to y), which no step draws.
  // std::invalid_argument, nothing written, for hyperparameters of another rule or out of range,
  // or a count per group that does not match.
  void run(const std::vector<Hyper>& hypers, const std::vector<int64_t>& steps, bool to_eval, uint64_t seed = 0);

  RuleId rule() const;
  size_t num_groups() const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

// The pseudo-step whose random bits a mode switch after `steps` steps (the most of any group)
// draws for stochastic rounding: 2^63 + 2 steps + to_eval (mod 2^64), none a step's.
uint64_t switch_round_step(int64_t steps, bool to_eval);

// The bandwidth probe: the engine's streams over a param's tensors with no arithmetic (each
// param is rewritten as param + 0 * grad, every state array rewritten as itself): the time a
// step takes at best. `params` as for an Optimizer (up to 3 state arrays each).
class BandwidthProbe {
 public:
  explicit BandwidthProbe(std::vector<ParamTensors> params);
  void run();
  const char* isa() const { return opt_.isa(); }
  size_t num_tasks() const { return opt_.num_tasks(); }

 private:
  Optimizer opt_;
};

// Per tensor, in one parallel pass: the sum of squares (canonical order) and the non-finite
// count of its elements (host memory, float32/float16/bfloat16; only read).
void sumsq(const std::vector<Tensor>& tensors, double* sums, int64_t* nonfinite);

// The global L2 norm of per-tensor sums of squares, combined in the canonical order.
double global_norm(const double* sums, size_t n);

// dst = the exact float32 value of every element of src (host memory, same shape): a master
// copy of a float16/bfloat16 param.
void widen(const Tensor& src, const Tensor& dst);

// dst (float32) = the fp32 masters that bfloat16 params `high` and their remainders `low`
// (uint16) hold together; split_master is the inverse (high = the masters truncated, low = the
// rest). Host memory, one shape.
void join_master(const Tensor& high, const Tensor& low, const Tensor& dst);
void split_master(const Tensor& src, const Tensor& high, const Tensor& low);

// The CPU targets: "avx512", "avx2", "scalar". cpu_isa() is the active one (FASTOPT_CPU_ISA
// if set, else the best this CPU runs); set_cpu_isa forces one for optimizers bound after it
// (std::invalid_argument if unknown or unsupported here).
const char* cpu_isa();
bool cpu_isa_supported(const std::string& name);
void set_cpu_isa(const std::string& name);

// The threads a step uses (the caller's included); default: the cores available.
int num_threads();
void set_num_threads(int n);  // n >= 1

}  // namespace fastopt
