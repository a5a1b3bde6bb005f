// The CPU kernels, written once and compiled once per ISA and part (kernels.h: fill_part). The
// including file defines FASTOPT_ISA (a namespace name) and FASTOPT_LANE (the vector lane type);
// CMake defines FASTOPT_PART and FASTOPT_KERNEL_PARTS. No -march=native: each target's flags
// are set by CMake on its own translation units.
#include "fastopt/element.h"
#include "fastopt/factored.h"
#include "fastopt/reduce.h"
#include "fastopt/rules/registry.h"
#include "kernels.h"

#include <type_traits>

namespace fastopt::cpu::FASTOPT_ISA {
namespace {  // (each part defines all of it: none of it is shared between translation units)

// Elements ahead of the current one that a vector kernel prefetches into L2 (2 KiB of an fp32
// stream): the hardware prefetchers alone keep too few lines in flight to reach the memory
// bandwidth; measured on the 2-core AVX-512 machine, +10% on read-only streams. With 8-bit
// state, a whole block ahead: the next block's lines then arrive while this one is quantized
// and the next dequantized, phases that load nothing from memory.
constexpr int64_t kPrefetchElems = 512;

// Prefetches the streams that a pass reads and writes at element i + kPrefetchElems (8-bit
// state: i + quant::kQuantBlock) of tensor t (none past its end, none for the scalar lane). A
// first pass that writes the state has folded the grad into it, so the update after it reads
// no grad (LAMB); a first pass that does not write the state reads none of it (LARS).
template <class Rule, bool first_pass, class L, class P, class Rows = std::nullptr_t>
FASTOPT_HD void prefetch_ahead(const TensorSlot& t, int64_t i) {
  if constexpr (lane_width<L> > 1) {
    const int64_t j = i + (t.state_store == StateStore::q8 ? quant::kQuantBlock : kPrefetchElems);
    if (j >= t.numel) return;
    constexpr bool grad = first_pass || !writes_state<Rule>::prepass;
    constexpr bool state = !first_pass || writes_state<Rule>::prepass;
    if (grad) __builtin_prefetch(static_cast<const char*>(t.grad) + j * (t.grad_dtype == DType::f32 ? 4 : 2), 0, 2);
    if (t.master) __builtin_prefetch(t.master + j, !first_pass, 2);
    if (!t.master || !first_pass) __builtin_prefetch(static_cast<const P*>(t.param) + j, !first_pass, 2);
    const int64_t at = t.state_store == StateStore::f32 ? 4 * j : t.state_store == StateStore::q8 ? j : 2 * j;
    // (factored state, one value per row and per column, stays in cache)
    for (int k = 0; k < (state && !factored_rows<Rows> ? Rule::max_state : 0); ++k) {  // k constant once unrolled
      if (k < t.num_state) __builtin_prefetch(static_cast<const char*>(t.state[k]) + at, 1, 2);
    }
  }
}

// 8-bit state goes through the kernels kQ8Chunk elements at a time: one dequantization by the
// AVX-512 target's byte permutes (simd_avx512.h, which has its own load_q8_chunk and
// store_q8_chunk; these are the other targets', lane by lane).
constexpr int64_t kQ8Chunk = 64;
template <class V, int n>
[[gnu::always_inline]] inline void load_q8_chunk(const uint8_t* codes, const quant::Tables& tb, float absmax, V (&out)[n]) {
  static_assert(n * lane_width<V> == kQ8Chunk);
  for (int k = 0; k < n; ++k) out[k] = load_q8(codes + k * lane_width<V>, tb, V(absmax), Lane<V>{});
}
template <class V, class Q>
void store_q8_chunk(uint8_t* codes, const float* x, float inv, const Q& q, Lane<V>) {
  for (int k = 0; k < kQ8Chunk; k += lane_width<V>) store_q8(codes + k, load(x + k, Lane<V>{}) * V(inv), q);
}

// The absmax of a block's n new values: the largest |x| compared as bits (quant::quantize_block).
inline float block_absmax(const float* x, int64_t n) {
  uint32_t bits = 0;
  for (int64_t i = 0; i < n; ++i) {  // (vectorized by the compiler)
    const uint32_t a = quant::float_bits(x[i]) & 0x7fffffffu;
    bits = a > bits ? a : bits;
  }
  return quant::absmax_of_bits(bits);
}

// Values [from, to) of one block of 8-bit state (x: the block's new values) quantized into its
// codes with inv, the reciprocal of the block's absmax.
inline void quantize_range(const float* x, int64_t from, int64_t to, float inv, const quant::Tables& tb,
                           uint8_t* codes) {
  using V = FASTOPT_LANE;
  const auto& q = quantizer(tb, Lane<V>{});
  int64_t i = from;
  for (; i + kQ8Chunk <= to; i += kQ8Chunk) store_q8_chunk(codes + i, x + i, inv, q, Lane<V>{});
  for (; i + lane_width<V> <= to; i += lane_width<V>) store_q8(codes + i, load(x + i, Lane<V>{}) * V(inv), q);
  for (; i < to; ++i) store_q8(codes + i, x[i] * inv, tb);
}

// One block of 8-bit state quantized again from its new values (n of them): the absmax and the codes.
void requantize_block(const float* x, int64_t n, const quant::Tables& tb, uint8_t* codes, float* absmax) {
  *absmax = block_absmax(x, n);
  quantize_range(x, 0, n, quant::inv_absmax(*absmax), tb, codes);
}

// One block of 8-bit state dequantized into x (n values).
void dequantize_block(const uint8_t* codes, int64_t n, const quant::Tables& tb, float absmax, float* x) {
  using V = FASTOPT_LANE;
  int64_t i = 0;
  for (; i + kQ8Chunk <= n; i += kQ8Chunk) {
    V v[kQ8Chunk / lane_width<V>];
    load_q8_chunk(codes + i, tb, absmax, v);
    for (int k = 0; k < kQ8Chunk / lane_width<V>; ++k) store(x + i + k * lane_width<V>, v[k]);
  }
  for (; i < n; ++i) x[i] = quant::dequantize(codes[i], absmax, tb);
}

// f(b, e, block) over [begin, end) of tensor t (begin a multiple of quant::kQuantBlock): at once
// (block nullptr) where its state is stored in place; one block at a time where it is 8-bit,
// each block's state dequantized into scratch, updated there and, where the pass `writes` it,
// quantized again (block a QuantBlock, f's own copy: f is instantiated apart for each).
template <class F>
void by_blocks(const TensorSlot& t, int64_t begin, int64_t end, bool writes, F&& f) {
  if (t.state_store != StateStore::q8 || t.num_state == 0) return f(begin, end, nullptr);
  alignas(64) float values[kMaxState][quant::kQuantBlock];
  for (int64_t b = begin; b < end; b += quant::kQuantBlock) {
    const int64_t e = b + quant::kQuantBlock < end ? b + quant::kQuantBlock : end, block = b / quant::kQuantBlock;
    QuantBlock q{};
    q.begin = b;
    for (int k = 0; k < t.num_state; ++k) {
      q.absmax[k] = t.absmax[k][block], q.values[k] = values[k];
      dequantize_block(static_cast<const uint8_t*>(t.state[k]) + b, e - b, *t.quant[k], q.absmax[k], values[k]);
    }
    f(b, e, q);
    for (int k = 0; k < (writes ? t.num_state : 0); ++k) {
      requantize_block(values[k], e - b, *t.quant[k], static_cast<uint8_t*>(t.state[k]) + b, t.absmax[k] + block);
    }
  }
}

// f of by_blocks (not inlined) works on copies in its own frame, which the compiler can see
// that the stores into the tensors leave alone: through references into its caller's, every
// element would load them again. The slot's copy, over a block of 8-bit state, has its
// state_store known to the compiler, so that element.h's switches on it, per element, fold
// away. (Measured on one core of the 2-core AVX-512 machine, 8-bit AdamW in cache: the known
// store took the update over the scratch from 0.56 to 0.32 ns per element, the copies the
// whole step from 1.18 to 1.10.)
inline TensorSlot in_blocks(const TensorSlot& t, std::nullptr_t) { return t; }
inline TensorSlot in_blocks(const TensorSlot& t, const QuantBlock&) {
  TensorSlot s = t;
  s.state_store = StateStore::q8;
  return s;
}
inline std::nullptr_t block_ptr(std::nullptr_t) { return nullptr; }
inline QuantBlock* block_ptr(QuantBlock& q) { return &q; }
inline const GradTransform& in_blocks(const GradTransform& x, std::nullptr_t) { return x; }
inline const GradTransform& in_blocks(const GradTransform& x, const QuantBlock&) { return x; }

// The update over a plain tensor (fp32 grad and state, no Kahan compensation or stochastic
// rounding: the common case) gets every storage choice, its state count N and whether its grads
// are transformed (T) known to the compiler: its loop then holds the rule's arithmetic and the
// loads and stores, little else. Its param is an fp32 value, or a half one with its fp32
// master or (bfloat16) its remainder (K). (Measured on the 2-core AVX-512 machine, AdamW over
// one tensor of 2^18 fp32 params, 2 threads, interleaved with DeepSpeed's CPU Adam: 0.141 to
// 0.099-0.106 ms; bf16 + remainder over 2^25: 1.20-1.24x the probe's time to 1.03-1.04x.)
enum class Kept { nothing, master, remainder };
template <int N, bool T, Kept K>
struct Plain {};
template <int N, bool T, Kept K>
TensorSlot in_blocks(const TensorSlot& t, Plain<N, T, K>) {
  TensorSlot s = t;
  s.grad_dtype = DType::f32, s.state_store = StateStore::f32, s.num_state = N;
  s.compensation = nullptr, s.stochastic = false;
  if (K != Kept::master) s.master = nullptr;
  if (K != Kept::remainder) s.remainder = nullptr;
  return s;
}
template <int N, bool T, Kept K>
GradTransform in_blocks(const GradTransform& x, Plain<N, T, K>) {
  return T ? x : GradTransform{1.0f, 0.0f, x.round_key};
}
template <int N, bool T, Kept K>
std::nullptr_t block_ptr(Plain<N, T, K>) {
  return nullptr;
}

// The elements before a plain tensor's param (of P) reaches a 64-byte boundary, at most `n`,
// none where it is not aligned to its element: the update takes them one by one, then its
// vectors load and store whole cache lines. (Measured on the 2-core AVX-512 machine, AdamW over
// one 2^25 tensor whose four streams all start 16 bytes past a line, as NumPy's large arrays
// do: 33.8 ms, 24.5 ms with all of them aligned, 27.7 with the param alone off.) fastopt
// allocates NumPy state where the same elements align it (_arrays.state_like).
template <class P>
int64_t peel_to_line(const void* param, int64_t i, int64_t n) {
  const uintptr_t at = reinterpret_cast<uintptr_t>(static_cast<const P*>(param) + i) % 64;
  const int64_t k = at % sizeof(P) ? 0 : int64_t((64 - at) % 64 / sizeof(P));
  return k < n ? k : n;
}
template <class B>
constexpr bool is_plain = false;
template <int N, bool T, Kept K>
constexpr bool is_plain<Plain<N, T, K>> = true;

// f(std::integral_constant<int, N>{}) where num_state is N, one of the rule's state_counts (at
// least n); false, f not called, for any other.
template <class Rule, int n, class F>
bool with_state_count(int num_state, F&& f) {
  if (num_state != n) {
    if constexpr (n < Rule::max_state) return with_state_count<Rule, n + 1>(num_state, f);
    return false;
  } else if constexpr (takes_state_count<Rule>(n)) {
    f(std::integral_constant<int, n>{});
    return true;
  }
  return false;
}

// f(std::integral_constant<Kept, K>{}), which returns whether it ran, for a tensor of P with fp32
// grads, no Kahan compensation or stochastic rounding, and an fp32 param alone or a half one with
// its fp32 master or (bfloat16) its remainder (K); false, f not called, for any other.
template <class P, class F>
bool with_kept(const TensorSlot& t, F&& f) {
  if (t.grad_dtype != DType::f32 || t.compensation || t.stochastic) return false;
  if constexpr (std::is_same_v<P, float>) {
    if (t.master || t.remainder) return false;
    return f(std::integral_constant<Kept, Kept::nothing>{});
  } else if (t.master) {
    return f(std::integral_constant<Kept, Kept::master>{});
  } else if constexpr (std::is_same_v<P, bf16>) {
    if (!t.remainder) return false;  // (rounded to nearest: the general loop)
    return f(std::integral_constant<Kept, Kept::remainder>{});
  }
  return false;
}

// Whether grads are scaled or clipped before the rule (GradTransform's identity otherwise).
inline bool transforms(const GradTransform& x) { return x.scale != 1.0f || x.clip_value > 0.0f; }

// f(Plain<N, T, K>{}) for a plain tensor of P (in_blocks: with_kept's, with fp32 state) with N
// states (one of the rule's state_counts) and grads transformed (T) or not; false, f not called,
// for any other.
template <class Rule, class P, class F>
bool with_plain(const TensorSlot& t, const GradTransform& x, F&& f) {
  if (t.state_store != StateStore::f32) return false;
  return with_kept<P>(t, [&](auto kept) {
    constexpr Kept K = decltype(kept)::value;
    return with_state_count<Rule, 0>(t.num_state, [&](auto n) {
      if (transforms(x)) f(Plain<decltype(n)::value, true, K>{});
      else f(Plain<decltype(n)::value, false, K>{});
    });
  });
}

// f(rows): rows a RowCursor* for a tensor with factored state (fastopt/factored.h), else nullptr.
template <class Rule, class F>
void with_rows(const TensorSlot& t, F&& f) {
  if constexpr (is_factored<Rule>::value) {
    if (t.rows) {
      RowCursor r;
      return f(&r);
    }
  }
  f(nullptr);
}

// The update over [begin, end) of a tensor with 8-bit state (begin a multiple of
// quant::kQuantBlock), software-pipelined: chunk by chunk (kQ8Chunk elements), the state is
// dequantized into vectors and updated, its new values kept (`values`) until the block's absmax
// is known, and quantized while the chunk at the same place of the next block is updated; the
// tail of the tensor's last block, element by element. The same bits as by_blocks (the scalar
// target's), which dequantizes a whole block into memory, updates it there, then quantizes it:
// here each new state value is stored once, not twice, and read back twice, not three times. The
// param's storage and the state count are known to the compiler for an fp32 param or a half one
// with its master (kind a Plain, as the plain update's, with T true), else tested per element
// (kind a QuantBlock). (Measured, AdamW over one tensor of 2^25 params with 8-bit state: on the
// 2-core AVX-512 machine, `fastopt bench --storage`, 23.5-24.4 ms by blocks, 19.7-20.8 ms
// pipelined; on a 2-core AVX2 one, 60-71 and 47-56 ms.)
template <class Rule, class P, class Kind>
void q8_update(const void* coeffs, const GradTransform& transform, const TensorSlot& slot, int64_t begin,
               int64_t end, Kind kind) {
  using V = FASTOPT_LANE;
  constexpr int W = lane_width<V>, N = Rule::max_state;
  const typename Rule::Coeffs c = *static_cast<const typename Rule::Coeffs*>(coeffs);
  const GradTransform x = in_blocks(transform, kind);
  TensorSlot t = in_blocks(slot, kind);
  t.state_store = StateStore::q8;
  const int ns = t.num_state;  // (a constant for a Plain)
  alignas(64) float values[kMaxState][quant::kQuantBlock];
  int64_t prev = -1, prev_n = 0;  // the block whose values wait to be quantized, and their count
  float inv[kMaxState] = {};
  const auto quantize = [&](int64_t from, int64_t to) {
    for (int k = 0; k < N; ++k) {
      if (k < ns) quantize_range(values[k], from, to, inv[k], *t.quant[k], static_cast<uint8_t*>(t.state[k]) + prev);
    }
  };
  for (int64_t b = begin; b < end; b += quant::kQuantBlock) {
    const int64_t e = b + quant::kQuantBlock < end ? b + quant::kQuantBlock : end, block = b / quant::kQuantBlock;
    int64_t i = b;
    for (; i + kQ8Chunk <= e; i += kQ8Chunk) {
      V s[N][kQ8Chunk / W];
      for (int k = 0; k < N; ++k) {
        if (k < ns) {
          load_q8_chunk(static_cast<const uint8_t*>(t.state[k]) + i, *t.quant[k], t.absmax[k][block], s[k]);
        } else {
          for (V& v : s[k]) v = V(0.0f);
        }
      }
      if (prev >= 0) quantize(i - b, i - b + kQ8Chunk);  // (a full block: only the last one is not)
#pragma GCC unroll 8  // (every vector of a chunk, on AVX2 and AVX-512)
      for (int j = 0; j < kQ8Chunk / W; ++j) {
        prefetch_ahead<Rule, false, V, P>(t, i + j * W);
        V v[N];
        for (int k = 0; k < N; ++k) v[k] = s[k][j];
        update_value<Rule, V, P>(c, x, t, i + j * W, v);
        for (int k = 0; k < N; ++k) {
          if (k < ns) store(values[k] + (i - b) + j * W, v[k]);
        }
      }
    }
    if (prev >= 0) quantize(i - b, prev_n);  // (before the last elements take their places)
    for (; i < e; ++i) {
      float v[N];
      for (int k = 0; k < N; ++k) {
        v[k] = k < ns ? quant::dequantize(static_cast<const uint8_t*>(t.state[k])[i], t.absmax[k][block], *t.quant[k])
                      : 0.0f;
      }
      update_value<Rule, float, P>(c, x, t, i, v);
      for (int k = 0; k < ns; ++k) values[k][i - b] = v[k];
    }
    for (int k = 0; k < ns; ++k) {
      t.absmax[k][block] = block_absmax(values[k], e - b);
      inv[k] = quant::inv_absmax(t.absmax[k][block]);
    }
    prev = b, prev_n = e - b;
  }
  if (prev >= 0) quantize(0, prev_n);
}

// The vector body and the scalar tail call the same rule.
template <class Rule, class P>
void run(const void* coeffs, const GradTransform& transform, const TensorSlot& slot, int64_t begin, int64_t end) {
  using V = FASTOPT_LANE;
  with_rows<Rule>(slot, [&](auto rows) {
    using Rows = decltype(rows);
    const auto body = [&](int64_t b, int64_t e, auto block) {
      const typename Rule::Coeffs c = *static_cast<const typename Rule::Coeffs*>(coeffs);
      const GradTransform x = in_blocks(transform, block);
      const TensorSlot t = in_blocks(slot, block);
      const auto q = block_ptr(block);
      int64_t i = b;
      if constexpr (is_plain<decltype(block)>) {
        for (const int64_t peeled = b + peel_to_line<P>(t.param, b, e - b); i < peeled; ++i) {
          apply_element<Rule, float, P>(c, x, t, i, q, rows);
        }
      }
      for (; i + 2 * lane_width<V> <= e; i += 2 * lane_width<V>) {
        prefetch_ahead<Rule, false, V, P, Rows>(t, i);
        prefetch_ahead<Rule, false, V, P, Rows>(t, i + lane_width<V>);
        apply_element<Rule, V, P>(c, x, t, i, q, rows);
        apply_element<Rule, V, P>(c, x, t, i + lane_width<V>, q, rows);
      }
      for (; i + lane_width<V> <= e; i += lane_width<V>) apply_element<Rule, V, P>(c, x, t, i, q, rows);
      for (; i < e; ++i) apply_element<Rule, float, P>(c, x, t, i, q, rows);
    };
    if constexpr (!factored_rows<Rows>) {
      if (with_plain<Rule, P>(slot, transform, [&](auto plain) { body(begin, end, plain); })) return;
      if constexpr (writes_state<Rule>::update && lane_width<V> > 1) {  // (the scalar target: by_blocks)
        if (slot.state_store == StateStore::q8 && slot.num_state > 0) {
          const auto update = [&](auto kind) { q8_update<Rule, P>(coeffs, transform, slot, begin, end, kind); };
          const bool known = with_kept<P>(slot, [&](auto kept) {
            constexpr Kept K = decltype(kept)::value;
            // Grads transformed or not, one loop (T true): these loops took most of the kernels'
            // build time, and the transform's two tests per vector nothing measurable beside the
            // quantization (2-core AVX2 machine, AdamW over 2^18 and 2^25 params, each build's
            // runs alternated). bf16 + remainder: the storage tested per element (QuantBlock).
            if constexpr (K == Kept::remainder) {
              return false;
            } else {
              return with_state_count<Rule, 1>(slot.num_state, [&](auto n) { update(Plain<decltype(n)::value, true, K>{}); });
            }
          });
          if (!known) update(QuantBlock{});
          return;
        }
      }
    }
    by_blocks(slot, begin, end, writes_state<Rule>::update, body);
  });
}

// Sums of squares of K values per element over elements [begin, end) of a tensor, in the
// canonical order of reduce.h (begin a multiple of reduce::kSuper, at most kSuper elements).
// f(i, v) fills v[0..K) for elements i.. of one lane (a V or a float). Lane l of reduce.h is
// lane l % W of accumulator l / W (W doubles: squares_t<V>).
template <int K, class F>
void canonical_sums(F&& f, int64_t begin, int64_t end, double* sums) {
  using V = FASTOPT_LANE;
  constexpr int W = lane_width<V>, N = reduce::kLanes / W;
  for (int k = 0; k < K; ++k) sums[k] = 0;
  for (int64_t b = begin; b < end; b += reduce::kBlock) {
    const int64_t e = b + reduce::kBlock < end ? b + reduce::kBlock : end;
    squares_t<V> acc[K][N] = {};
    int64_t i = b;
    for (; i + reduce::kLanes <= e; i += reduce::kLanes) {
      for (int j = 0; j < N; ++j) {
        V v[K];
        f(i + j * W, v);
        for (int k = 0; k < K; ++k) acc[k][j] = add_square(v[k], acc[k][j]);
      }
    }
    double lanes[K][reduce::kLanes];
    for (int k = 0; k < K; ++k) {
      for (int j = 0; j < N; ++j) store(lanes[k] + j * W, acc[k][j]);
    }
    for (int l = 0; i < e; ++i, ++l) {
      float v[K];
      f(i, v);
      for (int k = 0; k < K; ++k) lanes[k][l] = add_square(v[k], lanes[k][l]);
    }
    for (int k = 0; k < K; ++k) sums[k] += reduce::fold_lanes(lanes[k]);
  }
}

// canonical_sums by blocks of 8-bit state (by_blocks; f(slot, i, v, q)): the same sums, since
// canonical_sums adds reduce.h's blocks (kQuantBlock elements each) in order.
static_assert(quant::kQuantBlock == reduce::kBlock, "a block of 8-bit state is one block of reduce.h");
template <int K, class F>
void block_sums(const TensorSlot& t, int64_t begin, int64_t end, bool writes, F&& f, double* sums) {
  for (int k = 0; k < K; ++k) sums[k] = 0;
  by_blocks(t, begin, end, writes, [&](int64_t b, int64_t e, auto block) {
    const TensorSlot s = in_blocks(t, block);
    const auto q = block_ptr(block);
    double part[K];
    canonical_sums<K>([&](int64_t i, auto& v) { f(s, i, v, q); }, b, e, part);
    for (int k = 0; k < K; ++k) sums[k] += part[k];
  });
}

// Sum of squares and non-finite count of elements [begin, end) of a tensor of T. The values
// are counted only where the sum is not finite: the double square of a finite value is finite,
// and so is a sum of at most kSuper of them (reduce.h), so a finite sum means no inf or NaN,
// and the pass over finite grads needs no per-element check. No software prefetch: on this
// one stream it made the pass 7-29% slower (2-core AVX-512 machine, AVX2 and AVX-512 kernels).
template <class T>
void sumsq(const void* data, int64_t begin, int64_t end, double* sum, int64_t* nonfinite) {
  using V = FASTOPT_LANE;
  const T* x = static_cast<const T*>(data);
  canonical_sums<1>(
      [x](int64_t i, auto (&v)[1]) { v[0] = load(x + i, Lane<std::remove_reference_t<decltype(v[0])>>{}); }, begin,
      end, sum);
  int64_t bad = 0;
  if (!(*sum - *sum == 0)) {
    int64_t i = begin;
    for (; i + lane_width<V> <= end; i += lane_width<V>) bad += count_nonfinite(load(x + i, Lane<V>{}));
    for (; i < end; ++i) bad += count_nonfinite(load(x + i, Lane<float>{}));
  }
  *nonfinite = bad;
}

// The first pass of a two-pass rule over elements [begin, end) of one tensor: sums[k] is
// the sum of squares of the prepass's k-th value.
template <class Rule, class P>
void prepass(const void* coeffs, const GradTransform& transform, const TensorSlot& slot, int64_t begin, int64_t end,
             double* sums) {
  const typename Rule::Coeffs c = tensor_coeffs<Rule>(*static_cast<const typename Rule::Coeffs*>(coeffs), slot);
  const GradTransform x = transform;
  const TensorSlot t = slot;
  with_rows<Rule>(t, [&](auto rows) {
    block_sums<num_sums<Rule>::value>(
        t, begin, end, writes_state<Rule>::prepass,
        [&](const TensorSlot& s, int64_t i, auto& v, QuantBlock* q) {
          using L = std::remove_reference_t<decltype(v[0])>;
          prefetch_ahead<Rule, true, L, P, decltype(rows)>(s, i);
          prepass_element<Rule, L, P>(c, x, s, i, v, q, rows);
        },
        sums);
  });
}

// The update of a rule that sums_values over elements [begin, end) of one tensor, one block of
// reduce.h at a time: the plain update (run), then the block's new values summed from L1 (blocks
// in order, as canonical_sums adds them: the canonical sum); sums[1] counts the non-finite ones,
// only where the sum is not finite (as sumsq counts). (Measured on the 2-core AVX-512 machine,
// an accumulation's last pass over one 2^24 tensor: the diagnosed update, which sums two values
// per element, took 2.5x the plain update's time; the squares summed inside the update's loop,
// 2x; this, the plain update plus about what the norm pass over the accumulators takes, whose
// double-lane squares are as compute-bound there as here.)
template <class Rule, class P>
void run_summed(const void* coeffs, const GradTransform& transform, const TensorSlot& slot, int64_t begin,
                int64_t end, double* sums) {
  using V = FASTOPT_LANE;
  const TensorSlot t = slot;
  const auto value = [&t](int64_t i, auto& v) {
    using L = std::remove_reference_t<decltype(v[0])>;
    v[0] = load_value<L, P>(t, i);
  };
  sums[0] = sums[1] = 0;
  for (int64_t b = begin; b < end; b += reduce::kBlock) {
    const int64_t e = b + reduce::kBlock < end ? b + reduce::kBlock : end;
    run<Rule, P>(coeffs, transform, slot, b, e);
    double part;
    canonical_sums<1>(value, b, e, &part);
    sums[0] += part;
  }
  if (sums[0] - sums[0] == 0) return;
  int64_t bad = 0, i = begin;
  for (; i + lane_width<V> <= end; i += lane_width<V>) bad += count_nonfinite(load_value<V, P>(t, i));
  for (; i < end; ++i) bad += count_nonfinite(load_value<float, P>(t, i));
  sums[1] = double(bad);
}

// The update with diagnostics over elements [begin, end) of one tensor: sums[0] is the
// tensor's sum of squared updates (new - old fp32 value), sums[1] of its old values (where the
// rule sums_values: of its new values, and their non-finite count).
template <class Rule, class P>
void run_diagnosed(const void* coeffs, const GradTransform& transform, const TensorSlot& slot, int64_t begin,
                   int64_t end, double* sums) {
  if constexpr (sums_values<Rule>::value) return run_summed<Rule, P>(coeffs, transform, slot, begin, end, sums);
  const typename Rule::Coeffs c = *static_cast<const typename Rule::Coeffs*>(coeffs);
  const GradTransform x = transform;
  const TensorSlot t = slot;
  with_rows<Rule>(t, [&](auto rows) {
    block_sums<2>(
        t, begin, end, writes_state<Rule>::update,
        [&](const TensorSlot& s, int64_t i, auto& v, QuantBlock* q) {
          using L = std::remove_reference_t<decltype(v[0])>;
          prefetch_ahead<Rule, false, L, P, decltype(rows)>(s, i);
          const L before = load_value<L, P>(s, i);
          apply_element<Rule, L, P>(c, x, s, i, q, rows);
          diagnosed_values<Rule>(before, load_value<L, P>(s, i), v);
        },
        sums);
  });
}

// The factor pass over piece k of a factored tensor (fastopt/factored.h), in reduce.h's order,
// each row read in element order: vector j of a block line holds lanes W j .. W j + W (of
// kRowLanes), the accumulator of those lanes (in cache, as the columns'), so that each lane
// chains its columns line by line; the columns past the last whole vector one by one after
// them (the last of their chains); the lanes fold into the row's partial. Per column, the chain
// down the piece's rows (an accumulator per column, in cache: kBlock doubles, of which only the
// piece's columns are set: a batch of small matrices has a piece per matrix). (Lane groups
// taken one at a time down the lines instead read a row 1 KiB apart: 2.5x slower, measured.)
void factor_piece(const GradTransform& x, const TensorSlot& t, int64_t k) {
  using V = FASTOPT_LANE;
  constexpr int W = lane_width<V>, G = reduce::kRowLanes / W;
  static_assert(reduce::kRowLanes % W == 0 && reduce::kBlock % reduce::kRowLanes == 0, "lanes in whole vectors");
  const factored::Piece p = factored::piece(t, k);
  const int64_t n = p.cols, full = n / W * W, nb = factored::blocks(t);
  const int used = int(n < reduce::kRowLanes ? n : reduce::kRowLanes);
  squares_t<V> cols[reduce::kBlock / W];
  for (int64_t e = 0; e < full; e += W) cols[e / W] = squares_t<V>{};
  squares_t<V> acc[G];
  double tail[W] = {};
  for (int64_t r = 0; r < p.rows; ++r) {
    const int64_t at = (p.row + r) * t.cols + p.col;
    double lanes[reduce::kRowLanes];
    int64_t e = 0;
    if (full > 0) {
      for (int j = 0; j * W < used; ++j) acc[j] = squares_t<V>{};
      for (; e < full; e += W) {
        if constexpr (W > 1) {
          if (e % kPrefetchElems == 0) __builtin_prefetch(static_cast<const char*>(t.grad) + (at + e + kPrefetchElems) *
                                                         (t.grad_dtype == DType::f32 ? 4 : 2), 0, 2);
        }
        const V v = transform_grad(x, load_grad<V>(t, at + e));
        acc[(e / W) % G] = add_square(v, acc[(e / W) % G]);
        cols[e / W] = add_square(v, cols[e / W]);
      }
      for (int j = 0; j * W < used; ++j) store(lanes + j * W, acc[j]);
    } else {
      for (int j = 0; j < used; ++j) lanes[j] = 0;  // (a row narrower than a vector: its lanes alone)
    }
    for (; e < n; ++e) {
      const float v = transform_grad(x, load_grad<float>(t, at + e));
      lanes[e % reduce::kRowLanes] = add_square(v, lanes[e % reduce::kRowLanes]);
      tail[e - full] = add_square(v, tail[e - full]);
    }
    p.row_sums[r * nb] = reduce::fold_used(lanes, used);
  }
  for (int64_t e = 0; e < full; e += W) store(p.col_sums + e, cols[e / W]);
  for (int64_t e = full; e < n; ++e) p.col_sums[e] = tail[e - full];
}

void factor_pieces(const GradTransform& transform, const TensorSlot& slot, int64_t begin, int64_t end) {
  const GradTransform x = transform;
  const TensorSlot t = slot;
  for (int64_t k = begin; k < end; ++k) factor_piece(x, t, k);
}

template <class Rule>
void factor_step(const void* coeffs, const GradTransform& transform, const TensorSlot& t, int64_t begin,
                 int64_t end) {
  const auto c = tensor_coeffs<Rule>(*static_cast<const typename Rule::Coeffs*>(coeffs), t);
  factored::step_matrices<Rule>(c, t, begin, end, transform.round_key);
}

// Both passes of a two-pass rule over one whole tensor (at most one super-block: its sums are
// the canonical ones), so that the update finds the tensor in cache; factored state's factor
// pass and step first.
template <class Rule, class P>
void fused(const void* coeffs, const GradTransform& transform, const TensorSlot& slot, int64_t begin, int64_t end,
           double* diag) {
  if constexpr (is_factored<Rule>::value) {
    if (slot.rows) {
      factor_pieces(transform, slot, 0, factored::pieces(slot));
      factor_step<Rule>(coeffs, transform, slot, 0, factored::matrices(slot));
    }
  }
  double sums[num_sums<Rule>::value];
  prepass<Rule, P>(coeffs, transform, slot, begin, end, sums);
  const typename Rule::Coeffs c = Rule::finish(
      tensor_coeffs<Rule>(*static_cast<const typename Rule::Coeffs*>(coeffs), slot), sums, slot);
  if (diag) run_diagnosed<Rule, P>(&c, transform, slot, begin, end, diag);
  else run<Rule, P>(&c, transform, slot, begin, end);
}

template <class P>
void stochastic(const float* x, int64_t n, uint64_t key, int64_t start, void* out) {
  using V = FASTOPT_LANE;
  P* p = static_cast<P*>(out);
  int64_t k = 0;
  for (; k + lane_width<V> <= n; k += lane_width<V>) {
    store_stochastic_lane(p + k, load(x + k, Lane<V>{}), key, start + k);
  }
  for (; k < n; ++k) store_stochastic_lane(p + k, x[k], key, start + k);
}

template <class Rule, class P>
void fill_one(KernelSet& s, RuleId id) {
  const int pd = int(dtype_of<P>);
  s.kernels[int(id)][pd] = &run<Rule, P>;
  s.diagnosed[int(id)][pd] = &run_diagnosed<Rule, P>;
  if constexpr (num_sums<Rule>::value > 0) {
    s.prepass[int(id)][pd] = &prepass<Rule, P>;
    s.fused[int(id)][pd] = &fused<Rule, P>;
  }
}

template <class Rule>
void fill_rule(KernelSet& s, RuleId id) {
  if constexpr (is_factored<Rule>::value) s.factor_step[int(id)] = &factor_step<Rule>;
  fill_one<Rule, float>(s, id);
  fill_one<Rule, f16>(s, id);
  fill_one<Rule, bf16>(s, id);
}

// The bandwidth probe: every stream of a step loaded and stored through the same code
// (storage conversions included), with the update replaced by x + 0*g. `zero` is 0 read
// at run time, so nothing can be elided, and the data is left unchanged.
struct Probe {
  struct Coeffs { float zero; };
  static constexpr int max_state = kMaxState;
  template <class V>
  static void update(const Coeffs& c, V& p, V g, V (&s)[max_state]) {
    const V z = g * V(c.zero);
    p = p + z;
    for (int k = 0; k < max_state; ++k) s[k] = s[k] + z;
  }
};

}  // namespace

template <int part>
void fill_part(KernelSet& s) {
#define FASTOPT_FILL(id, T) \
  if constexpr (int(RuleId::id) % FASTOPT_KERNEL_PARTS == part) fill_rule<T>(s, RuleId::id);
  FASTOPT_RULES(FASTOPT_FILL)
  FASTOPT_FILL(probe, Probe)
#undef FASTOPT_FILL
  if constexpr (part == 0) {
    s.factor = &factor_pieces;
    s.sumsq[int(DType::f32)] = &sumsq<float>;
    s.sumsq[int(DType::f16)] = &sumsq<f16>;
    s.sumsq[int(DType::bf16)] = &sumsq<bf16>;
    s.stochastic[int(DType::f16)] = &stochastic<f16>;
    s.stochastic[int(DType::bf16)] = &stochastic<bf16>;
  }
}
template void fill_part<FASTOPT_PART>(KernelSet& s);

}  // namespace fastopt::cpu::FASTOPT_ISA
