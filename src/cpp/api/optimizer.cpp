// The CPU engine behind fastopt::Optimizer: a validated table (table.h), the engine's task
// table (cpu/group.h), and the step's sequence: the grad norm pass where an option needs it,
// the clip and skip decision (fastopt/step_control.h), then the update pass.
#include "fastopt/optimizer.h"

#include <algorithm>
#include <cmath>
#include <memory>

#include "../cpu/group.h"
#include "../cpu/isa.h"
#include "../cpu/pool.h"
#include "../cpu/reduce.h"
#include "fastopt/numeric/convert.h"
#include "fastopt/numeric/random.h"
#include "fastopt/reduce.h"
#include "fastopt/step_control.h"
#include "table.h"

namespace fastopt {

struct Optimizer::Impl {
  api::Table table;
  cpu::Group group;
  std::vector<std::optional<Schedule>> schedules;
  std::vector<int64_t> steps;
  std::vector<int64_t> buffer_steps;  // steps taken with state arrays in use (Sgd::counts_buffer_updates)
  uint64_t seed = 0;                  // of stochastic rounding
  mutable std::unique_ptr<cpu::Reducer> grad_reducer, param_reducer;  // built on first use

  Impl(std::vector<ParamGroup> groups, RuleId rule)
      : table(api::bind(std::move(groups), rule, Device::kCPU)),
        group(table.rule, table.slots),
        schedules(table.hypers.size()),
        steps(table.hypers.size(), 0),
        buffer_steps(table.hypers.size(), 0) {}

  // The counts the rule steps follow (the rule's step is the count + 1): the optimizer steps,
  // or for a rule that counts buffer updates (SGD), the steps taken with its buffer; a step
  // without the buffer sees 1.
  std::vector<int64_t> rule_counts() const {
    return with_rule(table.rule, [&](auto rule) {
      using Rule = decltype(rule);
      if constexpr (api::counts_buffer_updates<Rule>::value) {
        std::vector<int64_t> c(buffer_steps.size());
        for (size_t j = 0; j < c.size(); ++j) {
          c[j] = num_state(table.hypers[j]) > 0 ? buffer_steps[j] : std::max<int64_t>(buffer_steps[j], 1) - 1;
        }
        return c;
      } else {
        return steps;
      }
    });
  }

  void count_step() {
    for (size_t j = 0; j < steps.size(); ++j) {
      ++steps[j];
      if (num_state(table.hypers[j]) > 0) ++buffer_steps[j];
    }
  }

  cpu::Reducer& reducer(bool grads) const {
    std::unique_ptr<cpu::Reducer>& r = grads ? grad_reducer : param_reducer;
    if (!r) {
      std::vector<cpu::Span> spans;
      for (const TensorSlot& t : table.slots) {
        spans.push_back(grads ? cpu::Span{t.grad, t.grad_dtype, t.numel}
                        : t.master ? cpu::Span{t.master, DType::f32, t.numel}
                                   : cpu::Span{t.param, t.param_dtype, t.numel});
      }
      r = std::make_unique<cpu::Reducer>(spans);
    }
    return *r;
  }

  // The update pass with grads multiplied by `factor` and clamped to +-clip; per-tensor sums of
  // squared updates and old values into diag (2 per tensor) where not null.
  void update(const std::vector<int64_t>& rule_steps, float factor, float clip, int64_t round_step,
              const StepOptions::CombineSums& combine, double* diag) {
    with_rule(table.rule, [&](auto rule) {
      using Rule = decltype(rule);
      using C = typename Rule::Coeffs;
      std::vector<typename Rule::Hyper> hypers = api::hypers_of<Rule>(table);
      for (size_t j = 0; j < hypers.size(); ++j) {
        if (schedules[j]) {
          const double lr = lr_at(*schedules[j], steps[j]);
          api::check_scheduled_lr(j, lr, steps[j]);
          set_lr(hypers[j], lr);
        }
      }
      const auto coeffs = api::step_coeffs<Rule>(table, hypers, rule_steps);
      const GradTransform x{factor, clip, random::step_key(seed, uint64_t(round_step))};
      if constexpr (num_sums<Rule>::value > 0) {  // two passes: per-tensor sums, then Coeffs
        const cpu::Group::FinishFn finish = [](const void* c, const double* sums, const TensorSlot& t, void* out) {
          *static_cast<C*>(out) = Rule::finish(tensor_coeffs<Rule>(*static_cast<const C*>(c), t), sums, t);
        };
        group.run_two_pass(coeffs.data(), sizeof(C), x, num_sums<Rule>::value, finish, sizeof(C), combine, diag);
      } else {
        group.run(coeffs.data(), sizeof(C), x, diag);
      }
    });
  }

