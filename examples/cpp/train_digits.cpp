// train_digits: a small training engine on fastopt's C++ API, with no Python. A one-hidden-layer
// MLP (64 -> 32 ReLU -> 10, softmax cross-entropy) learns the 8x8 handwritten digits
// (data/digits.csv) with fastopt's AdamW, one fused step per mini-batch.
//
// Every number is reproducible to the bit: float32 arithmetic in plain loops with a fixed
// summation order (built with -ffp-contract=off, see CMakeLists.txt), exp and log from libm in
// double, a deterministic init. train_digits.py runs the same computation through fastopt's
// Python API and prints the same lines.
//
// Usage: train_digits [digits.csv]
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <fastopt/optimizer.h>

namespace {

constexpr int kIn = 64, kHidden = 32, kClasses = 10;
constexpr int kTrain = 1500;  // after a shuffle, the first 1500 samples train, the other 297 test
constexpr int kBatch = 100;   // 15 batches per epoch, in the same order every epoch
constexpr int kEpochs = 20;
constexpr double kLr = 1e-2, kWeightDecay = 1e-2;  // AdamW; no weight decay on the biases

// The samples, pixels scaled to [0, 1] (x / 16, exact in float32), row-major.
struct Digits {
  std::vector<float> x;  // count x kIn
  std::vector<int> y;    // count labels 0..9
  int count = 0;
};

// Reads the CSV written by data/export_digits.py: a header line, then per line the 64 pixel
// values 0..16 and the label.
Digits load_digits(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot open " + path);
  std::string line;
  std::getline(in, line);  // the header
  Digits d;
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    std::string field;
    std::vector<int> values;
    while (std::getline(fields, field, ',')) values.push_back(std::stoi(field));
    if (values.size() != kIn + 1 || values[kIn] < 0 || values[kIn] >= kClasses)
      throw std::runtime_error(path + ": not 64 pixels and a label 0..9: " + line);
    for (int i = 0; i < kIn; ++i) d.x.push_back(float(values[i]) / 16.0f);
    d.y.push_back(values[kIn]);
    ++d.count;
  }
  if (d.count <= kTrain) throw std::runtime_error(path + ": fewer samples than the training split");
  return d;
}

// The model's four tensors, row-major; the grads and the AdamW state have the same layout.
// w1[d * kHidden + j] maps input d to hidden unit j, w2[j * kClasses + k] hidden j to class k.
struct Params {
  std::vector<float> w1 = std::vector<float>(kIn * kHidden), b1 = std::vector<float>(kHidden);
  std::vector<float> w2 = std::vector<float>(kHidden * kClasses), b2 = std::vector<float>(kClasses);
};

// xorshift64 (Marsaglia, 2003): the run's random numbers.
struct XorShift64 {
  uint64_t s;
  uint64_t next() {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    return s;
  }
};

// The samples in a random order (Fisher-Yates: for i from the last down to 1, swap sample i
// with sample rng() % (i + 1)), so that the test samples are drawn from the whole file.
Digits shuffled(const Digits& d, XorShift64& rng) {
  std::vector<int> order(d.count);
  for (int i = 0; i < d.count; ++i) order[i] = i;
  for (int i = d.count - 1; i > 0; --i) std::swap(order[i], order[rng.next() % uint64_t(i + 1)]);
  Digits out;
  for (int i : order) {
    out.x.insert(out.x.end(), d.x.begin() + i * kIn, d.x.begin() + (i + 1) * kIn);
    out.y.push_back(d.y[i]);
  }
  out.count = d.count;
  return out;
}

