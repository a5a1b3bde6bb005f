/* The C ABI used from C (this file is compiled as C99): an Adam optimizer over one float32
 * param, stepped `steps` times with lr set by name. test_c_api.cpp compares it with the C++ API. */
#include <stddef.h>

#include "fastopt/c_api.h"

fastopt_status c_adam_steps(float* param, float* grad, float* exp_avg, float* exp_avg_sq, int64_t n, double lr,
                            int steps) {
  const int64_t shape[1] = {n};
  const fastopt_tensor none = {NULL, NULL, 0, FASTOPT_FLOAT32, 1, 0, 0};
  fastopt_tensor state[2] = {{exp_avg, shape, 1, FASTOPT_FLOAT32, 1, 0, 0},
                             {exp_avg_sq, shape, 1, FASTOPT_FLOAT32, 1, 0, 0}};
  fastopt_param p;
  const int64_t group_sizes[1] = {1};
  fastopt_optimizer* opt = NULL;
  fastopt_step_options options = fastopt_default_step_options();
  fastopt_status s;
  int k;

  p.param = state[0];
  p.param.data = param;
  p.grad = state[0];
  p.grad.data = grad;
  p.grad.readonly = 1;
  p.master = none;
  p.remainder = none;
  p.compensation = none;
  p.stochastic_rounding = 0;
  p.state_absmax = NULL;
  p.state_stochastic_rounding = 0;
  p.state = state;
  p.num_state = 2;
  s = fastopt_optimizer_create("adam", &p, 1, group_sizes, 1, &opt);
  if (s != FASTOPT_OK) return s;
  s = fastopt_set_hyper(opt, 0, "lr", lr);
  for (k = 0; k < steps && s == FASTOPT_OK; ++k) s = fastopt_step(opt, &options, NULL);
  fastopt_optimizer_destroy(opt);
  return s;
}
