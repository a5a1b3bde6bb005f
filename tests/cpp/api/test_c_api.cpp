// The C ABI (src/cpp/api/c_api.cpp): the C++ API's errors as status codes with the same
// messages (fastopt_last_error), NULL pointers refused, nothing changed on an error; and the ABI
// used from C gives the C++ API's bits.
#include "fastopt/c_api.h"

#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <thread>

#include "fastopt/optimizer.h"
#include "support/adam_setup.h"
#include "support/expect.h"

extern "C" fastopt_status c_adam_steps(float* param, float* grad, float* exp_avg, float* exp_avg_sq, int64_t n,
                                       double lr, int steps);

namespace fastopt_test {
namespace {

constexpr fastopt_status kTensor = FASTOPT_ERROR_TENSOR, kArgument = FASTOPT_ERROR_ARGUMENT;
const char* kOwnMemory = " (every tensor of a group must have its own memory)";

class CAbi : public AdamSetup {
 protected:
  void TearDown() override { fastopt_optimizer_destroy(opt); }

  // fastopt_optimizer_create over the setup's params (one group); opt is set on success.
  fastopt_status create(const char* rule = "adam") {
    c_params.clear();
    for (ParamMemory& p : params) c_params.push_back(p.c_param());
    const int64_t sizes[1] = {int64_t(c_params.size())};
    return fastopt_optimizer_create(rule, c_params.data(), int64_t(c_params.size()), sizes, 1, &opt);
  }
  // Creating the (spoiled) setup fails with status and message; no optimizer, nothing written.
  void expect_create_error(fastopt_status status, const std::string& message) {
    initial = values();
    opt = reinterpret_cast<fastopt_optimizer*>(&opt);  // (must be reset to NULL)
    EXPECT_TRUE(c_error(create(), status, message));
    EXPECT_EQ(opt, nullptr);
    expect_untouched();
  }
  void created() { ASSERT_EQ(create(), FASTOPT_OK) << fastopt_last_error(); }
  int64_t steps() const {
    int64_t s = -1;
    EXPECT_EQ(fastopt_get_steps(opt, &s, 1), FASTOPT_OK);
    return s;
  }
  double hyper(const char* name) const {
    double v = NAN;
    EXPECT_EQ(fastopt_get_hyper(opt, 0, name, &v), FASTOPT_OK);
    return v;
  }

