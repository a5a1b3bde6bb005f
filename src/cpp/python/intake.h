// Tensor intake: turns a NumPy array (buffer protocol, ml_dtypes.bfloat16 included) or any
// object with __dlpack__ into a validated view, without copying. The view keeps the
// producer's memory alive.
#pragma once
#include <pybind11/pybind11.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "fastopt/tensor.h"

namespace fastopt::py_intake {

// A Python array read as a fastopt::Tensor, with what keeps its memory alive.
struct View : Tensor {
  std::shared_ptr<void> owner;  // releases the buffer / calls the DLPack deleter
  // A PyTorch tensor, whose memory torch can move or free after binding (resize_,
  // share_memory_, set_, `.data = ...`): checked before every step (Binding::check). None for
  // other producers: CuPy arrays and DLPack producers cannot move theirs (the capsule holds it).
  pybind11::object torch_tensor;
  // For a NumPy array: a weak reference to the array that owns the memory, which makes NumPy
  // refuse to resize it (even with refcheck=False) while the view lives.
  pybind11::object pin;
};

// Raised before a step when a bound tensor's memory moved or its param's `.grad` was replaced
// (Binding::check): nothing was written; binding again takes the new memory.
struct MemoryMoved : TensorError {
  using TensorError::TensorError;
};

// The device an array lives on, read without exporting it (CPU for buffer objects); `name`
// prefixes the error where its producer cannot say.
Device device_of(pybind11::handle obj, const std::string& name);

// Reads `obj`; `name` (like "param 3") prefixes any error message. `engine` is the device
// type of the engine that will use it (DLPack: 1 CPU, 2 CUDA); memory elsewhere is rejected.
//
// With `watched` (the caller promises that the binding checks this tensor before every step:
// a param or a grad), a PyTorch tensor is read through torch's own attributes instead of a
// DLPack export (microseconds each): the view then holds the tensor, not its storage, so
// memory torch swaps out may be freed; Binding::check sees that before any step touches it.
View intake(pybind11::handle obj, const std::string& name, int engine = 1, bool watched = false);

}  // namespace fastopt::py_intake
