// fastopt::Optimizer (src/cpp/api/optimizer.cpp) beyond the rule cases: checkpoints (state
// arrays and step counts saved, restored into a second optimizer), the rule deduced from the
// groups, the accessors, new grad buffers.
#include "fastopt/optimizer.h"

#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include "fastopt/reduce.h"
#include "fastopt/step_control.h"

#include "support/expect.h"
#include "support/rule_case.h"

namespace fastopt_test {
namespace {

const RuleCase& find_case(const std::string& name) {
  for (const RuleCase& c : rule_cases()) {
    if (name == c.name) return c;
  }
  throw std::invalid_argument("no rule case " + name);
}

// Steps an optimizer over m, at step k with the case's grads of step k % (number of steps).
void step_times(fastopt::Optimizer& opt, CaseMemory& m, const RuleCase& c, size_t first, size_t count) {
  for (size_t k = first; k < first + count; ++k) {
    m.load_grads(k % c.steps.size());
    opt.step();
  }
}

// A checkpoint: every buffer a step writes, and the step counts.
struct Checkpoint {
  std::vector<Bits> memory;
  std::vector<int64_t> steps;
};

Checkpoint save(const fastopt::Optimizer& opt, const CaseMemory& m) { return {m.written(), opt.steps()}; }

// Restores c into memory m bound to opt: params, masters and state arrays written through the
// tensors the optimizer reports (tensors(i)), then the step counts.
void restore(fastopt::Optimizer& opt, CaseMemory& m, const Checkpoint& c, bool steps = true) {
  size_t k = 0;
  for (size_t i = 0; i < opt.num_params(); ++i) {
    const fastopt::ParamTensors& t = opt.tensors(i);
    m.params[i].param.set_bits(c.memory[k++]);
    Buffer& master = m.params[i].master;
    if (t.master.data) {
      EXPECT_EQ(t.master.data, master.data());
    }
    master.set_bits(c.memory[k++]);
    for (size_t s = 0; s < t.state.size(); ++s) {
      EXPECT_EQ(t.state[s].data, m.params[i].state[s].data());
      m.params[i].state[s].set_bits(c.memory[k++]);
    }
  }
  if (steps) opt.set_steps(c.steps);
}

class Checkpoints : public ::testing::TestWithParam<const char*> {};

// Step 3 times, save, step 3 more; a second optimizer restored from the save continues with
// the same bits, and one restored without its step counts does not.
TEST_P(Checkpoints, RestoredOptimizerContinuesBitIdentically) {
  const RuleCase& c = find_case(GetParam());
  CaseMemory a(c);
  fastopt::Optimizer first(fastopt::rule_id(c.rule), a.groups());
  step_times(first, a, c, 0, 3);
  const Checkpoint saved = save(first, a);
  EXPECT_EQ(saved.steps, std::vector<int64_t>(c.groups.size(), 3));
  step_times(first, a, c, 3, 3);

  CaseMemory b(c);
  fastopt::Optimizer second(fastopt::rule_id(c.rule), b.groups());
  restore(second, b, saved);
  step_times(second, b, c, 3, 3);
  EXPECT_EQ(b.written(), a.written());
  EXPECT_EQ(second.steps(), first.steps());

  CaseMemory fresh(c);
  fastopt::Optimizer counts_lost(fastopt::rule_id(c.rule), fresh.groups());
  restore(counts_lost, fresh, saved, /*steps=*/false);
  step_times(counts_lost, fresh, c, 3, 3);
  EXPECT_NE(fresh.written(), a.written()) << "the step counts should matter to " << c.rule;
}

INSTANTIATE_TEST_SUITE_P(Rules, Checkpoints, ::testing::Values("adam", "adamw_amsgrad_maximize", "radam", "nadam",
                                                               "lamb", "adagrad", "sgd_momentum_nesterov"));

// Optimizer(groups) takes the rule from the groups' hyperparameters (optimizer.h); a regression
// test: it once read them after moving them away (GCC evaluates arguments right to left).
TEST(OptimizerConstructor, DeducesTheRuleFromTheGroups) {
  const RuleCase& c = find_case("adam");
  CaseMemory m(c);
  try {
    fastopt::Optimizer opt(m.groups());
    EXPECT_EQ(opt.rule(), fastopt::RuleId::adam);
    EXPECT_EQ(opt.num_params(), c.params.size());
  } catch (const std::exception& e) {
    ADD_FAILURE() << "Optimizer(groups) threw: " << e.what();
  }
}

TEST(OptimizerAccessors, DescribeTheBinding) {
  const RuleCase& c = find_case("rmsprop_centered_momentum");
  CaseMemory m(c);
  fastopt::Optimizer opt(fastopt::RuleId::rmsprop, m.groups());
  EXPECT_EQ(opt.rule(), fastopt::RuleId::rmsprop);
  EXPECT_EQ(opt.num_groups(), 2u);
  EXPECT_EQ(opt.num_params(), 3u);
  EXPECT_STREQ(opt.isa(), fastopt::cpu_isa());
  EXPECT_GE(opt.num_tasks(), 1u);
  EXPECT_EQ(opt.steps(), (std::vector<int64_t>{0, 0}));
  EXPECT_EQ(opt.tensors(1).param.data, m.params[1].param.data());
  EXPECT_EQ(opt.tensors(1).master.data, m.params[1].master.data());
  EXPECT_EQ(opt.tensors(2).state.size(), 3u);
  EXPECT_EQ(fastopt::get_field(opt.hyper(1), "lr"), fastopt::get_field(case_hyper(c, 1), "lr"));
  EXPECT_NE(fastopt::get_field(opt.hyper(0), "lr"), fastopt::get_field(opt.hyper(1), "lr"));
}

// Grads rebound with set_grads are the ones the next step reads.
TEST(OptimizerGrads, NewBuffersAreRead) {
  const RuleCase& c = find_case("adam");
  CaseMemory a(c), b(c);
  fastopt::Optimizer by_copy(fastopt::RuleId::adam, a.groups()), rebound(fastopt::RuleId::adam, b.groups());
  std::deque<Buffer> fresh;
  std::vector<fastopt::Tensor> grads;
  for (size_t i = 0; i < c.params.size(); ++i) {
    fresh.emplace_back(c.params[i].grad_dtype, c.params[i].shape);
    fresh.back().set_bits(c.params[i].grads[1]);
    grads.push_back(fresh.back().tensor());
  }
  a.load_grads(1);
  b.load_grads(0);  // (not read: replaced)
  rebound.set_grads(grads);
  by_copy.step();
  rebound.step();
  EXPECT_EQ(b.written(), a.written());
  EXPECT_EQ(rebound.tensors(0).grad.data, fresh[0].data());
}

// SGD's rule step counts its momentum buffer's updates (torch.optim.SGD): momentum switched on
// after two steps starts the buffer from the grad. Expected: fastopt.SGD and torch.optim.SGD on
// the same run (lr 0.1, dampening 0.5, momentum 0 then 0.9, grads (i + step) / 4), equal bits.
TEST(OptimizerSgd, MomentumSwitchedOnMidRunStartsTheBuffer) {
  std::vector<float> p{1, 2, 3, 4}, g(4), buffer(4);
  fastopt::Sgd::Hyper h;
  h.lr = 0.1;
  h.dampening = 0.5;
  fastopt::Optimizer opt({fastopt::ParamGroup{h, {{{p.data(), 4}, {g.data(), 4}, {}, {{buffer.data(), 4}}}}}});
  for (int s = 0; s < 4; ++s) {
    if (s == 2) {
      h.momentum = 0.9;
      opt.set_hyper(0, h);
    }
    for (int i = 0; i < 4; ++i) g[size_t(i)] = float(i + s) / 4;
    opt.step();
  }
  const Bits expected{0x3f57ae15, 0x3fddc290, 0x4027d70b, 0x4060cccd};
  Bits got;
  for (float x : p) got.push_back(float_bits(x));
  EXPECT_EQ(got, expected);
  EXPECT_EQ(opt.steps(), std::vector<int64_t>{4});
}

// A bfloat16 param with its master kept as a remainder steps the fp32 master's trajectory bit
// for bit, on every ISA (fastopt/numeric/convert.h: join_remainder).
TEST(OptimizerRemainder, IsTheMasterTrajectory) {
  for (const char* isa : {"scalar", "avx2", "avx512"}) {
    if (!fastopt::cpu_isa_supported(isa)) continue;
    SCOPED_TRACE(isa);
    const std::string before = fastopt::cpu_isa();
    fastopt::set_cpu_isa(isa);
    const int64_t n = 45;  // vector bodies and a scalar tail
    std::vector<uint16_t> p1(n), p2(n), rem(n, 0);
    std::vector<float> master(n), g(n), m1(n), v1(n), m2(n), v2(n);
    for (int64_t i = 0; i < n; ++i) {
      p1[size_t(i)] = p2[size_t(i)] = uint16_t(0x3f80 + 3 * i);  // 1.0 and up, exact bfloat16 values
      master[size_t(i)] = bits_float(uint32_t(p1[size_t(i)]) << 16);
    }
    fastopt::Adam::Hyper h;
    h.lr = 1e-3, h.decoupled = true, h.weight_decay = 0.1;
    const fastopt::DType bf = fastopt::DType::bf16;
    fastopt::ParamTensors with_master{{p1.data(), {n}, bf}, {g.data(), n}, {master.data(), n}, {{m1.data(), n}, {v1.data(), n}}};
    fastopt::ParamTensors with_remainder{{p2.data(), {n}, bf}, {g.data(), n}, {}, {{m2.data(), n}, {v2.data(), n}}};
    with_remainder.remainder = fastopt::Tensor(rem.data(), {n}, fastopt::DType::u16);
    fastopt::Optimizer a({fastopt::ParamGroup{h, {with_master}}}), b({fastopt::ParamGroup{h, {with_remainder}}});
    fastopt::set_cpu_isa(before);
    for (int t = 0; t < 20; ++t) {
      for (int64_t i = 0; i < n; ++i) g[size_t(i)] = float((i * 7 + t * 3) % 11) * 0.01f - 0.05f;
      a.step();
      b.step();
    }
    for (int64_t i = 0; i < n; ++i) {
      const uint32_t joined = uint32_t(p2[size_t(i)]) << 16 | rem[size_t(i)];
      ASSERT_EQ(joined, float_bits(master[size_t(i)])) << "element " << i;
    }
    EXPECT_NE(p1, p2);  // the master mode's param is rounded to nearest, the remainder's truncated
  }
}

TEST(OptimizerRemainder, Refusals) {
  std::vector<float> p(4), g(4);
  std::vector<uint16_t> bf(4), rem(4);
  fastopt::Sgd::Hyper h;
  fastopt::ParamTensors fp32{{p.data(), 4}, {g.data(), 4}, {}, {}};
  fp32.remainder = fastopt::Tensor(rem.data(), {4}, fastopt::DType::u16);
  EXPECT_TRUE(throws_exactly<fastopt::TensorError>([&] { fastopt::Optimizer({fastopt::ParamGroup{h, {fp32}}}); },
                                                   "param 0: a remainder is for bfloat16 params; this one is float32"));
  fastopt::ParamTensors both{{bf.data(), {4}, fastopt::DType::bf16}, {g.data(), 4}, {p.data(), 4}, {}};
  both.remainder = fastopt::Tensor(rem.data(), {4}, fastopt::DType::u16);
  EXPECT_TRUE(throws_exactly<fastopt::TensorError>([&] { fastopt::Optimizer({fastopt::ParamGroup{h, {both}}}); },
                                                   "param 0: master weights, a remainder and a compensation are alternatives (one at most)"));
  fastopt::ParamTensors u16_param{{rem.data(), {4}, fastopt::DType::u16}, {g.data(), 4}, {}, {}};
  EXPECT_TRUE(throws_exactly<fastopt::TensorError>([&] { fastopt::Optimizer({fastopt::ParamGroup{h, {u16_param}}}); },
                                                   "param 0: dtype uint16 (fastopt takes float32, float16 and bfloat16)"));
}

// The grad norm of a step is the global norm of sumsq() over the grads.
TEST(OptimizerNorms, GradNormIsTheGlobalNormOfTheSums) {
  const RuleCase& c = find_case("adam_max_grad_norm");
  CaseMemory m(c);
  fastopt::Optimizer opt(fastopt::RuleId::adam, m.groups());
  m.load_grads(0);
  std::vector<fastopt::Tensor> grads;
  for (CaseMemory::Param& p : m.params) grads.push_back(p.grad.tensor());
  std::vector<double> sums(grads.size()), by_opt(grads.size());
  std::vector<int64_t> bad(grads.size()), bad_opt(grads.size());
  fastopt::sumsq(grads, sums.data(), bad.data());
  opt.grad_sumsq(by_opt.data(), bad_opt.data());
  EXPECT_EQ(sums, by_opt);
  EXPECT_EQ(bad, std::vector<int64_t>(grads.size(), 0));
  fastopt::StepOptions o;
  o.grad_norm = true;
  const fastopt::StepResult r = opt.step(o);
  ASSERT_TRUE(r.grad_norm.has_value());
  EXPECT_TRUE(same_double(*r.grad_norm, fastopt::global_norm(sums.data(), sums.size())));
  EXPECT_TRUE(same_double(*r.grad_norm, *c.steps[0].grad_norm));  // Python's, for the same grads
}

// A step sharded across processes (StepOptions::grad_factor, combine_sums): the caller's grad
// multiplier is the step's whole transform, and combined sums decide a two-pass rule's update.
TEST(OptimizerSharded, GradFactorIsTheClippedStepsMultiplier) {
  const RuleCase& c = find_case("adam_max_grad_norm");
  CaseMemory a(c), b(c);
  fastopt::Optimizer clipped(fastopt::RuleId::adam, a.groups()), given(fastopt::RuleId::adam, b.groups());
  a.load_grads(0);
  b.load_grads(0);
  std::vector<double> sums(clipped.num_params());
  std::vector<int64_t> bad(sums.size());
  clipped.grad_sumsq(sums.data(), bad.data());
  const double max_norm = 0.5 * fastopt::global_norm(sums.data(), sums.size());  // (so that it clips)
  fastopt::StepOptions o;
  o.max_grad_norm = max_norm;
  clipped.step(o);
  fastopt::StepOptions f;
  f.grad_factor = fastopt::step_control(1.0f, fastopt::reduce::combine_tensors(sums.data(), int64_t(sums.size())), 0,
                                        false, max_norm)
                      .factor;
  ASSERT_LT(*f.grad_factor, 1.0f);
  const fastopt::StepResult r = given.step(f);
  EXPECT_FALSE(r.grad_norm.has_value());  // (no norm pass)
  EXPECT_EQ(b.written(), a.written());
  EXPECT_EQ(given.steps(), clipped.steps());
  f.max_grad_norm = max_norm;
  EXPECT_THROW(given.step(f), std::invalid_argument);
}

// Gradient accumulation: the accumulate rule's pass sums its new values (value_sums) as the
// norm pass sums params; a step given its grads' sums (grad_sums) decides as from its own.
TEST(OptimizerAccumulate, ValueSumsAreTheNormPassSums) {
  const RuleCase& c = find_case("accumulate");
  CaseMemory m(c);
  fastopt::Optimizer acc(fastopt::RuleId::accumulate, m.groups());
  m.load_grads(0);
  fastopt::StepOptions o;
  o.value_sums = true;
  const fastopt::StepResult r = acc.step(o);
  ASSERT_TRUE(r.value_sums.has_value());
  std::vector<double> sums(acc.num_params());
  std::vector<int64_t> bad(sums.size());
  acc.param_sumsq(sums.data(), bad.data());
  EXPECT_EQ(r.value_sums->sumsq, sums);
  EXPECT_EQ(r.value_sums->nonfinite, bad);
  o.max_grad_norm = 1.0;
  EXPECT_THROW(acc.step(o), std::invalid_argument);  // (value sums: a plain pass)
}

TEST(OptimizerAccumulate, GradSumsDecideAsTheNormPass) {
  const RuleCase& c = find_case("adam_max_grad_norm");
  CaseMemory a(c), b(c);
  fastopt::Optimizer own(fastopt::RuleId::adam, a.groups()), given(fastopt::RuleId::adam, b.groups());
  a.load_grads(0);
  b.load_grads(0);
  fastopt::GradSums sums{std::vector<double>(own.num_params()), std::vector<int64_t>(own.num_params())};
  own.grad_sumsq(sums.sumsq.data(), sums.nonfinite.data());
  fastopt::StepOptions o;
  o.max_grad_norm = 0.5 * fastopt::global_norm(sums.sumsq.data(), sums.sumsq.size());  // (so that it clips)
  const fastopt::StepResult x = own.step(o);
  o.grad_sums = &sums;
  const fastopt::StepResult y = given.step(o);
  EXPECT_EQ(b.written(), a.written());
  EXPECT_EQ(*y.grad_norm, *x.grad_norm);
  fastopt::GradSums short_sums{{1.0}, {0}};
  o.grad_sums = &short_sums;
  EXPECT_THROW(given.step(o), std::invalid_argument);
  fastopt::StepOptions v;
  v.value_sums = true;  // (adam produces no values to sum)
  EXPECT_THROW(given.step(v), std::invalid_argument);
}

TEST(OptimizerAccumulate, UtilityRulesHaveNoLrToSchedule) {
  const RuleCase& c = find_case("ema");
  CaseMemory m(c);
  fastopt::Optimizer ema(fastopt::RuleId::ema, m.groups());
  const fastopt::Schedule s = fastopt::schedules::constant(0.1);
  EXPECT_THROW(ema.set_schedule(0, &s), std::invalid_argument);
}

TEST(OptimizerSharded, CombineSumsDecidesTheTwoPassUpdate) {
  const RuleCase& c = find_case("lamb");
  CaseMemory plain(c), kept(c), changed(c);
  fastopt::Optimizer a(fastopt::RuleId::lamb, plain.groups()), b(fastopt::RuleId::lamb, kept.groups()),
      d(fastopt::RuleId::lamb, changed.groups());
  for (CaseMemory* m : {&plain, &kept, &changed}) m->load_grads(0);
  a.step();
  size_t tensors = 0;
  int num_sums = 0;
  fastopt::StepOptions o;
  o.combine_sums = [&](double*, size_t n, int k) { tensors = n, num_sums = k; };
  b.step(o);
  EXPECT_EQ(tensors, b.num_params());
  EXPECT_EQ(num_sums, 2);
  EXPECT_EQ(kept.written(), plain.written());  // (unfused passes: the same bits)
  o.combine_sums = [](double* sums, size_t n, int k) {
    for (size_t t = 0; t < n; ++t) sums[t * size_t(k)] *= 4;  // each ||p||^2: the trust ratio doubles
  };
  d.step(o);
  EXPECT_NE(changed.written(), plain.written());
}

// A mode switch (fastopt::ModeSwitch) over a Schedule-Free optimizer's params and z: eval moves
// each param to x = y + (1 - 1/beta1)(z - y) (one fused multiply-add in float32), train back to
// within float32 rounding; before the first step nothing moves; no step count advances.
TEST(ModeSwitch, MovesTheParamsBetweenYAndX) {
  const int64_t n = 37;  // vector bodies and a scalar tail
  std::vector<float> p(n), g(n), z(n), v(n);
  for (int64_t i = 0; i < n; ++i) p[size_t(i)] = float(i % 9) * 0.25f - 1.0f;
  fastopt::ScheduleFree::Hyper h;
  h.lr = 0.05, h.beta1 = 0.75, h.warmup_steps = 2;
  const fastopt::ParamTensors bound{{p.data(), n}, {g.data(), n}, {}, {{z.data(), n}, {v.data(), n}}};
  fastopt::Optimizer opt({fastopt::ParamGroup{h, {bound}}});
  fastopt::ModeSwitch sw(fastopt::RuleId::schedule_free,
                         {fastopt::ParamGroup{h, {fastopt::ParamTensors{{p.data(), n}, {z.data(), n}, {}, {}}}}});
  const std::vector<float> start = p;
  sw.run({h}, {0}, true);  // no step yet: z is not set
  EXPECT_EQ(p, start);
  for (int t = 0; t < 3; ++t) {
    for (int64_t i = 0; i < n; ++i) g[size_t(i)] = float((i * 5 + t * 3) % 7) * 0.1f - 0.3f;
    opt.step();
  }
  const std::vector<float> y = p;
  sw.run({h}, opt.steps(), true);
  const float w = float(1.0 - 1.0 / h.beta1);
  for (int64_t i = 0; i < n; ++i) {
    ASSERT_EQ(float_bits(p[size_t(i)]), float_bits(std::fma(w, z[size_t(i)] - y[size_t(i)], y[size_t(i)])))
        << "element " << i;
  }
  EXPECT_NE(p, y);
  sw.run({h}, opt.steps(), false);
  for (int64_t i = 0; i < n; ++i) {
    EXPECT_LE(std::fabs(p[size_t(i)] - y[size_t(i)]), 0x1p-21f * (std::fabs(y[size_t(i)]) + std::fabs(z[size_t(i)])) /
                                                           float(h.beta1));
  }
  EXPECT_EQ(opt.steps(), std::vector<int64_t>{3});
}

TEST(ModeSwitch, Refusals) {
  std::vector<float> p(4), z(4);
  fastopt::Adam::Hyper adam;
  const fastopt::ParamTensors t{{p.data(), 4}, {z.data(), 4}, {}, {}};
  EXPECT_TRUE(throws_exactly<std::invalid_argument>(
      [&] { fastopt::ModeSwitch(fastopt::RuleId::adam, {fastopt::ParamGroup{adam, {t}}}); },
      "adam has no eval point apart from its params: nothing to switch (mode switches are Schedule-Free's)"));
  fastopt::ScheduleFree::Hyper h;
  fastopt::ModeSwitch sw(fastopt::RuleId::schedule_free, {fastopt::ParamGroup{h, {t}}});
  h.beta1 = 0;
  EXPECT_TRUE(throws_exactly<std::invalid_argument>(
      [&] { sw.run({h}, {1}, true); },
      "param group 0: beta1 must be in (0, 1) (the eval point x = y + (1 - 1/beta1)(z - y)), got 0"));
  EXPECT_TRUE(throws_exactly<std::invalid_argument>(
      [&] { sw.run({fastopt::ScheduleFree::Hyper{}}, {1, 1}, true); },
      "a mode switch takes one hyperparameter set and one step count per param group (1)"));
}

// Adafactor's factored state through the C++ API: a (2, 3, 4) param keeps row_var (2, 3, 1) and
// col_var (2, 1, 4), a vector its variance (one array); at step 1 (beta2_hat's complement 1)
// they are the means of g^2, rounded once to float32; state of another shape is refused, named.
TEST(OptimizerFactored, StatePerRowAndColumn) {
  using fastopt::DType;
  Buffer p(DType::f32, {2, 3, 4}), g(DType::f32, {2, 3, 4}), rows(DType::f32, {2, 3, 1}), cols(DType::f32, {2, 1, 4});
  Buffer v = Buffer::f32({1, 2, 3, 4, 5}), gv = Buffer::f32({0.5f, -1, 2, 0, 3}), var(DType::f32, {5});
  for (int k = 0; k < 24; ++k) p.floats()[k] = 1.0f + k, g.floats()[k] = float(k % 5) - 2;
  const auto bind = [&](Buffer& row_state) {
    fastopt::ParamTensors m, x;
    m.param = p.tensor(), m.grad = g.tensor(true), m.state = {row_state.tensor(), cols.tensor()};
    x.param = v.tensor(), x.grad = gv.tensor(true), x.state = {var.tensor()};
    return std::vector<fastopt::ParamGroup>{{fastopt::default_hyper(fastopt::RuleId::adafactor), {m, x}}};
  };
  Buffer wrong(DType::f32, {2, 3, 4});
  EXPECT_TRUE(throws_exactly<fastopt::TensorError>(
      [&] { fastopt::Optimizer(fastopt::RuleId::adafactor, bind(wrong)); },
      "row_var 0: shape (2, 3, 4), expected (2, 3, 1): one value per row of param 0's last two dims"));
  fastopt::Optimizer opt(fastopt::RuleId::adafactor, bind(rows));
  opt.step();
  for (int m = 0; m < 2; ++m) {
    for (int r = 0; r < 3; ++r) {
      double sum = 0;
      for (int c = 0; c < 4; ++c) sum += double(g.floats()[(m * 3 + r) * 4 + c]) * g.floats()[(m * 3 + r) * 4 + c];
      EXPECT_EQ(rows.floats()[m * 3 + r], float(sum / 4)) << m << r;
    }
    for (int c = 0; c < 4; ++c) {
      double sum = 0;
      for (int r = 0; r < 3; ++r) sum += double(g.floats()[(m * 3 + r) * 4 + c]) * g.floats()[(m * 3 + r) * 4 + c];
      EXPECT_EQ(cols.floats()[m * 4 + c], float(sum / 3)) << m << c;
    }
  }
  for (int k = 0; k < 5; ++k) EXPECT_EQ(var.floats()[k], gv.floats()[k] * gv.floats()[k]);
  EXPECT_NE(p.floats()[0], 1.0f);
}

}  // namespace
}  // namespace fastopt_test
