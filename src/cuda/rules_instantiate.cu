// Instantiates every rule, for every param/grad storage combination, as CUDA device code:
// proof that the rule headers compile unchanged for the GPU. The CUDA engine drives the
// same apply_element from its multi-tensor kernels.
#include "fastopt/element.h"
#include "fastopt/rules/adam.h"
#include "fastopt/rules/sgd.h"

namespace fastopt::cuda {

template <class Rule, class P, class G>
__global__ void apply_rule(typename Rule::Coeffs c, TensorSlot t) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < t.numel; i += stride) {
    apply_element<Rule, float, P, G>(c, t, i);
  }
}

template <class Rule, class P>
void instantiate_grads() {
  (void)&apply_rule<Rule, P, float>;
  (void)&apply_rule<Rule, P, f16>;
  (void)&apply_rule<Rule, P, bf16>;
}

template <class Rule>
void instantiate_rule() {
  instantiate_grads<Rule, float>();
  instantiate_grads<Rule, f16>();
  instantiate_grads<Rule, bf16>();
}

// Referenced so that every instantiation is emitted.
void instantiate_all_rules() {
  instantiate_rule<Sgd>();
  instantiate_rule<Adam>();
}

}  // namespace fastopt::cuda