// Weights uniform in [-1/sqrt(fan_in), 1/sqrt(fan_in)) in float32: u = the top 24 bits of the
// next number / 2^24 (exact), w = (2u - 1) * bound; drawn in memory order, w1 then w2.
// Biases start at 0.
Params init_params(XorShift64& rng) {
  Params p;
  for (std::vector<float>* w : {&p.w1, &p.w2}) {
    const int fan_in = w == &p.w1 ? kIn : kHidden;
    const float bound = float(1.0 / std::sqrt(double(fan_in)));
    for (float& v : *w) {
      const float u = float(rng.next() >> 40) * 0x1p-24f;
      v = (2.0f * u - 1.0f) * bound;
    }
  }
  return p;
}

// h = relu(x w1 + b1) and logits z = h w2 + b2 for `rows` samples; each sum starts from the
// bias and adds the products in the order of the inner index.
void forward(const Params& p, const float* x, int rows, float* h, float* z) {
  for (int n = 0; n < rows; ++n) {
    const float* xn = x + n * kIn;
    float* hn = h + n * kHidden;
    for (int j = 0; j < kHidden; ++j) {
      float acc = p.b1[j];
      for (int d = 0; d < kIn; ++d) acc += xn[d] * p.w1[d * kHidden + j];
      hn[j] = acc > 0.0f ? acc : 0.0f;
    }
    for (int k = 0; k < kClasses; ++k) {
      float acc = p.b2[k];
      for (int j = 0; j < kHidden; ++j) acc += hn[j] * p.w2[j * kClasses + k];
      z[n * kClasses + k] = acc;
    }
  }
}

// Softmax cross-entropy of the logits z against the labels y, in double with libm's exp and
// log: returns the summed loss of the `rows` samples, and writes the mean loss's gradient
// dz = (float(softmax(z)) - onehot(y)) / rows in float32.
double softmax_xent(const float* z, const int* y, int rows, float* dz) {
  double total = 0.0;
  for (int n = 0; n < rows; ++n) {
    const float* zn = z + n * kClasses;
    float m = zn[0];
    for (int k = 1; k < kClasses; ++k) m = zn[k] > m ? zn[k] : m;
    double e[kClasses], s = 0.0;
    for (int k = 0; k < kClasses; ++k) {
      e[k] = std::exp(double(zn[k]) - double(m));
      s += e[k];
    }
    total += double(m) + std::log(s) - double(zn[y[n]]);
    for (int k = 0; k < kClasses; ++k)
      dz[n * kClasses + k] = (float(e[k] / s) - (k == y[n] ? 1.0f : 0.0f)) / float(rows);
  }
  return total;
}

// The grads of the batch's mean loss, written over g: each weight's and bias's grad is summed
// over the samples in order, from 0.
void backward(const Params& p, const float* x, const float* h, const float* dz, int rows, Params& g) {
  for (std::vector<float>* t : {&g.w1, &g.b1, &g.w2, &g.b2}) std::fill(t->begin(), t->end(), 0.0f);
  float dh[kHidden];
  for (int n = 0; n < rows; ++n) {
    const float *xn = x + n * kIn, *hn = h + n * kHidden, *dzn = dz + n * kClasses;
    for (int j = 0; j < kHidden; ++j)
      for (int k = 0; k < kClasses; ++k) g.w2[j * kClasses + k] += hn[j] * dzn[k];
    for (int k = 0; k < kClasses; ++k) g.b2[k] += dzn[k];
    for (int j = 0; j < kHidden; ++j) {
      float acc = 0.0f;
      for (int k = 0; k < kClasses; ++k) acc += dzn[k] * p.w2[j * kClasses + k];
      dh[j] = hn[j] > 0.0f ? acc : 0.0f;  // through the ReLU
    }
    for (int d = 0; d < kIn; ++d)
      for (int j = 0; j < kHidden; ++j) g.w1[d * kHidden + j] += xn[d] * dh[j];
    for (int j = 0; j < kHidden; ++j) g.b1[j] += dh[j];
  }
}

