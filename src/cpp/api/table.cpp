#include "table.h"

#include "fastopt/element.h"
#include "fastopt/numeric/quantize8.h"
#include "fastopt/numeric/random.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <sstream>

namespace fastopt::api {
namespace {

const char* kOwnMemory = " (every tensor of a group must have its own memory)";

struct Named {
  const std::string* name;
  size_t order;  // position in the bind order, to name the later tensor first
  const Tensor* tensor;
};

// TensorError naming the later of two overlapping tensors.
void check_overlap(std::vector<Named> all) {
  all.erase(std::remove_if(all.begin(), all.end(), [](const Named& n) { return n.tensor->nbytes() == 0; }),
            all.end());
  std::sort(all.begin(), all.end(), [](const Named& a, const Named& b) {
    return static_cast<char*>(a.tensor->data) < static_cast<char*>(b.tensor->data);
  });
  auto end_of = [](const Named& n) { return static_cast<char*>(n.tensor->data) + n.tensor->nbytes(); };
  const Named* reach = nullptr;  // the tensor whose end lies furthest so far
  for (const Named& n : all) {
    if (reach && static_cast<char*>(n.tensor->data) < end_of(*reach)) {
      const bool same = n.tensor->data == reach->tensor->data && n.tensor->nbytes() == reach->tensor->nbytes();
      const Named& later = n.order > reach->order ? n : *reach;
      const Named& earlier = n.order > reach->order ? *reach : n;
      throw TensorError(*later.name + (same ? " is the same memory as " : " overlaps ") + *earlier.name + kOwnMemory);
    }
    if (!reach || end_of(n) > end_of(*reach)) reach = &n;
  }
}

std::string name(const std::string& role, size_t i) { return role + " " + std::to_string(i); }

// The names of param p's state arrays in binding order.
std::vector<std::string> names_of_state(RuleId rule, const Tensor& p) {
  return rule == RuleId::probe ? std::vector<std::string>(kMaxState, "state") : state_names(rule, int(p.shape.size()));
}

// Every tensor of t (grads[i] in place of param i's grad where given), named, in bind order.
void check_overlap(const Table& t, const std::vector<Tensor>* grads = nullptr) {
  std::vector<std::string> names;
  std::vector<const Tensor*> tensors;
  for (size_t i = 0; i < t.tensors.size(); ++i) {
    const ParamTensors& p = t.tensors[i];
    const std::vector<std::string> state_names = names_of_state(t.rule, p.param);
    names.push_back(name("param", i)), tensors.push_back(&p.param);
    names.push_back(name("grad", i)), tensors.push_back(grads ? &(*grads)[i] : &p.grad);
    if (p.master.data) names.push_back(name("master", i)), tensors.push_back(&p.master);
    if (p.remainder.data) names.push_back(name("remainder", i)), tensors.push_back(&p.remainder);
    if (p.compensation.data) names.push_back(name("compensation", i)), tensors.push_back(&p.compensation);
    for (size_t s = 0; s < p.state.size(); ++s) names.push_back(name(state_names[s], i)), tensors.push_back(&p.state[s]);
    for (size_t s = 0; s < p.state_absmax.size(); ++s) {
      names.push_back(name(state_names[s] + " absmax", i)), tensors.push_back(&p.state_absmax[s]);
    }
  }
  std::vector<Named> all;
  for (size_t k = 0; k < names.size(); ++k) {
    // New grads count as bound last: an overlap is theirs to report.
    const bool new_grad = grads && names[k].rfind("grad ", 0) == 0;
    all.push_back({&names[k], new_grad ? names.size() + k : k, tensors[k]});
  }
  check_overlap(all);
}

// Host memory counts as one device: pinned and pageable memory may mix on the CPU engine.
Device canonical(const Device& d) { return d.host() ? Device{} : d; }

void check_engine(const Tensor& x, const std::string& nm, int engine) {
  if (engine == Device::kCUDA ? x.device.type == Device::kCUDA : x.device.host()) return;
  throw TensorError(nm + ": is on " + x.device.str() +
                    (engine == Device::kCUDA ? "; the CUDA engine takes CUDA device memory"
                                             : "; the CPU engine takes host memory"));
}

void same_shape(const Tensor& v, const Tensor& p, const std::string& nm, const std::string& pn) {
  if (v.shape != p.shape) {
    throw TensorError(nm + ": shape " + v.shape_str() + " differs from " + pn + "'s shape " + p.shape_str());
  }
}

// Stream k of factored state (k 0: one value per row, 1: per column), of shape `want`.
void factored_shape(const Tensor& v, const std::vector<int64_t>& want, int k, const std::string& nm,
                    const std::string& pn) {
  if (v.shape != want) {
    Tensor w;
    w.shape = want;
    throw TensorError(nm + ": shape " + v.shape_str() + ", expected " + w.shape_str() + ": one value per " +
                      (k == 0 ? "row" : "column") + " of " + pn + "'s last two dims");
  }
}

void must_f32(const Tensor& v, const std::string& nm) {
  if (v.dtype != DType::f32) throw TensorError(nm + ": dtype " + std::string(dtype_name(v.dtype)) + ", expected float32");
}

void must_float(const Tensor& v, const std::string& nm) {
  if (v.dtype == DType::u16 || v.dtype == DType::u8) {
    throw TensorError(nm + ": dtype " + dtype_name(v.dtype) + " (fastopt takes float32, float16 and bfloat16)");
  }
}

void writable(const Tensor& v, const std::string& nm) {
  if (v.readonly) throw TensorError(nm + ": is read-only (fastopt updates it in place)");
}

// The grad of param i (named gn), checked against the param.
void check_grad(const Table& t, size_t i, const Tensor& g, const std::string& gn) {
  check_tensor(g, gn);
  must_float(g, gn);
  if (canonical(g.device) != canonical(t.device)) {
    throw TensorError(gn + " is on " + g.device.str() + " but the group is on " + canonical(t.device).str() +
                      ": all tensors of a group must be on one device");
  }
  same_shape(g, t.tensors[i].param, gn, name("param", i));
}

// How param i's state arrays (`x.state`, checked as tensors of the param's shape) are stored:
// their dtype, one for all, and its companions (absmax arrays, stochastic rounding).
StateStore state_store(const ParamTensors& x, RuleId rule, const std::string& pn,
                       const std::vector<std::string>& state_names, int engine, size_t i) {
  const DType d = x.state.empty() ? DType::f32 : x.state[0].dtype;
  for (size_t st = 0; st < x.state.size(); ++st) {
    const std::string sn = name(state_names[st], i);
    if (x.state[st].dtype != DType::f32 && x.state[st].dtype != DType::bf16 && x.state[st].dtype != DType::u8) {
      throw TensorError(sn + ": dtype " + dtype_name(x.state[st].dtype) + ", expected float32, bfloat16 or uint8");
    }
    if (x.state[st].dtype != d) {
      throw TensorError(sn + ": dtype " + dtype_name(x.state[st].dtype) + ", but " + name(state_names[0], i) +
                        " is " + dtype_name(d) + ": a param's state arrays share one dtype");
    }
  }
  if (x.state_stochastic_rounding && d != DType::bf16 && !x.state.empty()) {
    throw TensorError(pn + ": stochastic rounding of the state is for bfloat16 state arrays");
  }
  if (d != DType::u8) {
    if (!x.state_absmax.empty()) throw TensorError(pn + ": absmax arrays are for uint8 (8-bit) state");
    return d == DType::f32 ? StateStore::f32 : x.state_stochastic_rounding ? StateStore::bf16_stochastic : StateStore::bf16;
  }
  if (rule != RuleId::probe && !no_8bit_state(rule).empty()) {
    throw TensorError(pn + ": " + rule_name(rule) + " cannot keep 8-bit state: " + no_8bit_state(rule));
  }
  if (x.state_absmax.size() != x.state.size()) {
    throw TensorError(pn + ": uint8 (8-bit) state needs one absmax array per state array (" +
                      std::to_string(x.state.size()) + "), got " + std::to_string(x.state_absmax.size()));
  }
  const int64_t blocks = (x.param.numel() + quant::kQuantBlock - 1) / quant::kQuantBlock;
  for (size_t st = 0; st < x.state_absmax.size(); ++st) {
    const Tensor& a = x.state_absmax[st];
    const std::string an = name(state_names[st] + " absmax", i);
    check_tensor(a, an);
    check_engine(a, an, engine);
    writable(a, an);
    must_f32(a, an);
    if (a.numel() != blocks) {
      throw TensorError(an + ": shape " + a.shape_str() + ", expected (" + std::to_string(blocks) +
                        ",): one absmax per block of " + std::to_string(quant::kQuantBlock) + " elements");
    }
  }
  return StateStore::q8;
}

}  // namespace

void check_tensor(const Tensor& x, const std::string& nm) {
  if (int(x.dtype) > int(DType::u8)) {  // (DType is unsigned)
    throw TensorError(nm + ": unknown dtype code " + std::to_string(int(x.dtype)) +
                      " (dtypes: float32, float16, bfloat16; uint16 for remainders, uint8 for 8-bit state)");
  }
  int64_t n = 1, bytes = 0;
  for (int64_t d : x.shape) {
    if (d < 0) throw TensorError(nm + ": negative dimension in shape " + x.shape_str());
    if (__builtin_mul_overflow(n, d, &n) || __builtin_mul_overflow(n, int64_t(4), &bytes)) {
      throw TensorError(nm + ": shape " + x.shape_str() + " has more elements than memory can hold");
    }
  }
  if (!x.data && n > 0) throw TensorError(nm + ": null data pointer");
}

RuleId check_rule(RuleId rule) {
  if (rule == RuleId::probe) throw std::invalid_argument("the probe is a BandwidthProbe, not an optimizer");
  if (int(rule) < 0 || int(rule) >= int(RuleId::probe)) {
    throw std::invalid_argument("unknown rule id " + std::to_string(int(rule)));
  }
  return rule;
}

[[noreturn]] void throw_missing_state(size_t group) {
  throw std::invalid_argument("param group " + std::to_string(group) +
                              " was bound with fewer state arrays than its hyperparameters need");
}

Table bind(std::vector<ParamGroup> groups, RuleId rule, int engine) {
  if (rule == kRuleOfGroups) {
    if (groups.empty()) throw std::invalid_argument("no param groups: name the rule (Optimizer(rule, {}))");
    rule = rule_of(groups.front().hyper);
  }
  Table t;
  t.rule = rule;
  const bool factors = rule != RuleId::probe && factored_state(rule);
  // Devices first, so that a mixed group is reported as such.
  std::string first;
  for (const ParamGroup& g : groups) {
    for (const ParamTensors& p : g.params) {
      const size_t i = t.tensors.size();
      t.tensors.push_back(p);  // (copied: the table owns its descriptions)
      for (const auto& [x, nm] : {std::pair{&p.param, name("param", i)}, std::pair{&p.grad, name("grad", i)}}) {
        if (first.empty()) {
          t.device = canonical(x->device);
          first = nm;
        } else if (canonical(x->device) != t.device) {
          throw TensorError(nm + " is on " + x->device.str() + " but " + first + " is on " + t.device.str() +
                            ": all tensors of a group must be on one device");
        }
      }
    }
  }
  if (!first.empty()) t.device = canonical(t.tensors[0].param.device);
  else t.device = engine == Device::kCUDA ? Device{Device::kCUDA, 0} : Device{};
  t.group_state.assign(groups.size(), kMaxState);
  size_t i = 0;
  for (size_t j = 0; j < groups.size(); ++j) {
    if (rule != RuleId::probe) {
      if (groups[j].hyper.index() != size_t(rule)) {
        throw std::invalid_argument("param group " + std::to_string(j) + ": these hyperparameters are for another " +
                                    "optimizer (the group's rule is " + rule_name(rule) + ")");
      }
      const std::string err = hyper_error(groups[j].hyper);
      if (!err.empty()) throw std::invalid_argument("param group " + std::to_string(j) + ": " + err);
      t.hypers.push_back(groups[j].hyper);
    }
    for (size_t k = 0; k < groups[j].params.size(); ++k, ++i) {
      const ParamTensors& x = t.tensors[i];
      const std::string pn = name("param", i), gn = name("grad", i);
      check_tensor(x.param, pn);
      must_float(x.param, pn);
      check_engine(x.param, pn, engine);
      writable(x.param, pn);
      check_grad(t, i, x.grad, gn);
      TensorSlot s{};
      s.param = x.param.data;
      s.grad = x.grad.data;
      s.numel = x.param.numel();
      s.ndim = int(x.param.shape.size());
      s.param_dtype = x.param.dtype;
      s.grad_dtype = x.grad.dtype;
      s.hyper_index = int(j);
      if (x.master.data) {
        const std::string mn = name("master", i);
        if (x.param.dtype == DType::f32) {
          throw TensorError(pn + ": master weights are for float16/bfloat16 params; this one is float32");
        }
        check_tensor(x.master, mn);
        check_engine(x.master, mn, engine);
        writable(x.master, mn);
        must_f32(x.master, mn);
        same_shape(x.master, x.param, mn, pn);
        s.master = static_cast<float*>(x.master.data);
      }
      // A remainder or a compensation: a bfloat16 param's other 16 bits, instead of a master.
      const auto keep = [&](const Tensor& aux, const char* what, DType dtype) {
        const std::string an = name(what, i);
        if (x.param.dtype != DType::bf16) {
          throw TensorError(pn + ": a " + what + " is for bfloat16 params; this one is " + dtype_name(x.param.dtype));
        }
        if (x.master.data || (x.remainder.data && x.compensation.data)) {
          throw TensorError(pn + ": master weights, a remainder and a compensation are alternatives (one at most)");
        }
        check_tensor(aux, an);
        check_engine(aux, an, engine);
        writable(aux, an);
        if (aux.dtype != dtype) {
          throw TensorError(an + ": dtype " + std::string(dtype_name(aux.dtype)) + ", expected " + dtype_name(dtype));
        }
        same_shape(aux, x.param, an, pn);
        return aux.data;
      };
      s.tensor = int32_t(i);
      if (x.stochastic_rounding) {
        if (x.param.dtype == DType::f32 || x.master.data || x.remainder.data || x.compensation.data) {
          throw TensorError(pn + ": stochastic rounding is for float16/bfloat16 params without master weights, "
                                 "remainder or compensation");
        }
        s.stochastic = true;
      }
      if (x.remainder.data) s.remainder = static_cast<uint16_t*>(keep(x.remainder, "remainder", DType::u16));
      if (x.compensation.data) s.compensation = static_cast<bf16*>(keep(x.compensation, "compensation", DType::bf16));
      const std::vector<std::string> state_names = names_of_state(rule, x.param);
      const auto layout = rule == RuleId::probe ? decltype(state_shapes(rule, {})){} : state_shapes(rule, x.param.shape);
      if (x.state.size() > size_t(kMaxState) || x.state.size() > state_names.size()) {
        throw std::invalid_argument(pn + ": too many state arrays");
      }
      // Factored state: one value per row and per column of the last two dims (none to keep for
      // a param without elements: the engines leave it and its state alone).
      const bool factor = factors && s.ndim >= 2;
      if (factor && s.numel > 0) s.rows = x.param.shape[s.ndim - 2], s.cols = x.param.shape[s.ndim - 1];
      s.num_state = int(x.state.size());
      for (size_t st = 0; st < x.state.size(); ++st) {
        const std::string sn = name(state_names[st], i);
        check_tensor(x.state[st], sn);
        check_engine(x.state[st], sn, engine);
        writable(x.state[st], sn);
        if (factor) {
          factored_shape(x.state[st], layout[st].second, int(st), sn, pn);
        } else {
          same_shape(x.state[st], x.param, sn, pn);
        }
        s.state[st] = x.state[st].data;
      }
      s.state_store = state_store(x, rule, pn, state_names, engine, i);
      for (size_t st = 0; st < x.state_absmax.size(); ++st) {
        s.absmax[st] = static_cast<float*>(x.state_absmax[st].data);
        s.quant[st] = &quant::tables(rule == RuleId::probe || !(nonnegative_state(rule) >> st & 1));
      }
      // (a factored rule's param of < 2 dims holds all of its state in its unfactored streams)
      const bool whole = factors && !factor && s.num_state >= int(state_names.size());
      t.group_state[j] = std::min(t.group_state[j], whole ? kMaxState : s.num_state);
      t.slots.push_back(s);
    }
  }
  check_overlap(t);
  return t;
}

void check_group(const Table& t, size_t group) {
  if (group >= t.hypers.size()) {
    throw std::out_of_range("no param group " + std::to_string(group) + " (there are " +
                            std::to_string(t.hypers.size()) + ")");
  }
}

void check_rule_hyper(const Table& t, size_t group, const Hyper& h) {
  check_group(t, group);
  if (h.index() != size_t(t.rule)) {
    throw std::invalid_argument("these hyperparameters are for another optimizer (this one's rule is " +
                                std::string(rule_name(t.rule)) + ")");
  }
  const std::string err = hyper_error(h);
  if (!err.empty()) throw std::invalid_argument("param group " + std::to_string(group) + ": " + err);
}

void check_hyper(const Table& t, size_t group, const Hyper& h) {
  check_rule_hyper(t, group, h);
  if (t.group_state[group] < num_state(h)) throw_missing_state(group);
}

RuleId check_eval_point(RuleId rule) {
  check_rule(rule);
  if (!rule_has_eval_point(rule)) {
    throw std::invalid_argument(std::string(rule_name(rule)) + " has no eval point apart from its params: nothing to "
                                "switch (mode switches are Schedule-Free's)");
  }
  return rule;
}

}  // namespace fastopt::api

