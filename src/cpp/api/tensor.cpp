#include "fastopt/tensor.h"

#include <sstream>

namespace fastopt {

std::string Device::str() const {
  switch (type) {
    case kCPU: return "cpu";
    case kCUDA: return "cuda:" + std::to_string(id);
    case kCUDAHost: return "cuda_host";
    default: return "device type " + std::to_string(type) + ":" + std::to_string(id);
  }
}

int64_t Tensor::numel() const {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  return n;
}

std::string Tensor::shape_str() const {
  std::ostringstream s;
  s << "(";
  for (size_t i = 0; i < shape.size(); ++i) s << (i ? ", " : "") << shape[i];
  s << (shape.size() == 1 ? ",)" : ")");
  return s.str();
}

const char* dtype_name(DType d) {
  switch (d) {
    case DType::f32: return "float32";
    case DType::f16: return "float16";
    case DType::bf16: return "bfloat16";
    case DType::u16: return "uint16";
    default: return "uint8";
  }
}

}  // namespace fastopt
