// A small valid Adam binding that the bad-input tests spoil one thing of: param 0 float32 (3,),
// param 1 bfloat16 (4,) with fp32 master weights, each with its two state arrays (and a third,
// unbound, for amsgrad). It remembers every value, to check that a refused call changed nothing.
#pragma once
#include <gtest/gtest.h>

#include <deque>
#include <vector>

#include "fastopt/c_api.h"
#include "fastopt/optimizer.h"
#include "support/buffer.h"

namespace fastopt_test {

struct ParamMemory {
  Buffer param, grad, master;  // master: only for param 1
  std::vector<Buffer> state;   // exp_avg, exp_avg_sq, max_exp_avg_sq
  size_t num_state = 2;        // how many of them are bound
  std::vector<fastopt_tensor> c_state;

  fastopt::ParamTensors tensors() {
    fastopt::ParamTensors t;
    t.param = param.tensor();
    t.grad = grad.tensor();
    if (master.numel()) t.master = master.tensor();
    for (size_t s = 0; s < num_state; ++s) t.state.push_back(state[s].tensor());
    return t;
  }
  fastopt_param c_param() {
    c_state.clear();
    for (size_t s = 0; s < num_state; ++s) c_state.push_back(state[s].c_tensor());
    fastopt_param p{};
    p.param = param.c_tensor();
    p.grad = grad.c_tensor();
    if (master.numel()) p.master = master.c_tensor();
    p.state = c_state.data();
    p.num_state = int32_t(c_state.size());
    return p;
  }
};

class AdamSetup : public ::testing::Test {
 protected:
  void SetUp() override {
    ParamMemory& a = params.emplace_back();
    a.param = Buffer::f32({0.5f, -1.0f, 2.0f});
    a.grad = Buffer::f32({0.25f, 0.5f, -0.75f});
    ParamMemory& b = params.emplace_back();
    b.param = Buffer(fastopt::DType::bf16, {4});
    b.param.set_bits({0x3f80, 0xbf00, 0x4000, 0x3e80});  // 1, -0.5, 2, 0.25
    b.grad = Buffer(fastopt::DType::bf16, {4});
    b.grad.set_bits({0x3f00, 0x3f00, 0xbf00, 0x3f80});
    b.master = Buffer(fastopt::DType::f32, {4});
    fastopt::widen(b.param.tensor(), b.master.tensor());
    for (ParamMemory* p : {&a, &b}) {
      for (int s = 0; s < 3; ++s) p->state.emplace_back(fastopt::DType::f32, p->param.shape());
    }
    initial = values();
  }

  // One Adam group over every param (with hyperparameters h).
  std::vector<fastopt::ParamGroup> groups(const fastopt::Hyper& h = fastopt::Adam::Hyper{}) {
    fastopt::ParamGroup g{h, {}};
    for (ParamMemory& p : params) g.params.push_back(p.tensors());
    return {g};
  }
  fastopt::Optimizer optimizer() { return fastopt::Optimizer(fastopt::RuleId::adam, groups()); }

  // Every value of every buffer (params, grads, masters, state).
  std::vector<Bits> values() const {
    std::vector<Bits> out;
    for (const ParamMemory& p : params) {
      out.push_back(p.param.bits()), out.push_back(p.grad.bits()), out.push_back(p.master.bits());
      for (const Buffer& s : p.state) out.push_back(s.bits());
    }
    return out;
  }
  // Writes the initial values back into every buffer (the order of values()).
  void restore_initial() {
    size_t k = 0;
    for (ParamMemory& p : params) {
      p.param.set_bits(initial[k++]), p.grad.set_bits(initial[k++]), p.master.set_bits(initial[k++]);
      for (Buffer& s : p.state) s.set_bits(initial[k++]);
    }
  }
  void expect_untouched() const { EXPECT_EQ(values(), initial) << "a refused call changed memory"; }
  void expect_changed() const { EXPECT_NE(values(), initial) << "the step wrote nothing"; }

  std::deque<ParamMemory> params;
  std::vector<Bits> initial;
};

}  // namespace fastopt_test
