// fastopt._core.numeric: the storage numerics (random.h, rounding.h, quantize8.h) over NumPy
// arrays, for the tests that check them against float64 references (and the CPU targets' lanes
// against the scalar functions). Internal.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>

#include <cstring>
#include <stdexcept>
#include <string>

#include "fastopt/factored.h"
#include "fastopt/numeric/quantize8.h"
#include "fastopt/numeric/random.h"
#include "fastopt/numeric/rounding.h"
#include "../cpu/isa.h"
#include "../cpu/pool.h"
#include "numerics.h"

namespace py = pybind11;

namespace fastopt {
namespace {

template <class T>
using Array = py::array_t<T, py::array::c_style | py::array::forcecast>;

template <class T>
py::array_t<T> like(py::ssize_t n) {
  return py::array_t<T>(n);
}

}  // namespace

void bind_numerics(py::module_& core) {
  py::module_ m = core.def_submodule("numeric", "Storage numerics over NumPy arrays, for tests (internal)");
  m.def("stream_key", &random::stream_key, py::arg("seed"), py::arg("step"), py::arg("tensor"));
  m.def("factored_sums", [](Array<float> g) {
    // The CPU engine's factor pass (fastopt/factored.h: the active target's kernel, a task per
    // piece on the thread pool) over g, a batch of matrices of its last two dims, and the
    // combine of its partials: per row and per column, the sums of squares, in double.
    if (g.ndim() < 2) throw std::invalid_argument("g must have at least 2 dims");
    TensorSlot t{};
    t.grad = g.data(), t.grad_dtype = DType::f32, t.numel = g.size();
    t.rows = g.shape(g.ndim() - 2), t.cols = g.shape(g.ndim() - 1);
    const int64_t n = t.numel ? factored::matrices(t) : 0;
    auto rows = like<double>(n * t.rows), cols = like<double>(n * t.cols);
    if (!n) return py::make_tuple(rows, cols);
    std::vector<double> scratch(size_t(factored::scratch_size(t)));
    t.factor_sums = scratch.data();
    struct Ctx {
      cpu::FactorFn factor;
      const TensorSlot* t;
    } ctx{cpu::active_kernels().factor, &t};
    cpu::ThreadPool::instance().run(
        factored::pieces(t),
        [](void* p, int64_t k) {
          const Ctx& c = *static_cast<const Ctx*>(p);
          c.factor(GradTransform{}, *c.t, k, k + 1);
        },
        &ctx);
    for (int64_t q = 0; q < n * t.rows; ++q) rows.mutable_data()[q] = factored::row_sum(t, q);
    for (int64_t j = 0; j < n * t.cols; ++j) cols.mutable_data()[j] = factored::col_sum(t, j);
    return py::make_tuple(rows, cols);
  }, py::arg("g"), "The engine's per-row and per-column sums of g^2 (factored state), in double");
  m.def("tensor_key", &random::tensor_key, py::arg("step_key"), py::arg("tensor"));
  m.def("random_bits", [](uint64_t key, uint64_t start, py::ssize_t n) {
    auto out = like<uint32_t>(n);
    uint32_t* o = out.mutable_data();
    for (py::ssize_t i = 0; i < n; ++i) o[i] = random::bits32(key, start + uint64_t(i));
    return out;
  }, py::arg("key"), py::arg("start"), py::arg("n"), "bits32(key, start + i) for i < n");
  m.def("stochastic_round", [](Array<float> x, Array<uint32_t> r, const std::string& dtype) {
    if (x.size() != r.size()) throw std::invalid_argument("x and r must have as many elements");
    if (dtype != "bfloat16" && dtype != "float16") throw std::invalid_argument("dtype: bfloat16 or float16");
    auto out = like<uint16_t>(x.size());
    uint16_t* o = out.mutable_data();
    for (py::ssize_t i = 0; i < x.size(); ++i) {
      o[i] = dtype == "bfloat16" ? bf16_stochastic(x.data()[i], r.data()[i]).bits
                                 : f16_stochastic(x.data()[i], r.data()[i]).bits;
    }
    return out;
  }, py::arg("x"), py::arg("r"), py::arg("dtype"), "x rounded with random bits r: the 16-bit patterns");
  m.def("stochastic_store", [](Array<float> x, uint64_t key, int64_t start, const std::string& dtype) {
    if (dtype != "bfloat16" && dtype != "float16") throw std::invalid_argument("dtype: bfloat16 or float16");
    auto out = like<uint16_t>(x.size());
    cpu::active_kernels().stochastic[int(dtype == "bfloat16" ? DType::bf16 : DType::f16)](
        x.data(), x.size(), key, start, out.mutable_data());
    return out;
  }, py::arg("x"), py::arg("key"), py::arg("start"), py::arg("dtype"),
     "x rounded with bits32(key, start + i) by the active CPU target's store_stochastic_lane: the 16-bit patterns");
  m.def("kahan_bf16", [](py::array_t<uint16_t, py::array::c_style> p, py::array_t<uint16_t, py::array::c_style> c,
                         Array<float> values) {
    if (p.size() != c.size() || p.size() != values.size()) throw std::invalid_argument("sizes differ");
    uint16_t* pp = p.mutable_data();
    uint16_t* cc = c.mutable_data();
    for (py::ssize_t i = 0; i < p.size(); ++i) {
      bf16 a{pp[i]}, b{cc[i]};
      kahan_bf16(values.data()[i], a, b);
      pp[i] = a.bits, cc[i] = b.bits;
    }
  }, py::arg("p"), py::arg("c"), py::arg("values"), "p, c (bfloat16 bits) moved to `values`, in place");
  m.def("split_remainder", [](Array<float> v) {
    auto hi = like<uint16_t>(v.size()), lo = like<uint16_t>(v.size());
    for (py::ssize_t i = 0; i < v.size(); ++i) {
      bf16 h;
      split_remainder(v.data()[i], h, lo.mutable_data()[i]);
      hi.mutable_data()[i] = h.bits;
    }
    return py::make_tuple(hi, lo);
  }, py::arg("values"));
  m.def("join_remainder", [](Array<uint16_t> hi, Array<uint16_t> lo) {
    if (hi.size() != lo.size()) throw std::invalid_argument("sizes differ");
    auto out = like<float>(hi.size());
    for (py::ssize_t i = 0; i < hi.size(); ++i) out.mutable_data()[i] = join_remainder(bf16{hi.data()[i]}, lo.data()[i]);
    return out;
  }, py::arg("high"), py::arg("low"));
  m.attr("quant_block") = quant::kQuantBlock;
  m.def("dynamic_map", [](bool is_signed) {
    auto out = like<float>(quant::kMapSize);
    std::memcpy(out.mutable_data(), quant::tables(is_signed).map, sizeof(float) * quant::kMapSize);
    return out;
  }, py::arg("signed"));
  m.def("quantize_blockwise", [](Array<float> x, bool is_signed) {
    const py::ssize_t n = x.size(), blocks = (n + quant::kQuantBlock - 1) / quant::kQuantBlock;
    auto codes = like<uint8_t>(n);
    auto absmax = like<float>(blocks);
    for (py::ssize_t b = 0; b < blocks; ++b) {
      const int64_t begin = b * quant::kQuantBlock, len = std::min<int64_t>(quant::kQuantBlock, n - begin);
      quant::quantize_block(x.data() + begin, len, quant::tables(is_signed), codes.mutable_data() + begin,
                            absmax.mutable_data() + b);
    }
    return py::make_tuple(codes, absmax);
  }, py::arg("x"), py::arg("signed"), "(codes, per-block absmax)");
  m.def("dequantize_blockwise", [](Array<uint8_t> codes, Array<float> absmax, bool is_signed) {
    auto out = like<float>(codes.size());
    for (py::ssize_t i = 0; i < codes.size(); ++i) {
      out.mutable_data()[i] =
          quant::dequantize(codes.data()[i], absmax.data()[i / quant::kQuantBlock], quant::tables(is_signed));
    }
    return out;
  }, py::arg("codes"), py::arg("absmax"), py::arg("signed"));
}

}  // namespace fastopt
