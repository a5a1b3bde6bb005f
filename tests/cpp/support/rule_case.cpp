#include "support/rule_case.h"

namespace fastopt_test {

namespace {
using fastopt::DType;
#include "rule_cases.inc"
}  // namespace

const std::vector<RuleCase>& rule_cases() { return kRuleCases; }

fastopt::Hyper case_hyper(const RuleCase& c, size_t group) {
  fastopt::Hyper h = fastopt::default_hyper(fastopt::rule_id(c.rule));
  for (const Field& f : c.groups.at(group)) fastopt::set_field(h, f.name, f.value);
  return h;
}

CaseMemory::CaseMemory(const RuleCase& c) : case_(c) {
  for (const ParamCase& pc : c.params) {
    Param& p = params.emplace_back();
    p.param = Buffer(pc.param_dtype, pc.shape);
    p.param.set_bits(pc.init);
    p.grad = Buffer(pc.grad_dtype, pc.shape);
    if (pc.master) {
      p.master = Buffer(DType::f32, pc.shape);
      fastopt::widen(p.param.tensor(), p.master.tensor());
    }
    // (the state's shapes are the rule's: Adafactor's matrices keep a value per row and per column)
    const auto layout = fastopt::state_shapes(fastopt::rule_id(c.rule), pc.shape);
    for (size_t k = 0; k < pc.state_init.size(); ++k) {
      p.state.emplace_back(DType::f32, layout.at(k).second);
      p.state.back().set_bits(pc.state_init[k]);
    }
  }
}

std::vector<fastopt::ParamGroup> CaseMemory::groups() {
  std::vector<fastopt::ParamGroup> out;
  for (size_t j = 0; j < case_.groups.size(); ++j) out.push_back({case_hyper(case_, j), {}});
  for (size_t i = 0; i < params.size(); ++i) {
    Param& p = params[i];
    fastopt::ParamTensors t;
    t.param = p.param.tensor();
    t.grad = p.grad.tensor(/*readonly=*/true);  // grads are only read
    if (case_.params[i].master) t.master = p.master.tensor();
    for (Buffer& s : p.state) t.state.push_back(s.tensor());
    out.at(case_.params[i].group).params.push_back(t);
  }
  return out;
}

const std::vector<fastopt_param>& CaseMemory::c_params() {
  c_params_.clear();
  for (size_t i = 0; i < params.size(); ++i) {
    Param& p = params[i];
    p.c_state.clear();
    for (Buffer& s : p.state) p.c_state.push_back(s.c_tensor());
    fastopt_param cp{};
    cp.param = p.param.c_tensor();
    cp.grad = p.grad.c_tensor();
    if (case_.params[i].master) cp.master = p.master.c_tensor();
    cp.state = p.c_state.data();
    cp.num_state = int32_t(p.c_state.size());
    c_params_.push_back(cp);
  }
  return c_params_;
}

std::vector<int64_t> CaseMemory::group_sizes() const {
  std::vector<int64_t> sizes(case_.groups.size(), 0);
  for (const ParamCase& p : case_.params) ++sizes.at(p.group);
  return sizes;
}

void CaseMemory::load_grads(size_t k) {
  for (size_t i = 0; i < params.size(); ++i) params[i].grad.set_bits(case_.params[i].grads.at(k));
}

std::vector<Bits> CaseMemory::written() const {
  std::vector<Bits> out;
  for (const Param& p : params) {
    out.push_back(p.param.bits());
    out.push_back(p.master.bits());
    for (const Buffer& s : p.state) out.push_back(s.bits());
  }
  return out;
}

// The case's options at step k into `o`, a fastopt::StepOptions or a fastopt_step_options (the
// same field names).
template <class Options>
Options with_case_options(Options o, const RuleCase& c, size_t k) {
  o.grad_scale = c.steps.at(k).grad_scale;
  o.max_grad_norm = c.options.max_grad_norm;
  o.clip_value = c.options.clip_value;
  o.skip_nonfinite = c.options.skip_nonfinite;
  o.grad_norm = c.options.grad_norm;
  o.diagnostics = c.options.diagnostics;
  return o;
}

fastopt::StepOptions step_options(const RuleCase& c, size_t k) { return with_case_options(fastopt::StepOptions{}, c, k); }

fastopt_step_options c_step_options(const RuleCase& c, size_t k) {
  return with_case_options(fastopt_default_step_options(), c, k);
}

}  // namespace fastopt_test
