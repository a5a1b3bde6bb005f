#include "isa.h"

#if defined(FASTOPT_X86)
#include <cpuid.h>
#endif

#include <cstdint>
#include <cstdlib>
#include <stdexcept>

namespace fastopt::cpu {
namespace {

struct Features { bool avx2 = false, avx512 = false; };

#if defined(FASTOPT_X86)
uint64_t xgetbv0() {
  uint32_t lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (uint64_t(hi) << 32) | lo;
}

Features detect() {
  Features f;
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
  const bool fma = c & (1u << 12), osxsave = c & (1u << 27), avx = c & (1u << 28),
             f16c = c & (1u << 29);
  if (!(osxsave && avx)) return f;
  const uint64_t xcr0 = xgetbv0();
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return f;
  const bool ymm_os = (xcr0 & 0x6) == 0x6, zmm_os = (xcr0 & 0xe6) == 0xe6;
  f.avx2 = ymm_os && fma && f16c && (b & (1u << 5));
  f.avx512 = f.avx2 && zmm_os && (b & (1u << 16)) && (b & (1u << 17)) && (b & (1u << 30)) &&
             (b & (1u << 31));  // F, DQ, BW, VL
  return f;
}
#else
Features detect() { return {}; }  // not x86-64: the scalar target only
#endif

const Features& features() {
  static const Features f = detect();
  return f;
}

// The kernel set for a target name, or null where the CPU lacks it; throws for an unknown name.
const KernelSet* by_name(const std::string& name, const char* source) {
  if (name == "scalar") return &kernels_scalar();
#if defined(FASTOPT_X86)
  if (name == "avx2") return features().avx2 ? &kernels_avx2() : nullptr;
  if (name == "avx512") return features().avx512 ? &kernels_avx512() : nullptr;
#else
  if (name == "avx2" || name == "avx512") return nullptr;
#endif
  throw std::invalid_argument(std::string(source) + "'" + name + "' is not a CPU target: expected scalar, avx2 or avx512");
}

const KernelSet* checked(const std::string& name, const char* source) {
  const KernelSet* k = by_name(name, source);
  if (!k) {
    throw std::invalid_argument(std::string(source) + "'" + name +
                                "' is not supported by this CPU (or OS); supported: " +
                                (features().avx512 ? "scalar, avx2, avx512"
                                 : features().avx2 ? "scalar, avx2"
                                                   : "scalar"));
  }
  return k;
}

const KernelSet*& current() {
  static const KernelSet* k = [] {
    const char* env = std::getenv("FASTOPT_CPU_ISA");
    if (env && *env) return checked(env, "FASTOPT_CPU_ISA=");
    const KernelSet* best = &kernels_scalar();
    for (const char* isa : {"avx2", "avx512"}) {
      if (const KernelSet* k = by_name(isa, "")) best = k;
    }
    return best;
  }();
  return k;
}

}  // namespace

bool isa_supported(const std::string& name) { return by_name(name, "CPU ISA ") != nullptr; }

const KernelSet& active_kernels() { return *current(); }

void set_isa(const std::string& name) { current() = checked(name, "CPU ISA "); }

}  // namespace fastopt::cpu
