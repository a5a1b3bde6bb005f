// Test memory: a Buffer owns the elements of one tensor (float32, float16, bfloat16, uint16 or
// uint8) and describes them to the C++ API (fastopt::Tensor) and to the C ABI (fastopt_tensor).
// Values are read and written as bit patterns (uint32 per element; narrower ones in the low
// bits), so that tests compare results bit for bit.
#pragma once
#include <cstdint>
#include <cstring>
#include <vector>

#include "fastopt/c_api.h"
#include "fastopt/tensor.h"

namespace fastopt_test {

using Bits = std::vector<uint32_t>;

inline size_t element_size(fastopt::DType d) {
  return d == fastopt::DType::f32 ? 4 : d == fastopt::DType::u8 ? 1 : 2;
}

inline uint32_t float_bits(float x) {
  uint32_t b;
  std::memcpy(&b, &x, 4);
  return b;
}

inline float bits_float(uint32_t b) {
  float x;
  std::memcpy(&x, &b, 4);
  return x;
}

class Buffer {
 public:
  Buffer() = default;
  Buffer(fastopt::DType dtype, std::vector<int64_t> shape) : dtype_(dtype), shape_(std::move(shape)), numel_(1) {
    for (int64_t d : shape_) numel_ *= size_t(d);
    words_.assign((numel_ * element_size(dtype_) + 3) / 4, 0);
  }
  // A float32 buffer of n elements holding `values`.
  static Buffer f32(std::vector<float> values) {
    Buffer b(fastopt::DType::f32, {int64_t(values.size())});
    std::memcpy(b.data(), values.data(), values.size() * 4);
    return b;
  }

  size_t numel() const { return numel_; }  // 0 for a default-constructed (absent) buffer
  void* data() { return words_.data(); }
  float* floats() { return reinterpret_cast<float*>(words_.data()); }  // float32 buffers only
  fastopt::DType dtype() const { return dtype_; }
  const std::vector<int64_t>& shape() const { return shape_; }

  fastopt::Tensor tensor(bool readonly = false) {
    return fastopt::Tensor(data(), shape_, dtype_, fastopt::Device{}, readonly);
  }
  // Valid while the buffer lives (the shape is the buffer's).
  fastopt_tensor c_tensor() {
    return fastopt_tensor{data(), shape_.data(), int32_t(shape_.size()), int32_t(dtype_), 1, 0, 0};
  }

  Bits bits() const {
    Bits out(numel());
    const size_t size = element_size(dtype_);
    for (size_t i = 0; i < out.size(); ++i) {
      out[i] = 0;  // (little-endian: the low bytes)
      std::memcpy(&out[i], reinterpret_cast<const char*>(words_.data()) + size * i, size);
    }
    return out;
  }
  void set_bits(const Bits& b) {
    const size_t size = element_size(dtype_);
    for (size_t i = 0; i < b.size() && i < numel(); ++i) {
      std::memcpy(reinterpret_cast<char*>(words_.data()) + size * i, &b[i], size);
    }
  }

 private:
  fastopt::DType dtype_ = fastopt::DType::f32;
  std::vector<int64_t> shape_;
  size_t numel_ = 0;
  std::vector<uint32_t> words_;
};

}  // namespace fastopt_test
