// Bad input through the C++ API (the validation of src/cpp/api/table.cpp): each mistake gets its
// exception type (TensorError for a tensor, std::invalid_argument for hyperparameters and
// options, std::out_of_range for an index) and the message the Python API gives for the same
// mistake (copied from fastopt's Python side; "C++ only" marks mistakes Python cannot make),
// and nothing is written.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <sstream>

#include "fastopt/optimizer.h"
#include "support/adam_setup.h"
#include "support/expect.h"

namespace fastopt_test {
namespace {

using fastopt::TensorError;
using std::invalid_argument;

const char* kOwnMemory = " (every tensor of a group must have its own memory)";

class BadTensor : public AdamSetup {
 protected:
  // Binding the (spoiled) setup throws E with `message`, and nothing is written.
  template <class E>
  void expect_bind_error(const std::string& message) {
    initial = values();  // (as spoiled)
    EXPECT_TRUE(throws_exactly<E>([&] { optimizer(); }, message));
    expect_untouched();
  }
};

TEST_F(BadTensor, GradShape) {
  params[0].grad = Buffer::f32({1, 2, 3, 4});
  expect_bind_error<TensorError>("grad 0: shape (4,) differs from param 0's shape (3,)");
}

TEST_F(BadTensor, StateShape) {
  params[0].state[1] = Buffer(fastopt::DType::f32, {4});
  expect_bind_error<TensorError>("exp_avg_sq 0: shape (4,) differs from param 0's shape (3,)");
}

TEST_F(BadTensor, StateNotFloat32) {
  params[0].state[1] = Buffer(fastopt::DType::f16, {3});
  expect_bind_error<TensorError>("exp_avg_sq 0: dtype float16, expected float32, bfloat16 or uint8");
}

TEST_F(BadTensor, MasterOnFloat32Param) {
  params[0].master = Buffer(fastopt::DType::f32, {3});
  expect_bind_error<TensorError>("param 0: master weights are for float16/bfloat16 params; this one is float32");
}

TEST_F(BadTensor, MasterNotFloat32) {
  params[1].master = Buffer(fastopt::DType::f16, {4});
  expect_bind_error<TensorError>("master 1: dtype float16, expected float32");
}

TEST_F(BadTensor, ReadOnlyParam) {
  std::vector<fastopt::ParamGroup> g = groups();
  g[0].params[0].param.readonly = true;
  EXPECT_TRUE(throws_exactly<TensorError>([&] { fastopt::Optimizer(fastopt::RuleId::adam, std::move(g)); },
                                          "param 0: is read-only (fastopt updates it in place)"));
  expect_untouched();
}

TEST_F(BadTensor, ReadOnlyGradIsFine) {
  std::vector<fastopt::ParamGroup> g = groups();
  g[0].params[0].grad.readonly = true;
  fastopt::Optimizer opt(fastopt::RuleId::adam, std::move(g));
  opt.step();
  expect_changed();
}

TEST_F(BadTensor, ParamsOnTheSameMemory) {
  std::vector<fastopt::ParamGroup> g = groups();
  g[0].params[1] = g[0].params[0];  // (its grad and state as well: the params are named first)
  EXPECT_TRUE(throws_exactly<TensorError>([&] { fastopt::Optimizer(fastopt::RuleId::adam, std::move(g)); },
                                          std::string("param 1 is the same memory as param 0") + kOwnMemory));
  expect_untouched();
}

TEST_F(BadTensor, ParamsOverlapping) {
  Buffer shared = Buffer::f32({1, 2, 3, 4, 5, 6, 7, 8});
  Buffer g0 = Buffer::f32({1, 1, 1, 1, 1}), g1 = Buffer::f32({1, 1, 1, 1, 1});
  const Bits before = shared.bits();
  fastopt::Sgd::Hyper h;
  h.lr = 0.1;
  auto sgd_param = [](float* p, Buffer& g) {
    fastopt::ParamTensors t;
    t.param = fastopt::Tensor(p, 5);
    t.grad = g.tensor();
    return t;
  };
  // param 0: elements 0..4, param 1: elements 3..7.
  std::vector<fastopt::ParamGroup> groups{{h, {sgd_param(shared.floats(), g0), sgd_param(shared.floats() + 3, g1)}}};
  EXPECT_TRUE(throws_exactly<TensorError>([&] { fastopt::Optimizer(fastopt::RuleId::sgd, groups); },
                                          std::string("param 1 overlaps param 0") + kOwnMemory));
  EXPECT_EQ(shared.bits(), before);
}

TEST_F(BadTensor, GradIsTheParam) {
  std::vector<fastopt::ParamGroup> g = groups();
  g[0].params[0].grad = g[0].params[0].param;
  EXPECT_TRUE(throws_exactly<TensorError>([&] { fastopt::Optimizer(fastopt::RuleId::adam, std::move(g)); },
                                          std::string("grad 0 is the same memory as param 0") + kOwnMemory));
  expect_untouched();
}

TEST_F(BadTensor, TooManyStateArrays) {
  std::vector<fastopt::ParamGroup> g = groups();
  for (int k = 0; k < 2; ++k) g[0].params[0].state.push_back(g[0].params[0].state[0]);  // 4 arrays
  EXPECT_TRUE(throws_exactly<invalid_argument>([&] { fastopt::Optimizer(fastopt::RuleId::adam, std::move(g)); },
                                               "param 0: too many state arrays"));
  expect_untouched();
}

TEST_F(BadTensor, CudaDeviceTensorsOnTheCpuEngine) {
  std::vector<fastopt::ParamGroup> g = groups();
  g[0].params[0].grad.device = fastopt::Device{fastopt::Device::kCUDA, 0};
  EXPECT_TRUE(throws_exactly<TensorError>(
      [&] { fastopt::Optimizer(fastopt::RuleId::adam, g); },
      "grad 0 is on cuda:0 but param 0 is on cpu: all tensors of a group must be on one device"));
  // Every tensor on the GPU (C++ only: Python sends these to its CUDA engine).
  for (fastopt::ParamTensors& t : g[0].params) {
    for (fastopt::Tensor* x : {&t.param, &t.grad, &t.master}) x->device = fastopt::Device{fastopt::Device::kCUDA, 0};
    for (fastopt::Tensor& s : t.state) s.device = fastopt::Device{fastopt::Device::kCUDA, 0};
  }
  EXPECT_TRUE(throws_exactly<TensorError>([&] { fastopt::Optimizer(fastopt::RuleId::adam, g); },
                                          "param 0: is on cuda:0; the CPU engine takes host memory"));
  expect_untouched();
}

TEST_F(BadTensor, PinnedHostMemoryIsFine) {
  std::vector<fastopt::ParamGroup> g = groups();
  g[0].params[1].grad.device = fastopt::Device{fastopt::Device::kCUDAHost, 0};
  fastopt::Optimizer(fastopt::RuleId::adam, std::move(g)).step();
  expect_changed();
}

TEST_F(BadTensor, UnknownDtype) {  // C++ only (the C ABI checks its codes too)
  std::vector<fastopt::ParamGroup> g = groups();
  g[0].params[0].grad.dtype = fastopt::DType(200);
  EXPECT_TRUE(throws_exactly<TensorError>([&] { fastopt::Optimizer(fastopt::RuleId::adam, g); },
                                          "grad 0: unknown dtype code 200 (dtypes: float32, float16, bfloat16; uint16 for remainders, uint8 for 8-bit state)"));
  fastopt::Optimizer opt = optimizer();
  fastopt::Tensor bad = params[0].grad.tensor();
  bad.dtype = fastopt::DType(9);
  EXPECT_TRUE(throws_exactly<TensorError>([&] { opt.set_grads({bad, params[1].grad.tensor()}); },
                                          "grad 0: unknown dtype code 9 (dtypes: float32, float16, bfloat16; uint16 for remainders, uint8 for 8-bit state)"));
  expect_untouched();
}

TEST_F(BadTensor, ElementCountOverflows) {  // C++ only
  std::vector<fastopt::ParamGroup> g = groups();
  for (auto shape : {std::vector<int64_t>{int64_t(1) << 32, int64_t(1) << 32},  // 2^64 wraps to 0
                     std::vector<int64_t>{(int64_t(1) << 62) + 1, 4},             // wraps to 4
                     std::vector<int64_t>{int64_t(1) << 61, 1}}) {               // 2^63 bytes
    fastopt::ParamTensors& p = g[0].params[0];
    for (fastopt::Tensor* t : {&p.param, &p.grad, &p.state[0], &p.state[1]}) t->shape = shape;
    const fastopt::Tensor probe(nullptr, shape);
    EXPECT_TRUE(throws_exactly<TensorError>([&] { fastopt::Optimizer(fastopt::RuleId::adam, g); },
                                            "param 0: shape " + probe.shape_str() +
                                                " has more elements than memory can hold"));
  }
  expect_untouched();
}

TEST_F(BadTensor, NewGrads) {
  fastopt::Optimizer opt = optimizer();
  Buffer wrong = Buffer::f32({1, 2, 3, 4});
  EXPECT_TRUE(throws_exactly<TensorError>([&] { opt.set_grads({wrong.tensor(), params[1].grad.tensor()}); },
                                          "grad 0: shape (4,) differs from param 0's shape (3,)"));
  EXPECT_TRUE(throws_exactly<invalid_argument>([&] { opt.set_grads({params[0].grad.tensor()}); },
                                               "got 1 grads for 2 params"));
  EXPECT_TRUE(throws_exactly<TensorError>(
      [&] { opt.set_grads({params[0].param.tensor(), params[1].grad.tensor()}); },
      std::string("grad 0 is the same memory as param 0") + kOwnMemory));
  // The new grad is the one named, wherever it lies in the bind order.
  EXPECT_TRUE(throws_exactly<TensorError>(
      [&] { opt.set_grads({params[0].state[1].tensor(), params[1].grad.tensor()}); },
      std::string("grad 0 is the same memory as exp_avg_sq 0") + kOwnMemory));
  EXPECT_EQ(opt.tensors(0).grad.data, params[0].grad.data());  // the bound grads are kept
  expect_untouched();
}

// ---- hyperparameters ------------------------------------------------------------------------

class BadHyper : public AdamSetup {
 protected:
  // set_hyper(group, h) throws E with `message`; the group keeps its hyperparameters and a step
  // then runs with them.
  template <class E>
  void expect_refused(fastopt::Optimizer& opt, size_t group, const fastopt::Hyper& h, const std::string& message) {
    const double lr = fastopt::get_field(opt.hyper(0), "lr");
    EXPECT_TRUE(throws_exactly<E>([&] { opt.set_hyper(group, h); }, message));
    EXPECT_EQ(fastopt::get_field(opt.hyper(0), "lr"), lr);
    expect_untouched();
  }
  static fastopt::Hyper adam(const char* field, double value) {
    fastopt::Hyper h = fastopt::Adam::Hyper{};
    fastopt::set_field(h, field, value);
    return h;
  }
};

TEST_F(BadHyper, NegativeLr) {
  fastopt::Optimizer opt = optimizer();
  expect_refused<invalid_argument>(opt, 0, adam("lr", -1), "param group 0: lr must be finite and >= 0, got -1");
  expect_refused<invalid_argument>(opt, 0, adam("lr", NAN), "param group 0: lr must be finite and >= 0, got nan");
}

TEST_F(BadHyper, Beta1OutOfRange) {
  fastopt::Optimizer opt = optimizer();
  expect_refused<invalid_argument>(opt, 0, adam("beta1", 1), "param group 0: beta1 must be in [0, 1), got 1");
  expect_refused<invalid_argument>(opt, 0, adam("beta2", -0.5), "param group 0: beta2 must be in [0, 1), got -0.5");
}

TEST_F(BadHyper, OutOfRangeAtBinding) {
  EXPECT_TRUE(throws_exactly<invalid_argument>([&] { fastopt::Optimizer(fastopt::RuleId::adam, groups(adam("beta1", 1))); },
                                               "param group 0: beta1 must be in [0, 1), got 1"));
  expect_untouched();
}

// Python's binding layer refuses another rule's struct itself, with the first part of this
// message ("these hyperparameters are for another optimizer", a TypeError); the C++ API
// names the rule.
TEST_F(BadHyper, AnotherRulesHyperparameters) {
  fastopt::Optimizer opt = optimizer();
  expect_refused<invalid_argument>(opt, 0, fastopt::Sgd::Hyper{},
                                   "these hyperparameters are for another optimizer (this one's rule is adam)");
  EXPECT_TRUE(throws_exactly<invalid_argument>(
      [&] { fastopt::Optimizer(fastopt::RuleId::adam, groups(fastopt::Lion::Hyper{})); },
      "param group 0: these hyperparameters are for another optimizer (the group's rule is adam)"));
}

TEST_F(BadHyper, AmsgradNeedsAThirdStateArray) {
  fastopt::Optimizer opt = optimizer();
  expect_refused<invalid_argument>(opt, 0, adam("amsgrad", 1),
                                   "param group 0 was bound with fewer state arrays than its hyperparameters need");
  // Bound with amsgrad and two state arrays: the step refuses, before writing anything.
  fastopt::Optimizer bound(fastopt::RuleId::adam, groups(adam("amsgrad", 1)));
  EXPECT_TRUE(throws_exactly<invalid_argument>(
      [&] { bound.step(); }, "param group 0 was bound with fewer state arrays than its hyperparameters need"));
  EXPECT_EQ(bound.steps(), std::vector<int64_t>{0});
  expect_untouched();
}

TEST_F(BadHyper, AmsgradWithAThirdStateArray) {
  for (ParamMemory& p : params) p.num_state = 3;
  fastopt::Optimizer opt = optimizer();
  opt.set_hyper(0, adam("amsgrad", 1));
  opt.step();
  EXPECT_NE(params[1].state[2].bits(), Bits(4, 0)) << "max_exp_avg_sq not updated";
}

TEST_F(BadHyper, GroupIndexOutOfRange) {  // C++ only (Python: an IndexError of its list)
  fastopt::Optimizer opt = optimizer();
  const std::string message = "no param group 3 (there are 1)";
  EXPECT_TRUE(throws_exactly<std::out_of_range>([&] { opt.hyper(3); }, message));
  EXPECT_TRUE(throws_exactly<std::out_of_range>([&] { opt.set_hyper(3, fastopt::Adam::Hyper{}); }, message));
  EXPECT_TRUE(throws_exactly<std::out_of_range>([&] { opt.set_schedule(3, nullptr); }, message));
  EXPECT_TRUE(throws_exactly<std::out_of_range>([&] { opt.tensors(2); }, "no param 2 (there are 2)"));
  expect_untouched();
}

TEST_F(BadHyper, SetHypersIsAllOrNothing) {
  fastopt::Optimizer opt = optimizer();
  EXPECT_TRUE(throws_exactly<invalid_argument>([&] { opt.set_hypers({adam("lr", 0.5), adam("lr", 0.5)}); },
                                               "got 2 hyperparameter sets for 1 param groups"));
  EXPECT_TRUE(throws_exactly<invalid_argument>([&] { opt.set_hypers({adam("beta2", 1)}); },
                                               "param group 0: beta2 must be in [0, 1), got 1"));
  EXPECT_EQ(fastopt::get_field(opt.hyper(0), "beta2"), 0.999);
  opt.set_hypers({adam("lr", 0.5)});
  EXPECT_EQ(fastopt::get_field(opt.hyper(0), "lr"), 0.5);
  expect_untouched();
}

TEST_F(BadHyper, UnknownRuleId) {  // C++ only
  for (fastopt::RuleId r : {fastopt::RuleId(99), fastopt::RuleId::count}) {
    EXPECT_TRUE(throws_exactly<invalid_argument>([&] { fastopt::Optimizer(r, groups()); },
                                                 "unknown rule id " + std::to_string(int(r))));
  }
  EXPECT_TRUE(throws_exactly<invalid_argument>([&] { fastopt::Optimizer(fastopt::RuleId::probe, groups()); },
                                               "the probe is a BandwidthProbe, not an optimizer"));
  expect_untouched();
}

// A schedule is checked when set (its fields) and at each step (the lr it gives); a step that
// refuses writes nothing and counts nothing.
TEST_F(BadHyper, Schedules) {  // C++ only (fastopt.schedules checks every argument)
  fastopt::Optimizer opt = optimizer();
  fastopt::Schedule empty{};
  EXPECT_TRUE(throws_exactly<invalid_argument>([&] { opt.set_schedule(0, &empty); },
                                               "malformed schedule: num_segments out of [1, 8]"));
  const int64_t milestones[9] = {1, 2, 3, 4, 5, 6, 7, 8, 9};
  const fastopt::Schedule many = fastopt::schedules::multistep(0.1, milestones, 9);
  EXPECT_TRUE(throws_exactly<invalid_argument>([&] { opt.set_schedule(0, &many); },
                                               "malformed schedule: num_milestones out of [0, 8]"));
  const fastopt::Schedule shape7 = fastopt::schedules::anneal(0.1, 0.0, 10, fastopt::AnnealShape(7));
  EXPECT_TRUE(throws_exactly<invalid_argument>([&] { opt.set_schedule(0, &shape7); },
                                               "malformed schedule: unknown shape 7"));
  const fastopt::Schedule parts[2] = {fastopt::schedules::constant(0.1), fastopt::schedules::constant(0.2)};
  const int64_t at_zero[1] = {0};
  fastopt::Schedule chained;
  EXPECT_STREQ(fastopt::schedules::chain(parts, at_zero, 2, &chained), "milestones must be strictly increasing and > 0");
  for (const fastopt::Schedule& s : {fastopt::schedules::constant(-1.0), fastopt::schedules::linear(1e-3, NAN, 1.0, 10)}) {
    opt.set_schedule(0, &s);
    const double lr = fastopt::lr_at(s, 0);
    std::ostringstream message;
    message << "param group 0: its schedule gives lr " << lr << " at step 0 (an lr must be finite and >= 0)";
    EXPECT_TRUE(throws_exactly<invalid_argument>([&] { opt.step(); }, message.str()));
  }
  EXPECT_EQ(opt.steps(), std::vector<int64_t>{0});
  expect_untouched();
  const fastopt::Schedule halves = fastopt::schedules::exponential(1e-3, 0.5);
  opt.set_schedule(0, &halves);
  opt.step();
  expect_changed();
}

TEST_F(BadHyper, NoGroupsNeedsTheRule) {
  EXPECT_TRUE(throws_exactly<invalid_argument>([] { fastopt::Optimizer none({}); },
                                               "no param groups: name the rule (Optimizer(rule, {}))"));
  fastopt::Optimizer empty(fastopt::RuleId::lion, {});
  EXPECT_EQ(empty.num_params(), 0u);
  empty.step();
}

// ---- step options ---------------------------------------------------------------------------

class BadOption : public AdamSetup {
 protected:
  // A step with options o throws std::invalid_argument with `message`: nothing written, no
  // step counted.
  void expect_refused(const fastopt::StepOptions& o, const std::string& message) {
    fastopt::Optimizer opt = optimizer();
    EXPECT_TRUE(throws_exactly<invalid_argument>([&] { opt.step(o); }, message));
    EXPECT_EQ(opt.steps(), std::vector<int64_t>{0});
    expect_untouched();
  }
  static fastopt::StepOptions scaled(double grad_scale) {
    fastopt::StepOptions o;
    o.grad_scale = grad_scale;
    o.diagnostics = true;  // (a norm pass first: still nothing written)
    return o;
  }
};

const char* kGradScale = "grad_scale must be finite and > 0 with a finite float32 reciprocal (>= 2.93874e-39), got ";

TEST_F(BadOption, GradScale) {
  expect_refused(scaled(0), std::string(kGradScale) + "0");
  expect_refused(scaled(INFINITY), std::string(kGradScale) + "inf");
  expect_refused(scaled(-2), std::string(kGradScale) + "-2");
  expect_refused(scaled(1e-40), std::string(kGradScale) + "1e-40");  // 1 / 1e-40 overflows float32
}

TEST_F(BadOption, MaxGradNormAndClipValue) {
  fastopt::StepOptions o;
  o.max_grad_norm = -1;
  expect_refused(o, "max_grad_norm must be finite and >= 0 (0: off), got -1");
  o = {};
  o.clip_value = -1;
  expect_refused(o, "clip_value must be finite and >= 0 (0: off), got -1");
}

TEST_F(BadOption, RuleStep) {
  const int64_t zero = 0;
  fastopt::StepOptions o;
  o.rule_steps = &zero;
  expect_refused(o, "step must be >= 1, got 0");
}

// A step count at 2**63 - 1 cannot advance, whoever gives the rule's step.
TEST_F(BadOption, StepCountOverflow) {
  const int64_t five = 5;
  for (const int64_t* rule_steps : {static_cast<const int64_t*>(nullptr), &five}) {
    fastopt::Optimizer opt = optimizer();
    opt.set_steps({INT64_MAX});
    fastopt::StepOptions o;
    o.rule_steps = rule_steps;
    EXPECT_TRUE(throws_exactly<std::overflow_error>(
        [&] { opt.step(o); }, "param group 0: the step count reached 2**63 - 1, the most it can hold"));
    EXPECT_EQ(opt.steps(), std::vector<int64_t>{INT64_MAX});
  }
  expect_untouched();
}

TEST_F(BadOption, StepCounts) {  // C++ only (Python checks its checkpoints' counts itself)
  fastopt::Optimizer opt = optimizer();
  EXPECT_TRUE(throws_exactly<invalid_argument>([&] { opt.set_steps({-1}); }, "step counts must be >= 0, got -1"));
  EXPECT_TRUE(throws_exactly<invalid_argument>([&] { opt.set_steps({1, 2}); },
                                               "got 2 step counts for 1 param groups"));
  EXPECT_EQ(opt.steps(), std::vector<int64_t>{0});
}

// ---- names ----------------------------------------------------------------------------------

TEST(BadName, UnknownRule) {
  EXPECT_TRUE(throws_exactly<invalid_argument>([] { fastopt::rule_id("foo"); }, "unknown rule 'foo'"));
  EXPECT_TRUE(throws_exactly<invalid_argument>([] { fastopt::rule_id("probe"); }, "unknown rule 'probe'"));
}

TEST(BadName, UnknownField) {  // C++ only (Python's structs raise AttributeError)
  fastopt::Hyper h = fastopt::Adam::Hyper{};
  EXPECT_TRUE(throws_exactly<invalid_argument>([&] { fastopt::set_field(h, "foo", 1); },
                                               "adam has no hyperparameter 'foo'"));
  EXPECT_TRUE(throws_exactly<invalid_argument>([&] { fastopt::get_field(h, "momentum"); },
                                               "adam has no hyperparameter 'momentum'"));
  EXPECT_TRUE(throws_exactly<invalid_argument>([&] { fastopt::set_field(h, "amsgrad", 2); },
                                               "amsgrad is a flag: it takes 0 or 1, got 2"));
  EXPECT_EQ(fastopt::get_field(h, "amsgrad"), 0.0);
}

}  // namespace
}  // namespace fastopt_test