// The test samples whose largest logit (the first, on a tie) is their label's.
int count_correct(const Params& p, const Digits& data) {
  const int rows = data.count - kTrain;
  std::vector<float> h(rows * kHidden), z(rows * kClasses);
  forward(p, &data.x[kTrain * kIn], rows, h.data(), z.data());
  int correct = 0;
  for (int n = 0; n < rows; ++n) {
    int best = 0;
    for (int k = 1; k < kClasses; ++k) best = z[n * kClasses + k] > z[n * kClasses + best] ? k : best;
    correct += best == data.y[kTrain + n];
  }
  return correct;
}

// FNV-1a (64-bit) of the params' bytes, w1, b1, w2, b2 in turn: equal hashes, equal weights.
uint64_t fnv1a(const Params& p) {
  uint64_t hash = 0xcbf29ce484222325u;
  for (const std::vector<float>* t : {&p.w1, &p.b1, &p.w2, &p.b2}) {
    const auto* bytes = reinterpret_cast<const unsigned char*>(t->data());
    for (size_t i = 0; i < t->size() * sizeof(float); ++i) hash = (hash ^ bytes[i]) * 0x100000001b3u;
  }
  return hash;
}

// AdamW (Adam with decoupled weight decay), betas and eps at torch's defaults.
fastopt::Adam::Hyper adamw(double weight_decay) {
  fastopt::Adam::Hyper h;
  h.lr = kLr;
  h.weight_decay = weight_decay;
  h.decoupled = true;
  return h;
}

// One param's tensors for the optimizer: the param, its grad buffer and AdamW's two state
// arrays (exp_avg, exp_avg_sq), all of the param's shape.
fastopt::ParamTensors param_tensors(std::vector<float>& param, std::vector<float>& grad, std::vector<float>& exp_avg,
                                    std::vector<float>& exp_avg_sq, const std::vector<int64_t>& shape) {
  return {{param.data(), shape}, {grad.data(), shape}, {}, {{exp_avg.data(), shape}, {exp_avg_sq.data(), shape}}};
}

}  // namespace

int main(int argc, char** argv) try {
  XorShift64 rng{0x9e3779b97f4a7c15u};  // the shuffle's numbers, then the init's
  const Digits data = shuffled(load_digits(argc > 1 ? argv[1] : DIGITS_CSV), rng);
  Params p = init_params(rng);
  Params g, m, v;  // the grads, refilled in place by backward(), and AdamW's state, from 0
  // Two param groups, the weights with weight decay and the biases without; bound once.
  fastopt::Optimizer opt({
      {adamw(kWeightDecay),
       {param_tensors(p.w1, g.w1, m.w1, v.w1, {kIn, kHidden}),
        param_tensors(p.w2, g.w2, m.w2, v.w2, {kHidden, kClasses})}},
      {adamw(0.0),
       {param_tensors(p.b1, g.b1, m.b1, v.b1, {kHidden}), param_tensors(p.b2, g.b2, m.b2, v.b2, {kClasses})}},
  });

  std::vector<float> h(kBatch * kHidden), z(kBatch * kClasses), dz(kBatch * kClasses);
  for (int epoch = 1; epoch <= kEpochs; ++epoch) {
    double loss = 0.0;  // summed over the epoch's samples, with the params each batch saw
    for (int start = 0; start < kTrain; start += kBatch) {
      const float* x = &data.x[start * kIn];
      forward(p, x, kBatch, h.data(), z.data());
      loss += softmax_xent(z.data(), &data.y[start], kBatch, dz.data());
      backward(p, x, h.data(), dz.data(), kBatch, g);
      opt.step();
    }
    const int correct = count_correct(p, data), tests = data.count - kTrain;
    std::printf("epoch %2d  train loss %.17g  test accuracy %d/%d = %.2f%%\n", epoch, loss / kTrain, correct, tests,
                100.0 * correct / tests);
  }
  std::printf("params fnv1a64 %016llx\n", static_cast<unsigned long long>(fnv1a(p)));
} catch (const std::exception& e) {
  std::fprintf(stderr, "train_digits: %s\n", e.what());
  return 1;
}
