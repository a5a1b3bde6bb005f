// Each target's kernel set, assembled from its parts (kernels.h: fill_part).
#include "kernels.h"

#include <type_traits>
#include <utility>

namespace fastopt::cpu {
namespace {

template <class Fill, int... part>
KernelSet assemble(const char* isa, Fill fill, std::integer_sequence<int, part...>) {
  KernelSet s{};
  s.isa = isa;
  (fill(s, std::integral_constant<int, part>{}), ...);
  return s;
}

}  // namespace

#define FASTOPT_KERNEL_SET(isa)                                                                      \
  const KernelSet& kernels_##isa() {                                                                 \
    static const KernelSet set = assemble(                                                           \
        #isa, [](KernelSet& s, auto part) { isa::fill_part<decltype(part)::value>(s); },             \
        std::make_integer_sequence<int, FASTOPT_KERNEL_PARTS>{});                                    \
    return set;                                                                                      \
  }
FASTOPT_KERNEL_SET(scalar)
#if defined(FASTOPT_X86)
FASTOPT_KERNEL_SET(avx2)
FASTOPT_KERNEL_SET(avx512)
#endif
#undef FASTOPT_KERNEL_SET

}  // namespace fastopt::cpu
