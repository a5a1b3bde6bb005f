#include "fastopt/tensor.h"

#include <iterator>
#include <sstream>

namespace fastopt {

std::string Device::str() const {
  switch (type) {
    case kCPU: return "cpu";
    case kCUDA: return "cuda:" + std::to_string(id);
    case kCUDAHost: return "cuda_host";
    default: {
      // DLPack's other device types, by name (dlpack.h's DLDeviceType)
      static const char* const names[] = {"opencl", nullptr, nullptr, "vulkan", "metal", "vpi", "rocm", "rocm_host",
                                          "ext_dev", "cuda_managed", "oneapi", "webgpu", "hexagon", "maia"};
      const int k = type - 4;
      if (k >= 0 && k < int(std::size(names)) && names[k]) return names[k] + (":" + std::to_string(id));
      return "device type " + std::to_string(type) + ":" + std::to_string(id);
    }
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
