// AdamW through the C++ API on a float32 param and a bfloat16 param with float32 master
// weights: clipping reported, a NaN grad skipped, a bad tensor refused with TensorError.
#include <fastopt/optimizer.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <vector>

static int fail(const char* what) {
  std::fprintf(stderr, "cpp_consumer: %s\n", what);
  return 1;
}

int main() {
  std::vector<float> w(6, 1.0f), gw(6, 3.0f), m(6), v(6);
  std::vector<uint16_t> b(3, 0x3f80);  // bfloat16 1.0
  std::vector<float> gb(3, 4.0f), mb(3), vb(3), master(3, 1.0f);
  fastopt::Adam::Hyper h;
  h.lr = 0.1;
  h.weight_decay = 0.01;
  h.decoupled = true;  // AdamW
  fastopt::ParamTensors pw{{w.data(), 6}, {gw.data(), 6}, {}, {{m.data(), 6}, {v.data(), 6}}};
  fastopt::ParamTensors pb{{b.data(), {3}, fastopt::DType::bf16}, {gb.data(), 3}, {master.data(), 3},
                           {{mb.data(), 3}, {vb.data(), 3}}};
  fastopt::Optimizer opt({fastopt::ParamGroup{h, {pw, pb}}});
  fastopt::StepOptions o;
  o.max_grad_norm = 1.0;
  const fastopt::StepResult r = opt.step(o);
  // |g| = sqrt(6 * 9 + 3 * 16) = sqrt(102)
  if (!r.grad_norm || std::fabs(*r.grad_norm - std::sqrt(102.0)) > 1e-12 || r.skipped) return fail("grad norm");
  if (!(w[0] < 1.0f) || !(master[0] < 1.0f)) return fail("no update");
  gw[2] = NAN;
  o.skip_nonfinite = true;
  const std::vector<float> before = w;
  if (!opt.step(o).skipped || w != before || opt.steps()[0] != 1) return fail("a NaN grad was not skipped");
  try {
    std::vector<float> short_grad(5);
    fastopt::Optimizer bad({fastopt::ParamGroup{h, {{{w.data(), 6}, {short_grad.data(), 5}, {}, {}}}}});
    return fail("a grad of the wrong shape was taken");
  } catch (const fastopt::TensorError& e) {
    if (std::strcmp(e.what(), "grad 0: shape (5,) differs from param 0's shape (6,)") != 0) return fail(e.what());
  }
  std::printf("cpp_consumer: ok (grad norm %.6f, isa %s)\n", *r.grad_norm, opt.isa());
  return 0;
}
