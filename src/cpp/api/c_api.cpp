// The C ABI over fastopt::Optimizer: C types in, the C++ API's exceptions turned into status
// codes and a per-thread message.
#include "fastopt/c_api.h"

#include <algorithm>
#include <cmath>
#include <new>
#include <string>

#include "fastopt/optimizer.h"

struct fastopt_optimizer {
  fastopt::Optimizer opt;
  std::optional<fastopt::Diagnostics> diagnostics;  // the last step's
};

namespace {

thread_local std::string last_error;

// f() with every exception turned into a status and the message kept.
template <class F>
fastopt_status guard(F&& f) {
  try {
    f();
    last_error.clear();
    return FASTOPT_OK;
  } catch (const fastopt::TensorError& e) {
    last_error = e.what();
    return FASTOPT_ERROR_TENSOR;
  } catch (const std::invalid_argument& e) {
    last_error = e.what();
    return FASTOPT_ERROR_ARGUMENT;
  } catch (const std::out_of_range& e) {
    last_error = e.what();
    return FASTOPT_ERROR_ARGUMENT;
  } catch (const std::bad_alloc&) {
    last_error = "out of memory";
    return FASTOPT_ERROR_RUNTIME;
  } catch (const std::exception& e) {
    last_error = e.what();
    return FASTOPT_ERROR_RUNTIME;
  } catch (...) {
    last_error = "unknown error";
    return FASTOPT_ERROR_RUNTIME;
  }
}

void need(const void* p, const char* what) {
  if (!p) throw std::invalid_argument(std::string(what) + " is NULL");
}

fastopt::Tensor tensor(const fastopt_tensor& t, const std::string& name) {
  if (t.ndim < 0 || (t.ndim > 0 && !t.shape)) throw fastopt::TensorError(name + ": bad shape (ndim < 0 or NULL shape)");
  // (DType holds a byte: other codes are refused here, those it holds by the validation.)
  if (t.dtype < 0 || t.dtype > 255) {
    throw fastopt::TensorError(name + ": unknown dtype code " + std::to_string(t.dtype) +
                               " (dtypes: float32, float16, bfloat16; uint16 for remainders, uint8 for 8-bit state)");
  }
  return fastopt::Tensor(t.data, std::vector<int64_t>(t.shape, t.shape + t.ndim), fastopt::DType(t.dtype),
                         fastopt::Device{t.device_type, t.device_id}, t.readonly != 0);
}

size_t group_index(const fastopt_optimizer* opt, int32_t group) {
  need(opt, "optimizer");
  if (group < 0 || size_t(group) >= opt->opt.num_groups()) {
    throw std::out_of_range("no param group " + std::to_string(group) + " (there are " +
                            std::to_string(opt->opt.num_groups()) + ")");
  }
  return size_t(group);
}

// Per-param sums of squares and non-finite counts into the caller's arrays (either may be NULL).
template <class F>
fastopt_status sums_into(const fastopt_optimizer* opt, double* sums, int64_t* nonfinite, F&& run) {
  return guard([&] {
    need(opt, "optimizer");
    const size_t n = opt->opt.num_params();
    std::vector<double> s(n);
    std::vector<int64_t> bad(n);
    run(s.data(), bad.data());
    if (sums) std::copy(s.begin(), s.end(), sums);
    if (nonfinite) std::copy(bad.begin(), bad.end(), nonfinite);
  });
}

}  // namespace