  StepResult step(const StepOptions& o) {
    api::check_options(o);
    const float inv = api::unscale_factor(o.grad_scale);
    api::check_can_count(steps);
    const std::vector<int64_t> rule_steps = api::rule_steps(o, rule_counts());
    const int64_t round_step = o.round_step > 0 ? o.round_step
                               : steps.empty() ? 1
                                               : *std::max_element(steps.begin(), steps.end()) + 1;
    StepResult result;
    float factor = o.grad_factor.value_or(inv);
    const size_t n = table.slots.size();
    if (o.value_sums) {
      with_rule(table.rule, [](auto rule) {
        if (!sums_values<decltype(rule)>::value) {
          throw std::invalid_argument("value_sums is for a rule that produces values (accumulate)");
        }
      });
      std::vector<double> diag(2 * n);
      update(rule_steps, factor, o.clip_value, round_step, o.combine_sums, diag.data());
      count_step();
      GradSums v{std::vector<double>(n), std::vector<int64_t>(n)};
      for (size_t i = 0; i < n; ++i) v.sumsq[i] = diag[2 * i], v.nonfinite[i] = int64_t(diag[2 * i + 1]);
      result.value_sums = std::move(v);
      return result;
    }
    if (o.grad_sums && (o.grad_sums->sumsq.size() != n || o.grad_sums->nonfinite.size() != n)) {
      throw std::invalid_argument("grad_sums holds " + std::to_string(o.grad_sums->sumsq.size()) + " sums and " +
                                  std::to_string(o.grad_sums->nonfinite.size()) + " counts for " + std::to_string(n) +
                                  " params");
    }
    if (o.max_grad_norm > 0 || o.skip_nonfinite || o.grad_norm || o.diagnostics) {
      std::vector<double> sums(n);
      std::vector<int64_t> bad(n);
      if (o.grad_sums) {
        sums = o.grad_sums->sumsq, bad = o.grad_sums->nonfinite;
      } else {
        reducer(true).run(sums.data(), bad.data());
      }
      int64_t nonfinite = 0;
      for (int64_t b : bad) nonfinite += b;
      const StepControl c =
          step_control(inv, reduce::combine_tensors(sums.data(), int64_t(n)), nonfinite, o.skip_nonfinite,
                       o.max_grad_norm);
      result.grad_norm = c.norm;
      result.skipped = c.skip;
      factor = c.factor;
      if (o.diagnostics) {
        Diagnostics d;
        for (double s : sums) d.grad_norm.push_back(std::sqrt(s) * double(inv));
        d.nonfinite_grads = std::move(bad);
        result.diagnostics = std::move(d);
      }
      if (c.skip) return result;
    }
    if (o.diagnostics) {
      std::vector<double> diag(2 * n);
      update(rule_steps, factor, o.clip_value, round_step, o.combine_sums, diag.data());
      Diagnostics& d = *result.diagnostics;
      for (size_t i = 0; i < n; ++i) {
        d.update_norm.push_back(std::sqrt(diag[2 * i]));
        d.param_norm.push_back(std::sqrt(diag[2 * i + 1]));
        d.update_ratio.push_back(d.update_norm[i] / d.param_norm[i]);
      }
    } else {
      update(rule_steps, factor, o.clip_value, round_step, o.combine_sums, nullptr);
    }
    count_step();
    return result;
  }
};

Optimizer::Optimizer(Adopt, std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Optimizer::Optimizer(RuleId rule, std::vector<ParamGroup> groups)
    : impl_(std::make_unique<Impl>(std::move(groups), api::check_rule(rule))) {}

Optimizer::Optimizer(std::vector<ParamGroup> groups)
    : impl_(std::make_unique<Impl>(std::move(groups), api::kRuleOfGroups)) {}

Optimizer::~Optimizer() = default;
Optimizer::Optimizer(Optimizer&&) noexcept = default;
Optimizer& Optimizer::operator=(Optimizer&&) noexcept = default;

StepResult Optimizer::step(const StepOptions& options) { return impl_->step(options); }
RuleId Optimizer::rule() const { return impl_->table.rule; }
size_t Optimizer::num_groups() const { return impl_->table.hypers.size(); }
size_t Optimizer::num_params() const { return impl_->table.tensors.size(); }

const Hyper& Optimizer::hyper(size_t group) const { return api::hyper(impl_->table, group); }
void Optimizer::set_hyper(size_t group, const Hyper& h) { api::set_hyper(impl_->table, group, h); }
void Optimizer::set_hypers(const std::vector<Hyper>& hs) { api::set_hypers(impl_->table, hs); }

void Optimizer::set_schedule(size_t group, const Schedule* schedule) {
  api::check_group(impl_->table, group);
  if (schedule) api::check_schedule(*schedule);
  if (schedule) api::check_has_lr(impl_->table, "set_schedule");
  impl_->schedules[group] = schedule ? std::optional<Schedule>(*schedule) : std::nullopt;
}

const std::vector<int64_t>& Optimizer::steps() const { return impl_->steps; }

void Optimizer::set_seed(uint64_t seed) { impl_->seed = seed; }

void Optimizer::set_steps(const std::vector<int64_t>& steps) {
  api::check_steps(impl_->table, steps);
  impl_->steps = impl_->buffer_steps = steps;
}

const ParamTensors& Optimizer::tensors(size_t param) const { return api::tensors(impl_->table, param); }

void Optimizer::set_grads(const std::vector<Tensor>& grads) {
  if (api::set_grads(impl_->table, grads)) {
    impl_->group.set_grads(impl_->table.slots);
    impl_->grad_reducer.reset();
  }
}

void Optimizer::grad_sumsq(double* sums, int64_t* nonfinite) const { impl_->reducer(true).run(sums, nonfinite); }
void Optimizer::param_sumsq(double* sums, int64_t* nonfinite) const { impl_->reducer(false).run(sums, nonfinite); }
const char* Optimizer::isa() const { return impl_->group.isa(); }
size_t Optimizer::num_tasks() const { return impl_->group.num_tasks(); }

struct ModeSwitch::Impl {
  api::Table table;
  cpu::Group group;

  Impl(std::vector<ParamGroup> groups, RuleId rule)
      : table(api::bind(std::move(groups), api::check_eval_point(rule), Device::kCPU)), group(table.rule, table.slots) {}
};

ModeSwitch::ModeSwitch(RuleId rule, std::vector<ParamGroup> groups)
    : impl_(std::make_unique<Impl>(std::move(groups), rule)) {}
ModeSwitch::~ModeSwitch() = default;
ModeSwitch::ModeSwitch(ModeSwitch&&) noexcept = default;
ModeSwitch& ModeSwitch::operator=(ModeSwitch&&) noexcept = default;
RuleId ModeSwitch::rule() const { return impl_->table.rule; }
size_t ModeSwitch::num_groups() const { return impl_->table.hypers.size(); }

void ModeSwitch::run(const std::vector<Hyper>& hypers, const std::vector<int64_t>& steps, bool to_eval, uint64_t seed) {
  with_rule(impl_->table.rule, [&](auto rule) {
    using Rule = decltype(rule);
    const auto coeffs = api::switch_coeffs<Rule>(impl_->table, hypers, steps, to_eval);
    impl_->group.run(coeffs.data(), sizeof(typename Rule::Coeffs), api::switch_transform(steps, to_eval, seed));
  });
}

namespace {
volatile float probe_zero = 0.0f;  // read at run time, so the probe's work cannot be elided
}

BandwidthProbe::BandwidthProbe(std::vector<ParamTensors> params)
    : opt_(Optimizer::Adopt{}, std::make_unique<Optimizer::Impl>(std::vector<ParamGroup>{ParamGroup{{}, std::move(params)}},
                                             RuleId::probe)) {}

void BandwidthProbe::run() {
  const float coeffs[1] = {probe_zero};
  opt_.impl_->group.run(coeffs, sizeof(coeffs));
}

// Host memory of float32/float16/bfloat16, named `name` in errors.
static void check_host(const Tensor& t, const std::string& name) {
  api::check_tensor(t, name);
  if (!t.device.host()) throw TensorError(name + ": is on " + t.device.str() + "; the CPU engine takes host memory");
}

void sumsq(const std::vector<Tensor>& tensors, double* sums, int64_t* nonfinite) {
  std::vector<cpu::Span> spans;
  for (size_t i = 0; i < tensors.size(); ++i) {
    check_host(tensors[i], "tensor " + std::to_string(i));
    spans.push_back({tensors[i].data, tensors[i].dtype, tensors[i].numel()});
  }
  cpu::Reducer(spans).run(sums, nonfinite);
}

double global_norm(const double* sums, size_t n) { return std::sqrt(reduce::combine_tensors(sums, int64_t(n))); }

template <class T>
static void widen_from(const void* src, float* dst, int64_t n) {
  const T* s = static_cast<const T*>(src);
  for (int64_t i = 0; i < n; ++i) dst[i] = to_f32(s[i]);
}

void widen(const Tensor& src, const Tensor& dst) {
  check_host(src, "source");
  check_host(dst, "destination");
  if (dst.dtype != DType::f32 || dst.readonly || dst.shape != src.shape) {
    throw std::invalid_argument("destination must be a writable float32 array of the source's shape");
  }
  float* out = static_cast<float*>(dst.data);
  switch (src.dtype) {
    case DType::f32: widen_from<float>(src.data, out, src.numel()); break;
    case DType::f16: widen_from<f16>(src.data, out, src.numel()); break;
    case DType::bf16: widen_from<bf16>(src.data, out, src.numel()); break;
    default: throw TensorError(std::string("source: dtype ") + dtype_name(src.dtype) +
                               " (fastopt takes float32, float16 and bfloat16)");
  }
}

// The three tensors of a master kept as a remainder: bfloat16 high halves, uint16 low halves,
// float32 masters, all of one shape in host memory.
static void check_halves(const Tensor& high, const Tensor& low, const Tensor& master, bool writes_master) {
  check_host(high, "param");
  check_host(low, "remainder");
  check_host(master, "master");
  if (high.dtype != DType::bf16 || low.dtype != DType::u16 || master.dtype != DType::f32 ||
      high.shape != low.shape || high.shape != master.shape) {
    throw std::invalid_argument("expected a bfloat16 param, a uint16 remainder and a float32 master of one shape");
  }
  if (writes_master ? master.readonly : high.readonly || low.readonly) {
    throw std::invalid_argument("the arrays written must be writable");
  }
}

void join_master(const Tensor& high, const Tensor& low, const Tensor& dst) {
  check_halves(high, low, dst, true);
  const bf16* h = static_cast<const bf16*>(high.data);
  const uint16_t* l = static_cast<const uint16_t*>(low.data);
  float* out = static_cast<float*>(dst.data);
  for (int64_t i = 0; i < dst.numel(); ++i) out[i] = join_remainder(h[i], l[i]);
}

void split_master(const Tensor& src, const Tensor& high, const Tensor& low) {
  check_halves(high, low, src, false);
  const float* in = static_cast<const float*>(src.data);
  bf16* h = static_cast<bf16*>(high.data);
  uint16_t* l = static_cast<uint16_t*>(low.data);
  for (int64_t i = 0; i < src.numel(); ++i) split_remainder(in[i], h[i], l[i]);
}

const char* cpu_isa() { return cpu::active_kernels().isa; }
bool cpu_isa_supported(const std::string& name) { return cpu::isa_supported(name); }
void set_cpu_isa(const std::string& name) { cpu::set_isa(name); }
int num_threads() { return cpu::ThreadPool::instance().num_threads(); }
void set_num_threads(int n) { cpu::ThreadPool::instance().set_num_threads(n); }

}  // namespace fastopt