namespace fastopt {

uint64_t switch_round_step(int64_t steps, bool to_eval) {
  return (uint64_t(1) << 63) + 2 * uint64_t(steps) + (to_eval ? 1 : 0);
}

}  // namespace fastopt

namespace fastopt::api {

GradTransform switch_transform(const std::vector<int64_t>& steps, bool to_eval, uint64_t seed) {
  const int64_t most = steps.empty() ? 0 : *std::max_element(steps.begin(), steps.end());
  return GradTransform{1.0f, 0.0f, random::step_key(seed, switch_round_step(most, to_eval))};
}

const Hyper& hyper(const Table& t, size_t group) {
  check_group(t, group);
  return t.hypers[group];
}

void set_hyper(Table& t, size_t group, const Hyper& h) {
  check_hyper(t, group, h);
  t.hypers[group] = h;
}

void set_hypers(Table& t, const std::vector<Hyper>& hs) {
  if (hs.size() != t.hypers.size()) {
    throw std::invalid_argument("got " + std::to_string(hs.size()) + " hyperparameter sets for " +
                                std::to_string(t.hypers.size()) + " param groups");
  }
  for (size_t j = 0; j < hs.size(); ++j) check_hyper(t, j, hs[j]);
  t.hypers = hs;
}

void check_schedule(const Schedule& s) {
  const auto bad = [](const std::string& why) { throw std::invalid_argument("malformed schedule: " + why); };
  if (s.num_segments < 1 || s.num_segments > Schedule::kMaxSegments) bad("num_segments out of [1, 8]");
  if (s.num_milestones < 0 || s.num_milestones > Schedule::kMaxMilestones) bad("num_milestones out of [0, 8]");
  if (s.start[0] != 0) bad("the first segment must start at step 0");
  for (int i = 0; i < s.num_segments; ++i) {
    const ScheduleSegment& g = s.seg[i];
    if (i > 0 && s.start[i] <= s.start[i - 1]) bad("segment starts must increase");
    if (g.kind < 0 || g.kind > int32_t(ScheduleKind::anneal)) bad("unknown kind " + std::to_string(g.kind));
    if (g.kind == int32_t(ScheduleKind::multistep) && (g.opt < 0 || g.n < 0 || g.opt + g.n > s.num_milestones)) {
      bad("multistep milestones out of range");
    }
    if ((g.kind == int32_t(ScheduleKind::anneal) && (g.opt < 0 || g.opt > int32_t(AnnealShape::one_minus_sqrt))) ||
        (g.kind == int32_t(ScheduleKind::one_cycle) && (g.opt < 0 || g.opt > 3))) {
      bad("unknown shape " + std::to_string(g.opt));
    }
  }
}

void check_has_lr(const Table& t, const char* what) {
  with_rule(t.rule, [&](auto rule) {
    if (!has_lr<typename decltype(rule)::Hyper>::value) {
      throw std::invalid_argument(std::string(what) + ": the " + rule_name(t.rule) + " rule has no lr");
    }
  });
}

void check_scheduled_lr(size_t group, double lr, int64_t step) {
  if (!(lr >= 0 && std::isfinite(lr))) {
    std::ostringstream s;
    s << "param group " << group << ": its schedule gives lr " << lr << " at step " << step
      << " (an lr must be finite and >= 0)";
    throw std::invalid_argument(s.str());
  }
}

const ParamTensors& tensors(const Table& t, size_t param) {
  if (param >= t.tensors.size()) {
    throw std::out_of_range("no param " + std::to_string(param) + " (there are " + std::to_string(t.tensors.size()) +
                            ")");
  }
  return t.tensors[param];
}

bool set_grads(Table& t, const std::vector<Tensor>& grads) {
  if (grads.size() != t.tensors.size()) {
    throw std::invalid_argument("got " + std::to_string(grads.size()) + " grads for " +
                                std::to_string(t.tensors.size()) + " params");
  }
  bool changed = false;
  for (size_t i = 0; i < grads.size(); ++i) {
    const Tensor& g = grads[i];
    const Tensor& old = t.tensors[i].grad;
    if (g.data == old.data && g.dtype == old.dtype && g.shape == old.shape && g.device == old.device) continue;
    check_grad(t, i, g, name("grad", i));
    changed = true;
  }
  if (!changed) return false;
  check_overlap(t, &grads);
  for (size_t i = 0; i < grads.size(); ++i) {
    t.tensors[i].grad = grads[i];
    t.slots[i].grad = grads[i].data;
    t.slots[i].grad_dtype = grads[i].dtype;
  }
  return true;
}

float unscale_factor(double grad_scale) {
  const float inv = grad_scale > 0 ? float(1.0 / grad_scale) : INFINITY;
  if (!(std::isfinite(grad_scale) && std::isfinite(inv))) {  // a finite grad times an inf factor is NaN
    std::ostringstream s;
    s << "grad_scale must be finite and > 0 with a finite float32 reciprocal (>= " << 1.0 / double(FLT_MAX)
      << "), got " << grad_scale;
    throw std::invalid_argument(s.str());
  }
  return inv;
}

void check_options(const StepOptions& o) {
  unscale_factor(o.grad_scale);
  const auto bad = [](const char* what, double v) {
    std::ostringstream s;
    s << what << " must be finite and >= 0 (0: off), got " << v;
    throw std::invalid_argument(s.str());
  };
  if (!(o.max_grad_norm >= 0 && std::isfinite(o.max_grad_norm))) bad("max_grad_norm", o.max_grad_norm);
  if (!(o.clip_value >= 0 && std::isfinite(o.clip_value))) bad("clip_value", o.clip_value);
  if (o.grad_factor && (o.grad_scale != 1.0 || o.max_grad_norm > 0 || o.skip_nonfinite || o.grad_norm ||
                        o.diagnostics)) {
    throw std::invalid_argument(
        "grad_factor is the whole grad multiplier: grad_scale must be 1 and max_grad_norm, skip_nonfinite, "
        "grad_norm and diagnostics off");
  }
  if (o.grad_sums && o.grad_factor) throw std::invalid_argument("grad_sums and grad_factor exclude each other");
  if (o.value_sums && (o.grad_scale != 1.0 || o.max_grad_norm > 0 || o.clip_value > 0 || o.skip_nonfinite ||
                       o.grad_norm || o.diagnostics || o.grad_factor || o.grad_sums)) {
    throw std::invalid_argument("value_sums sums the new values of a plain update: the other step options must be off");
  }
}

void check_can_count(const std::vector<int64_t>& counts) {
  for (size_t j = 0; j < counts.size(); ++j) {
    if (counts[j] == INT64_MAX) {
      throw std::overflow_error("param group " + std::to_string(j) +
                                ": the step count reached 2**63 - 1, the most it can hold");
    }
  }
}

std::vector<int64_t> rule_steps(const StepOptions& o, const std::vector<int64_t>& counts) {
  if (!o.rule_steps) check_can_count(counts);
  std::vector<int64_t> steps(counts.size());
  for (size_t j = 0; j < counts.size(); ++j) {
    steps[j] = o.rule_steps ? o.rule_steps[j] : counts[j] + 1;
    if (steps[j] < 1) throw std::invalid_argument("step must be >= 1, got " + std::to_string(steps[j]));
  }
  return steps;
}

void check_steps(const Table& t, const std::vector<int64_t>& steps) {
  if (steps.size() != t.hypers.size()) {
    throw std::invalid_argument("got " + std::to_string(steps.size()) + " step counts for " +
                                std::to_string(t.hypers.size()) + " param groups");
  }
  for (int64_t s : steps) {
    if (s < 0) throw std::invalid_argument("step counts must be >= 0, got " + std::to_string(s));
  }
}

}  // namespace fastopt::api
