// The plain description of a bound group of tensors, shared by every engine. Pointers are
// validated and fixed when the group is bound; a step only reads this table.
#pragma once
#include <cstdint>

namespace fastopt {

struct bf16;  // a bfloat16 in storage (numeric/convert.h)
namespace quant {
struct Tables;  // an 8-bit map and its quantization buckets (numeric/quantize8.h)
}

// The float dtypes of params and grads (kNumDTypes of them); uint16: the low halves of a master
// kept as a remainder (TensorSlot::remainder); uint8: 8-bit state codes (quantize8.h).
enum class DType : uint8_t { f32 = 0, f16 = 1, bf16 = 2, u16 = 3, u8 = 4 };
constexpr int kNumDTypes = 3;

// How a tensor's state streams are stored (each computed in float32): float32; bfloat16 rounded
// to nearest even or stochastically; 8-bit codes with a float32 absmax per block of
// quant::kQuantBlock elements.
enum class StateStore : uint8_t { f32 = 0, bf16 = 1, bf16_stochastic = 2, q8 = 3 };

constexpr int kMaxState = 3;  // the largest max_state of any rule

struct TensorSlot {
  void* param;        // dtype param_dtype
  const void* grad;   // dtype grad_dtype
  float* master;      // fp32 master weights, or null: the param itself is the value
  // With a bfloat16 param and no master: the low halves of the fp32 master whose high halves
  // are the param (convert.h: join_remainder), or null.
  uint16_t* remainder;
  // With a bfloat16 param and no master: the Kahan compensation of its rounding (rounding.h:
  // kahan_bf16), or null.
  bf16* compensation;
  bool stochastic;  // a float16/bfloat16 param without master, rounded stochastically (rounding.h)
  int32_t tensor;   // the param's index in its optimizer: its stream of random bits
  void* state[kMaxState];  // the rule's state streams, stored as state_store says; the first num_state are used
  float* absmax[kMaxState];  // q8: each stream's absmax per block
  const quant::Tables* quant[kMaxState];  // q8: each stream's map (signed, or unsigned where never negative)
  StateStore state_store;
  int64_t numel;
  DType param_dtype, grad_dtype;
  int num_state;
  int hyper_index;  // which of the step's coefficient sets (param groups) applies
  int ndim;         // dimensions of the param (rules may treat 1-D tensors apart)
  // Factored state (a rule's `factored`, for params of >= 2 dims; fastopt/factored.h): the param
  // as numel / (rows * cols) matrices of rows x cols (its last two dims, leading dims batched);
  // state[0] holds one value per row (batch * rows), state[1] one per column (batch * cols).
  // rows == 0: not factored, every stream holds numel values.
  int64_t rows, cols;
  // With factored state, engine scratch: the factor pass's partial sums (factored.h: their
  // layout), and the per-row values the factor step leaves for the passes (batch * rows).
  double* factor_sums;
  float* row_value;
};

}  // namespace fastopt