  std::vector<fastopt_param> c_params;
  fastopt_optimizer* opt = nullptr;
};

TEST_F(CAbi, GradShape) {
  params[0].grad = Buffer::f32({1, 2, 3, 4});
  expect_create_error(kTensor, "grad 0: shape (4,) differs from param 0's shape (3,)");
}

TEST_F(CAbi, StateNotFloat32) {
  params[0].state[1] = Buffer(fastopt::DType::f16, {3});
  expect_create_error(kTensor, "exp_avg_sq 0: dtype float16, expected float32, bfloat16 or uint8");
}

TEST_F(CAbi, MasterOnFloat32Param) {
  params[0].master = Buffer(fastopt::DType::f32, {3});
  expect_create_error(kTensor, "param 0: master weights are for float16/bfloat16 params; this one is float32");
}

TEST_F(CAbi, ReadOnlyParam) {
  c_params.clear();
  for (ParamMemory& p : params) c_params.push_back(p.c_param());
  c_params[0].param.readonly = 1;
  const int64_t sizes[1] = {2};
  EXPECT_TRUE(c_error(fastopt_optimizer_create("adam", c_params.data(), 2, sizes, 1, &opt), kTensor,
                      "param 0: is read-only (fastopt updates it in place)"));
  EXPECT_EQ(opt, nullptr);
}

TEST_F(CAbi, OverlappingParams) {
  // Two SGD params of 3 elements in one buffer of 6, their grads apart.
  Buffer shared = Buffer::f32({1, 2, 3, 4, 5, 6}), g0 = Buffer::f32({1, 1, 1}), g1 = Buffer::f32({1, 1, 1});
  const Bits before = shared.bits();
  const int64_t shape[1] = {3}, sizes[1] = {2};
  auto at = [&](int offset) { return fastopt_tensor{shared.floats() + offset, shape, 1, FASTOPT_FLOAT32, 1, 0, 0}; };
  fastopt_param ps[2] = {{at(0), g0.c_tensor(), {}, nullptr, 0, {}, {}, 0, nullptr, 0},
                         {at(0), g1.c_tensor(), {}, nullptr, 0, {}, {}, 0, nullptr, 0}};
  EXPECT_TRUE(c_error(fastopt_optimizer_create("sgd", ps, 2, sizes, 1, &opt), kTensor,
                      std::string("param 1 is the same memory as param 0") + kOwnMemory));
  ps[1].param = at(2);  // elements 2..4 against 0..2
  EXPECT_TRUE(c_error(fastopt_optimizer_create("sgd", ps, 2, sizes, 1, &opt), kTensor,
                      std::string("param 1 overlaps param 0") + kOwnMemory));
  EXPECT_EQ(shared.bits(), before);
  EXPECT_EQ(opt, nullptr);
  ps[1].param = at(3);  // apart: fine
  ASSERT_EQ(fastopt_optimizer_create("sgd", ps, 2, sizes, 1, &opt), FASTOPT_OK) << fastopt_last_error();
}

TEST_F(CAbi, CudaDeviceTensor) {  // the C ABI runs the CPU engine
  fastopt_param p = params[0].c_param();
  for (fastopt_tensor* t : {&p.param, &p.grad, &params[0].c_state[0], &params[0].c_state[1]}) t->device_type = 2;
  const int64_t sizes[1] = {1};
  EXPECT_TRUE(c_error(fastopt_optimizer_create("adam", &p, 1, sizes, 1, &opt), kTensor,
                      "param 0: is on cuda:0; the CPU engine takes host memory"));
  p.param.device_type = 1;
  EXPECT_TRUE(c_error(fastopt_optimizer_create("adam", &p, 1, sizes, 1, &opt), kTensor,
                      "grad 0 is on cuda:0 but param 0 is on cpu: all tensors of a group must be on one device"));
  EXPECT_EQ(opt, nullptr);
}

TEST_F(CAbi, BadTensorDescriptions) {  // C only
  c_params.clear();
  for (ParamMemory& p : params) c_params.push_back(p.c_param());
  const int64_t sizes[1] = {2};
  auto create_with = [&](auto spoil, fastopt_status status, const std::string& message) {
    std::vector<fastopt_param> ps = c_params;
    spoil(ps);
    EXPECT_TRUE(c_error(fastopt_optimizer_create("adam", ps.data(), 2, sizes, 1, &opt), status, message));
    EXPECT_EQ(opt, nullptr);
  };
  create_with([](auto& ps) { ps[0].param.dtype = 7; }, kTensor,
              "param 0: unknown dtype code 7 (dtypes: float32, float16, bfloat16; uint16 for remainders, uint8 for 8-bit state)");
  create_with([](auto& ps) { ps[0].param.dtype = 300; }, kTensor,
              "param 0: unknown dtype code 300 (dtypes: float32, float16, bfloat16; uint16 for remainders, uint8 for 8-bit state)");
  std::vector<fastopt_tensor> state;  // (a state array is named as the rule names it)
  create_with(
      [&](auto& ps) {
        state.assign(ps[1].state, ps[1].state + ps[1].num_state);
        state[0].dtype = -1;
        ps[1].state = state.data();
      },
      kTensor,
              "exp_avg 1: unknown dtype code -1 (dtypes: float32, float16, bfloat16; uint16 for remainders, uint8 for 8-bit state)");
  create_with([](auto& ps) { ps[1].grad.ndim = -1; }, kTensor, "grad 1: bad shape (ndim < 0 or NULL shape)");
  create_with([](auto& ps) { ps[0].param.data = nullptr; }, kTensor, "param 0: null data pointer");
  create_with([](auto& ps) { ps[1].state = nullptr; }, kArgument,
              "param 1: bad state list (num_state < 0 or NULL state)");
  expect_untouched();
}

TEST_F(CAbi, GroupSizes) {
  c_params.clear();
  for (ParamMemory& p : params) c_params.push_back(p.c_param());
  const int64_t sizes[2] = {1, 2};
  EXPECT_TRUE(c_error(fastopt_optimizer_create("adam", c_params.data(), 2, sizes, 2, &opt), kArgument,
                      "group_sizes must add up to num_params"));
  EXPECT_TRUE(c_error(fastopt_optimizer_create("adam", c_params.data(), 2, sizes, 1, &opt), kArgument,
                      "group_sizes must add up to num_params"));
}

TEST_F(CAbi, NullPointers) {
  c_params.clear();
  for (ParamMemory& p : params) c_params.push_back(p.c_param());
  const int64_t sizes[1] = {2};
  const fastopt_param* ps = c_params.data();
  EXPECT_TRUE(c_error(fastopt_optimizer_create(nullptr, ps, 2, sizes, 1, &opt), kArgument, "rule is NULL"));
  EXPECT_TRUE(c_error(fastopt_optimizer_create("adam", ps, 2, sizes, 1, nullptr), kArgument, "out is NULL"));
  EXPECT_TRUE(c_error(fastopt_optimizer_create("adam", nullptr, 2, sizes, 1, &opt), kArgument, "params is NULL"));
  EXPECT_TRUE(c_error(fastopt_optimizer_create("adam", ps, 2, nullptr, 1, &opt), kArgument, "group_sizes is NULL"));
  double v = 0;
  int64_t s = 0;
  int32_t n = 0;
  const std::string no_optimizer = "optimizer is NULL";
  EXPECT_TRUE(c_error(fastopt_step(nullptr, nullptr, nullptr), kArgument, no_optimizer));
  EXPECT_TRUE(c_error(fastopt_set_hyper(nullptr, 0, "lr", 0.1), kArgument, no_optimizer));
  EXPECT_TRUE(c_error(fastopt_get_hyper(nullptr, 0, "lr", &v), kArgument, no_optimizer));
  EXPECT_TRUE(c_error(fastopt_num_state(nullptr, 0, &n), kArgument, no_optimizer));
  EXPECT_TRUE(c_error(fastopt_get_steps(nullptr, &s, 1), kArgument, no_optimizer));
  EXPECT_TRUE(c_error(fastopt_set_steps(nullptr, &s, 1), kArgument, no_optimizer));
  EXPECT_TRUE(c_error(fastopt_set_grads(nullptr, nullptr, 0), kArgument, no_optimizer));
  EXPECT_TRUE(c_error(fastopt_diagnostics(nullptr, nullptr, nullptr, nullptr, nullptr, nullptr), kArgument,
                      no_optimizer));
  fastopt_optimizer_destroy(nullptr);
  created();
  EXPECT_TRUE(c_error(fastopt_set_hyper(opt, 0, nullptr, 0.1), kArgument, "name is NULL"));
  EXPECT_TRUE(c_error(fastopt_get_hyper(opt, 0, "lr", nullptr), kArgument, "value is NULL"));
  EXPECT_TRUE(c_error(fastopt_num_state(opt, 0, nullptr), kArgument, "out is NULL"));
  EXPECT_TRUE(c_error(fastopt_get_steps(opt, nullptr, 1), kArgument, "steps is NULL"));
  EXPECT_TRUE(c_error(fastopt_set_steps(opt, nullptr, 1), kArgument, "steps is NULL"));
  EXPECT_TRUE(c_error(fastopt_set_grads(opt, nullptr, 2), kArgument, "grads is NULL"));
  EXPECT_EQ(fastopt_step(opt, nullptr, nullptr), FASTOPT_OK);  // NULL options and result: the defaults
  EXPECT_STREQ(fastopt_last_error(), "") << "a success clears the last error";
  expect_changed();
}

TEST_F(CAbi, BadHyperparameters) {
  created();
  const double lr = hyper("lr");
  EXPECT_TRUE(c_error(fastopt_set_hyper(opt, 0, "lr", -1), kArgument, "param group 0: lr must be finite and >= 0, got -1"));
  EXPECT_TRUE(c_error(fastopt_set_hyper(opt, 0, "beta1", 1), kArgument, "param group 0: beta1 must be in [0, 1), got 1"));
  EXPECT_TRUE(c_error(fastopt_set_hyper(opt, 0, "amsgrad", 1), kArgument,
                      "param group 0 was bound with fewer state arrays than its hyperparameters need"));
  EXPECT_TRUE(c_error(fastopt_set_hyper(opt, 0, "amsgrad", 2), kArgument,
                      "amsgrad is a flag: it takes 0 or 1, got 2"));
  EXPECT_TRUE(c_error(fastopt_set_hyper(opt, 0, "momentum", 0.9), kArgument, "adam has no hyperparameter 'momentum'"));
  double v = 0;
  EXPECT_TRUE(c_error(fastopt_get_hyper(opt, 0, "foo", &v), kArgument, "adam has no hyperparameter 'foo'"));
  EXPECT_EQ(hyper("lr"), lr);
  EXPECT_EQ(hyper("beta1"), 0.9);
  EXPECT_EQ(hyper("amsgrad"), 0.0);
  int32_t n = -1;
  EXPECT_EQ(fastopt_num_state(opt, 0, &n), FASTOPT_OK);
  EXPECT_EQ(n, 2);
  expect_untouched();
}

// Values valid only together go in one call; a failing call changes none of them.
TEST_F(CAbi, SetHypersTogether) {
  created();
  const char* names[2] = {"amsgrad", "lr"};
  const double values[2] = {0, 0.5};
  ASSERT_EQ(fastopt_set_hypers(opt, 0, names, values, 2), FASTOPT_OK) << fastopt_last_error();
  EXPECT_EQ(hyper("lr"), 0.5);
  const double bad[2] = {1, 0.25};  // amsgrad needs a third state array, which is not bound
  EXPECT_TRUE(c_error(fastopt_set_hypers(opt, 0, names, bad, 2), kArgument,
                      "param group 0 was bound with fewer state arrays than its hyperparameters need"));
  EXPECT_EQ(hyper("lr"), 0.5);
  EXPECT_EQ(hyper("amsgrad"), 0.0);
  const char* unknown[2] = {"lr", "rho"};
  EXPECT_TRUE(c_error(fastopt_set_hypers(opt, 0, unknown, values, 2), kArgument, "adam has no hyperparameter 'rho'"));
  EXPECT_TRUE(c_error(fastopt_set_hypers(opt, 0, nullptr, values, 2), kArgument, "names is NULL"));
  EXPECT_EQ(hyper("lr"), 0.5);
  expect_untouched();
}

TEST_F(CAbi, GroupIndexOutOfRange) {
  created();
  double v = 0;
  int32_t n = 0;
  EXPECT_TRUE(c_error(fastopt_set_hyper(opt, 3, "lr", 0.1), kArgument, "no param group 3 (there are 1)"));
  EXPECT_TRUE(c_error(fastopt_get_hyper(opt, -1, "lr", &v), kArgument, "no param group -1 (there are 1)"));
  EXPECT_TRUE(c_error(fastopt_num_state(opt, 1, &n), kArgument, "no param group 1 (there are 1)"));
  int64_t steps[2] = {0, 0};
  EXPECT_TRUE(c_error(fastopt_get_steps(opt, steps, 2), kArgument, "num_groups is 2, the optimizer has 1"));
  EXPECT_TRUE(c_error(fastopt_set_steps(opt, steps, 2), kArgument, "got 2 step counts for 1 param groups"));
}

TEST_F(CAbi, BadStepOptions) {
  created();
  const std::string scale = "grad_scale must be finite and > 0 with a finite float32 reciprocal (>= 2.93874e-39), got ";
  for (auto [grad_scale, shown] : {std::pair{0.0, "0"}, std::pair{double(INFINITY), "inf"}}) {
    fastopt_step_options o = fastopt_default_step_options();
    o.grad_scale = grad_scale;
    o.skip_nonfinite = 1;
    fastopt_step_result r{1.0, 1};
    EXPECT_TRUE(c_error(fastopt_step(opt, &o, &r), kArgument, scale + shown));
    EXPECT_EQ(steps(), 0);
    expect_untouched();
  }
  EXPECT_TRUE(c_error(fastopt_diagnostics(opt, nullptr, nullptr, nullptr, nullptr, nullptr), kArgument,
                      "the last step had no diagnostics (step with diagnostics = 1)"));
}

// rule_steps in the options, and the per-param sums of squares, as the C++ API gives them.
TEST_F(CAbi, RuleStepsAndSums) {
  EXPECT_EQ(fastopt_abi_version(), 3);
  created();
  std::vector<double> sums(2), by_cpp(2);
  std::vector<int64_t> bad(2, -1), bad_cpp(2);
  ASSERT_EQ(fastopt_grad_sumsq(opt, sums.data(), bad.data()), FASTOPT_OK);
  fastopt::Optimizer twin = AdamSetup::optimizer();
  twin.grad_sumsq(by_cpp.data(), bad_cpp.data());
  EXPECT_EQ(sums, by_cpp);
  EXPECT_EQ(bad, bad_cpp);
  ASSERT_EQ(fastopt_param_sumsq(opt, sums.data(), nullptr), FASTOPT_OK);
  twin.param_sumsq(by_cpp.data(), bad_cpp.data());
  EXPECT_EQ(sums, by_cpp);
  const int64_t zero = 0;
  fastopt_step_options o = fastopt_default_step_options();
  o.rule_steps = &zero;
  EXPECT_TRUE(c_error(fastopt_step(opt, &o, nullptr), kArgument, "step must be >= 1, got 0"));
  expect_untouched();
  // One step from the initial values at rule step 3 (Adam's bias corrections of step 3) through
  // each face: the same bits, and not those of rule step 1.
  const int64_t three = 3;
  o.rule_steps = &three;
  ASSERT_EQ(fastopt_step(opt, &o, nullptr), FASTOPT_OK);
  EXPECT_EQ(steps(), 1);
  const std::vector<Bits> by_c = values();
  restore_initial();
  fastopt::StepOptions cpp;
  cpp.rule_steps = &three;
  twin.step(cpp);
  EXPECT_EQ(values(), by_c);
  restore_initial();
  twin.step();
  EXPECT_NE(values(), by_c);
}

TEST_F(CAbi, BadGrads) {
  created();
  Buffer wrong = Buffer::f32({1, 2, 3, 4});
  fastopt_tensor grads[2] = {wrong.c_tensor(), params[1].grad.c_tensor()};
  EXPECT_TRUE(c_error(fastopt_set_grads(opt, grads, 2), kTensor, "grad 0: shape (4,) differs from param 0's shape (3,)"));
  EXPECT_TRUE(c_error(fastopt_set_grads(opt, grads, 1), kArgument, "got 1 grads for 2 params"));
  expect_untouched();
}

TEST_F(CAbi, UnknownRule) {
  EXPECT_TRUE(c_error(create("foo"), kArgument, "unknown rule 'foo'"));
  EXPECT_EQ(fastopt_state_name("foo", 0), nullptr);
  EXPECT_STREQ(fastopt_last_error(), "unknown rule 'foo'");
  EXPECT_STREQ(fastopt_state_name("adam", 2), "max_exp_avg_sq");
  EXPECT_EQ(fastopt_state_name("adam", 3), nullptr);
}

TEST_F(CAbi, LastErrorIsPerThread) {
  EXPECT_EQ(create("foo"), kArgument);
  std::thread([] {
    EXPECT_STREQ(fastopt_last_error(), "");
    EXPECT_EQ(fastopt_step(nullptr, nullptr, nullptr), kArgument);
  }).join();
  EXPECT_STREQ(fastopt_last_error(), "unknown rule 'foo'");
}

// The ABI called from C steps as the C++ API does.
TEST(CAbiFromC, SameBitsAsTheCppApi) {
  const std::vector<float> p0{0.5f, -1.0f, 2.0f, 0.125f, -3.0f}, g{0.25f, -0.5f, 0.75f, 1.0f, -0.125f};
  Buffer pc = Buffer::f32(p0), gc = Buffer::f32(g), mc(fastopt::DType::f32, {5}), vc(fastopt::DType::f32, {5});
  ASSERT_EQ(c_adam_steps(pc.floats(), gc.floats(), mc.floats(), vc.floats(), 5, 0.01, 3), FASTOPT_OK)
      << fastopt_last_error();
  Buffer p = Buffer::f32(p0), gr = Buffer::f32(g), m(fastopt::DType::f32, {5}), v(fastopt::DType::f32, {5});
  fastopt::Adam::Hyper h;
  h.lr = 0.01;
  fastopt::Optimizer opt(fastopt::RuleId::adam, {{h, {{p.tensor(), gr.tensor(), {}, {m.tensor(), v.tensor()}}}}});
  for (int k = 0; k < 3; ++k) opt.step();
  EXPECT_EQ(pc.bits(), p.bits());
  EXPECT_EQ(mc.bits(), m.bits());
  EXPECT_EQ(vc.bits(), v.bits());
  EXPECT_NE(pc.bits(), Buffer::f32(p0).bits());
}

// 8-bit state (absmax arrays) and bfloat16 state rounded stochastically through the C ABI give
// the C++ API's bits.
TEST(CAbiState, PrecisionsGiveTheCppApisBits) {
  using fastopt::DType;
  const int64_t n = 5000, blocks = 3;  // (2048 per absmax)
  std::vector<float> p0(n), g(n);
  for (int64_t i = 0; i < n; ++i) p0[size_t(i)] = std::sin(0.1f * float(i)), g[size_t(i)] = std::cos(0.37f * float(i));
  for (const auto& [dtype, stochastic] : {std::pair{DType::u8, false}, {DType::bf16, false}, {DType::bf16, true}}) {
    struct Run {
      Buffer p, g, m, v, am, av;
    };
    auto fresh = [&, dtype = dtype] {
      return Run{Buffer::f32(p0), Buffer::f32(g), Buffer(dtype, {n}), Buffer(dtype, {n}), Buffer(DType::f32, {blocks}),
                 Buffer(DType::f32, {blocks})};
    };
    const bool q8 = dtype == DType::u8;
    Run cpp = fresh(), c = fresh();
    fastopt::ParamTensors t{cpp.p.tensor(), cpp.g.tensor(), {}, {cpp.m.tensor(), cpp.v.tensor()}};
    if (q8) t.state_absmax = {cpp.am.tensor(), cpp.av.tensor()};
    t.state_stochastic_rounding = stochastic;
    fastopt::Optimizer opt(fastopt::RuleId::adam, {{fastopt::Adam::Hyper{}, {t}}});
    opt.set_seed(7);
    for (int k = 0; k < 3; ++k) opt.step();

    fastopt_tensor state[2] = {c.m.c_tensor(), c.v.c_tensor()}, absmax[2] = {c.am.c_tensor(), c.av.c_tensor()};
    fastopt_param p{};
    p.param = c.p.c_tensor();
    p.grad = c.g.c_tensor();
    p.state = state;
    p.num_state = 2;
    p.state_absmax = q8 ? absmax : nullptr;
    p.state_stochastic_rounding = stochastic;
    const int64_t sizes[1] = {1};
    fastopt_optimizer* copt = nullptr;
    ASSERT_EQ(fastopt_optimizer_create("adam", &p, 1, sizes, 1, &copt), FASTOPT_OK) << fastopt_last_error();
    ASSERT_EQ(fastopt_set_seed(copt, 7), FASTOPT_OK);
    const fastopt_step_options options = fastopt_default_step_options();
    for (int k = 0; k < 3; ++k) ASSERT_EQ(fastopt_step(copt, &options, nullptr), FASTOPT_OK);
    fastopt_optimizer_destroy(copt);
    for (auto [a, b] : {std::pair{&cpp.p, &c.p}, {&cpp.m, &c.m}, {&cpp.v, &c.v}, {&cpp.am, &c.am}, {&cpp.av, &c.av}}) {
      EXPECT_EQ(a->bits(), b->bits()) << fastopt::dtype_name(dtype) << (stochastic ? " stochastic" : "");
    }
    if (q8) {
      EXPECT_NE(cpp.am.bits(), Bits(blocks, 0));  // (the absmax arrays were written)
    }
  }
}

}  // namespace
}  // namespace fastopt_test
