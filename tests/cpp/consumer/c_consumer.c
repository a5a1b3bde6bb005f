/* SGD with momentum through the C ABI: two steps checked against the update written out by hand
 * (exact in float32 for these values), then a bad input, which must change nothing. */
#include <fastopt/c_api.h>
#include <stdio.h>
#include <string.h>

static int fail(const char* what) {
  fprintf(stderr, "c_consumer: %s (last error: %s)\n", what, fastopt_last_error());
  return 1;
}

int main(void) {
  float p[4] = {1.0f, 2.0f, 3.0f, 4.0f}, g[4] = {0.5f, 0.5f, -1.0f, 2.0f}, buf[4] = {0};
  int64_t shape[1] = {4};
  fastopt_tensor state = {buf, shape, 1, FASTOPT_FLOAT32, 1, 0, 0};
  fastopt_param param = {{p, shape, 1, FASTOPT_FLOAT32, 1, 0, 0}, {g, shape, 1, FASTOPT_FLOAT32, 1, 0, 1},
                         {NULL, NULL, 0, 0, 0, 0, 0}, &state, 1};
  int64_t group_size = 1;
  fastopt_optimizer* opt = NULL;
  if (fastopt_optimizer_create("sgd", &param, 1, &group_size, 1, &opt) != FASTOPT_OK) return fail("create");
  if (fastopt_set_hyper(opt, 0, "lr", 0.5) || fastopt_set_hyper(opt, 0, "momentum", 0.5)) return fail("set_hyper");
  for (int t = 0; t < 2; ++t) {
    if (fastopt_step(opt, NULL, NULL) != FASTOPT_OK) return fail("step");
  }
  /* b1 = g, p1 = p - 0.5 g; b2 = 0.5 b1 + g = 1.5 g, p2 = p1 - 0.75 g = p - 1.25 g */
  for (int i = 0; i < 4; ++i) {
    const float want = (float)(i + 1) - 1.25f * g[i];
    if (p[i] != want) return fail("wrong update");
  }
  float before[4];
  memcpy(before, p, sizeof p);
  if (fastopt_set_hyper(opt, 0, "lr", -1.0) != FASTOPT_ERROR_ARGUMENT) return fail("a negative lr was taken");
  if (strcmp(fastopt_last_error(), "param group 0: lr must be finite and >= 0, got -1") != 0) return fail("message");
  if (fastopt_step(opt, NULL, NULL) != FASTOPT_OK || memcmp(before, p, sizeof p) == 0) return fail("step after error");
  int64_t steps = 0;
  if (fastopt_get_steps(opt, &steps, 1) != FASTOPT_OK || steps != 3) return fail("steps");
  fastopt_optimizer_destroy(opt);
  printf("c_consumer: ok (isa %s, %d threads)\n", fastopt_cpu_isa(), fastopt_get_num_threads());
  return 0;
}
