// How the C++ API describes a tensor: a pointer to C-contiguous memory, a shape, an element
// type and a device. fastopt never copies and never owns caller memory: a tensor handed to an
// optimizer must stay allocated, at the same address, for as long as the optimizer is used.
#pragma once
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "fastopt/tensor_list.h"

namespace fastopt {

// Where memory lives, numbered as DLPack numbers device types.
struct Device {
  static constexpr int kCPU = 1;
  static constexpr int kCUDA = 2;
  static constexpr int kCUDAHost = 3;  // pinned host memory: the CPU engine's too

  int type = kCPU;
  int id = 0;  // the CUDA device ordinal (0 on the CPU)

  bool operator==(const Device& o) const { return type == o.type && id == o.id; }
  bool operator!=(const Device& o) const { return !(*this == o); }
  bool host() const { return type == kCPU || type == kCUDAHost; }
  std::string str() const;  // "cpu", "cuda:0", "cuda_host", "rocm:0", "device type 99:0"
};

// A C-contiguous tensor in caller memory. numel() elements of `dtype` from `data`; an empty
// shape is a scalar (one element). `readonly` marks memory fastopt must not write (a param,
// master or state array so marked is refused; a grad may be read-only).
struct Tensor {
  void* data = nullptr;
  std::vector<int64_t> shape;
  DType dtype = DType::f32;
  Device device{};
  bool readonly = false;

  Tensor() = default;
  Tensor(void* data_, std::vector<int64_t> shape_, DType dtype_ = DType::f32, Device device_ = {},
         bool readonly_ = false)
      : data(data_), shape(std::move(shape_)), dtype(dtype_), device(device_), readonly(readonly_) {}
  // A one-dimensional fp32 tensor of n elements in host memory.
  Tensor(float* data_, int64_t n) : data(data_), shape{n} {}

  int64_t numel() const;  // (meaningful for shapes an optimizer accepts: it refuses counts past int64)
  size_t nbytes() const { return size_t(numel()) * (dtype == DType::f32 ? 4 : dtype == DType::u8 ? 1 : 2); }
  std::string shape_str() const;  // "(3, 4)", "(5,)", "()"
};

// "float32", "float16", "bfloat16", "uint16" or "uint8".
const char* dtype_name(DType d);

// A tensor that cannot be used: the message names it ("grad 3: shape (4,) differs from param
// 3's shape (5,)") and says why. Thrown before anything is written or allocated.
struct TensorError : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};

}  // namespace fastopt