extern "C" {

const char* fastopt_last_error(void) { return last_error.c_str(); }

fastopt_status fastopt_optimizer_create(const char* rule, const fastopt_param* params, int64_t num_params,
                                        const int64_t* group_sizes, int32_t num_groups, fastopt_optimizer** out) {
  return guard([&] {
    need(rule, "rule");
    need(out, "out");
    *out = nullptr;
    if (num_params < 0 || num_groups < 0) throw std::invalid_argument("negative num_params or num_groups");
    if (num_params > 0) need(params, "params");
    if (num_groups > 0) need(group_sizes, "group_sizes");
    const fastopt::RuleId id = fastopt::rule_id(rule);
    std::vector<fastopt::ParamGroup> groups;
    int64_t i = 0;
    for (int32_t j = 0; j < num_groups; ++j) {
      fastopt::ParamGroup& g = groups.emplace_back();
      g.hyper = fastopt::default_hyper(id);
      if (group_sizes[j] < 0 || group_sizes[j] > num_params - i) {
        throw std::invalid_argument("group_sizes must add up to num_params");
      }
      for (int64_t k = 0; k < group_sizes[j]; ++k, ++i) {
        const fastopt_param& p = params[i];
        const std::string n = std::to_string(i);
        fastopt::ParamTensors& t = g.params.emplace_back();
        t.param = tensor(p.param, "param " + n);
        t.grad = tensor(p.grad, "grad " + n);
        if (p.master.data) t.master = tensor(p.master, "master " + n);
        if (p.remainder.data) t.remainder = tensor(p.remainder, "remainder " + n);
        if (p.compensation.data) t.compensation = tensor(p.compensation, "compensation " + n);
        t.stochastic_rounding = p.stochastic_rounding != 0;
        if (p.num_state < 0 || (p.num_state > 0 && !p.state)) {
          throw std::invalid_argument("param " + n + ": bad state list (num_state < 0 or NULL state)");
        }
        const std::vector<std::string> names = fastopt::state_names(id, int(t.param.shape.size()));
        for (int32_t s = 0; s < p.num_state; ++s) {
          const std::string name = size_t(s) < names.size() ? names[size_t(s)] : "state " + std::to_string(s) + " of param";
          t.state.push_back(tensor(p.state[s], name + " " + n));
          if (p.state_absmax) t.state_absmax.push_back(tensor(p.state_absmax[s], name + " absmax " + n));
        }
        t.state_stochastic_rounding = p.state_stochastic_rounding != 0;
      }
    }
    if (i != num_params) throw std::invalid_argument("group_sizes must add up to num_params");
    *out = new fastopt_optimizer{fastopt::Optimizer(id, std::move(groups)), std::nullopt};
  });
}

void fastopt_optimizer_destroy(fastopt_optimizer* opt) { delete opt; }

fastopt_status fastopt_set_hyper(fastopt_optimizer* opt, int32_t group, const char* name, double value) {
  return guard([&] {
    const size_t j = group_index(opt, group);
    need(name, "name");
    fastopt::Hyper h = opt->opt.hyper(j);
    fastopt::set_field(h, name, value);
    opt->opt.set_hyper(j, h);
  });
}

fastopt_status fastopt_set_hypers(fastopt_optimizer* opt, int32_t group, const char* const* names,
                                  const double* values, int32_t n) {
  return guard([&] {
    const size_t j = group_index(opt, group);
    if (n < 0) throw std::invalid_argument("negative n");
    if (n > 0) need(names, "names"), need(values, "values");
    fastopt::Hyper h = opt->opt.hyper(j);
    for (int32_t k = 0; k < n; ++k) {
      need(names[k], "a name");
      fastopt::set_field(h, names[k], values[k]);
    }
    opt->opt.set_hyper(j, h);
  });
}

fastopt_status fastopt_get_hyper(const fastopt_optimizer* opt, int32_t group, const char* name, double* value) {
  return guard([&] {
    const size_t j = group_index(opt, group);
    need(name, "name");
    need(value, "value");
    *value = fastopt::get_field(opt->opt.hyper(j), name);
  });
}

const char* fastopt_state_name(const char* rule, int32_t k) {
  static thread_local std::string name;
  fastopt_status s = guard([&] {
    need(rule, "rule");
    const auto names = fastopt::state_names(fastopt::rule_id(rule));
    name = k >= 0 && size_t(k) < names.size() ? names[size_t(k)] : "";
  });
  return s == FASTOPT_OK && !name.empty() ? name.c_str() : nullptr;
}

fastopt_status fastopt_num_state(const fastopt_optimizer* opt, int32_t group, int32_t* out) {
  return guard([&] {
    need(out, "out");
    *out = fastopt::num_state(opt->opt.hyper(group_index(opt, group)));
  });
}

fastopt_step_options fastopt_default_step_options(void) {
  return fastopt_step_options{1.0, 0.0, 0.0f, 0, 0, 0, nullptr};
}

int32_t fastopt_abi_version(void) { return FASTOPT_ABI_VERSION; }

fastopt_status fastopt_step(fastopt_optimizer* opt, const fastopt_step_options* options, fastopt_step_result* result) {
  return guard([&] {
    need(opt, "optimizer");
    const fastopt_step_options o = options ? *options : fastopt_default_step_options();
    fastopt::StepOptions so;
    so.grad_scale = o.grad_scale;
    so.max_grad_norm = o.max_grad_norm;
    so.clip_value = o.clip_value;
    so.skip_nonfinite = o.skip_nonfinite != 0;
    so.grad_norm = o.grad_norm != 0;
    so.diagnostics = o.diagnostics != 0;
    so.rule_steps = o.rule_steps;
    fastopt::StepResult r = opt->opt.step(so);
    opt->diagnostics = std::move(r.diagnostics);
    if (result) *result = fastopt_step_result{r.grad_norm ? *r.grad_norm : NAN, r.skipped ? 1 : 0};
  });
}

fastopt_status fastopt_diagnostics(const fastopt_optimizer* opt, double* grad_norm, int64_t* nonfinite_grads,
                                   double* param_norm, double* update_norm, double* update_ratio) {
  return guard([&] {
    need(opt, "optimizer");
    if (!opt->diagnostics) throw std::invalid_argument("the last step had no diagnostics (step with diagnostics = 1)");
    const fastopt::Diagnostics& d = *opt->diagnostics;
    const size_t n = opt->opt.num_params();
    for (size_t i = 0; i < n; ++i) {
      const bool updated = !d.param_norm.empty();
      if (grad_norm) grad_norm[i] = d.grad_norm[i];
      if (nonfinite_grads) nonfinite_grads[i] = d.nonfinite_grads[i];
      if (param_norm) param_norm[i] = updated ? d.param_norm[i] : NAN;
      if (update_norm) update_norm[i] = updated ? d.update_norm[i] : NAN;
      if (update_ratio) update_ratio[i] = updated ? d.update_ratio[i] : NAN;
    }
  });
}

fastopt_status fastopt_set_seed(fastopt_optimizer* opt, uint64_t seed) {
  return guard([&] {
    need(opt, "optimizer");
    opt->opt.set_seed(seed);
  });
}

fastopt_status fastopt_get_steps(const fastopt_optimizer* opt, int64_t* steps, int32_t num_groups) {
  return guard([&] {
    need(opt, "optimizer");
    need(steps, "steps");
    if (num_groups < 0 || size_t(num_groups) != opt->opt.num_groups()) {
      throw std::invalid_argument("num_groups is " + std::to_string(num_groups) + ", the optimizer has " +
                                  std::to_string(opt->opt.num_groups()));
    }
    for (int32_t j = 0; j < num_groups; ++j) steps[j] = opt->opt.steps()[size_t(j)];
  });
}

fastopt_status fastopt_set_steps(fastopt_optimizer* opt, const int64_t* steps, int32_t num_groups) {
  return guard([&] {
    need(opt, "optimizer");
    need(steps, "steps");
    if (num_groups < 0) throw std::invalid_argument("negative num_groups");
    opt->opt.set_steps(std::vector<int64_t>(steps, steps + num_groups));
  });
}

fastopt_status fastopt_grad_sumsq(const fastopt_optimizer* opt, double* sums, int64_t* nonfinite) {
  return sums_into(opt, sums, nonfinite, [&](double* s, int64_t* b) { opt->opt.grad_sumsq(s, b); });
}

fastopt_status fastopt_param_sumsq(const fastopt_optimizer* opt, double* sums, int64_t* nonfinite) {
  return sums_into(opt, sums, nonfinite, [&](double* s, int64_t* b) { opt->opt.param_sumsq(s, b); });
}

fastopt_status fastopt_set_grads(fastopt_optimizer* opt, const fastopt_tensor* grads, int64_t num_params) {
  return guard([&] {
    need(opt, "optimizer");
    need(grads, "grads");
    if (num_params < 0) throw std::invalid_argument("negative num_params");
    std::vector<fastopt::Tensor> ts;
    for (int64_t i = 0; i < num_params; ++i) ts.push_back(tensor(grads[i], "grad " + std::to_string(i)));
    opt->opt.set_grads(ts);
  });
}

const char* fastopt_cpu_isa(void) {
  const char* isa = nullptr;
  guard([&] { isa = fastopt::cpu_isa(); });  // FASTOPT_CPU_ISA may name a target this CPU lacks
  return isa;
}

fastopt_status fastopt_set_num_threads(int32_t n) {
  return guard([&] { fastopt::set_num_threads(n); });
}

int32_t fastopt_get_num_threads(void) { return fastopt::num_threads(); }

}  // extern "C"
