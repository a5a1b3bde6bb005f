// fastopt::CudaOptimizer: the shared validated table (../cpp/api/table.h) over the CUDA
// engine's group (group.h). Plain C++: compiled by the host compiler.
#include "fastopt/cuda_optimizer.h"

#include "../cpp/api/table.h"
#include "fastopt/element.h"
#include "group.h"

namespace fastopt {

struct CudaOptimizer::Impl {
  api::Table table;
  cuda::Group group;

  uint64_t seed = 0;  // of stochastic rounding

  Impl(std::vector<ParamGroup> groups, RuleId rule)
      : table(api::bind(std::move(groups), rule, Device::kCUDA)),
        group(table.rule, table.slots, table.device.id, int(table.hypers.size())) {}
};

CudaOptimizer::CudaOptimizer(RuleId rule, std::vector<ParamGroup> groups)
    : impl_(std::make_unique<Impl>(std::move(groups), api::check_rule(rule))) {}
CudaOptimizer::CudaOptimizer(std::vector<ParamGroup> groups)
    : impl_(std::make_unique<Impl>(std::move(groups), api::kRuleOfGroups)) {}
CudaOptimizer::~CudaOptimizer() = default;
CudaOptimizer::CudaOptimizer(CudaOptimizer&&) noexcept = default;
CudaOptimizer& CudaOptimizer::operator=(CudaOptimizer&&) noexcept = default;

void CudaOptimizer::step(cudaStream_t stream, const CudaStepOptions& o) {
  api::check_options(o);
  if (o.grad_factor || o.combine_sums) {
    throw std::invalid_argument("grad_factor and combine_sums are the CPU engine's (a step sharded across processes)");
  }
  if (o.rule_steps && o.capturable) throw std::invalid_argument("a capturable step reads its step counts on the device");
  if (o.grad_sums) throw std::invalid_argument("on the CUDA engine the grads' sums are given in device memory (grad_sumsq_in)");
  if (!o.grad_sumsq_in != !o.grad_nonfinite_in) throw std::invalid_argument("grad_sumsq_in needs grad_nonfinite_in");
  if (o.value_sums && !(o.value_sumsq_out && o.value_nonfinite_out)) {
    throw std::invalid_argument("value_sums need value_sumsq_out and value_nonfinite_out (device memory)");
  }
  if (o.value_sums) {
    with_rule(impl_->table.rule, [](auto rule) {
      if (!sums_values<decltype(rule)>::value) {
        throw std::invalid_argument("value_sums is for a rule that produces values (accumulate)");
      }
    });
  }
  if (o.diagnostics && !(o.diagnostics_out && o.nonfinite_out)) {
    throw std::invalid_argument("diagnostics need diagnostics_out and nonfinite_out (device memory)");
  }
  const api::Table& t = impl_->table;
  with_rule(t.rule, [&](auto rule) {
    using Rule = decltype(rule);
    const auto hypers = api::hypers_of<Rule>(t);
    // The coefficients where the caller gives the step counts; otherwise only the state counts
    // are checked here (the device computes them from its counts).
    const std::vector<int64_t> steps =
        o.rule_steps ? api::rule_steps(o, std::vector<int64_t>(hypers.size(), 0)) : std::vector<int64_t>(hypers.size(), 1);
    const auto coeffs = api::step_coeffs<Rule>(t, hypers, steps);
    cuda::StepArgs a;
    a.hypers = hypers.data();
    a.stride = sizeof(typename Rule::Hyper);
    a.coeffs = o.rule_steps ? coeffs.data() : nullptr;
    a.coeffs_stride = sizeof(typename Rule::Coeffs);
    a.stream = stream;
    a.transform = GradTransform{api::unscale_factor(o.grad_scale), o.clip_value};
    a.loss_scale = o.loss_scale;
    a.lr_on_device = o.capturable;
    a.skip_nonfinite = o.skip_nonfinite;
    a.max_grad_norm = o.max_grad_norm;
    a.grad_norm = o.grad_norm || o.skip_nonfinite || o.max_grad_norm > 0 || o.diagnostics || o.grad_norm_out;
    a.grad_sumsq = o.grad_sumsq_in, a.grad_nonfinite = o.grad_nonfinite_in;
    a.value_sumsq = o.value_sums ? o.value_sumsq_out : nullptr;
    a.value_nonfinite = o.value_sums ? o.value_nonfinite_out : nullptr;
    a.grad_norm_out = o.grad_norm_out;
    a.skipped_out = o.skipped_out;
    a.diagnostics = o.diagnostics ? o.diagnostics_out : nullptr;
    a.nonfinite = o.diagnostics ? o.nonfinite_out : nullptr;
    a.track_skip = o.track_skip;
    a.seed = impl_->seed;
    a.round_step = o.round_step;
    impl_->group.step(a);
  });
}

void CudaOptimizer::set_seed(uint64_t seed) { impl_->seed = seed; }

RuleId CudaOptimizer::rule() const { return impl_->table.rule; }
size_t CudaOptimizer::num_groups() const { return impl_->table.hypers.size(); }
size_t CudaOptimizer::num_params() const { return impl_->table.tensors.size(); }
int CudaOptimizer::device() const { return impl_->group.device(); }

const Hyper& CudaOptimizer::hyper(size_t group) const { return api::hyper(impl_->table, group); }
void CudaOptimizer::set_hyper(size_t group, const Hyper& h) { api::set_hyper(impl_->table, group, h); }
void CudaOptimizer::set_hypers(const std::vector<Hyper>& hs) { api::set_hypers(impl_->table, hs); }

void CudaOptimizer::set_lr(size_t group, double lr, cudaStream_t stream) {
  api::check_group(impl_->table, group);
  api::check_has_lr(impl_->table, "set_lr");
  if (!(lr >= 0 && lr < 1e300)) throw std::invalid_argument("lr must be finite and >= 0");
  cuda::set_device_value(impl_->group.lr_device() + group, lr, impl_->group.device(), stream);
}

void CudaOptimizer::set_schedule(size_t group, const Schedule* schedule, cudaStream_t stream) {
  api::check_group(impl_->table, group);
  if (schedule) api::check_schedule(*schedule), api::check_has_lr(impl_->table, "set_schedule");
  impl_->group.set_schedule(int(group), schedule, stream);
}

std::vector<int64_t> CudaOptimizer::read_steps(cudaStream_t stream) const {
  std::vector<int64_t> out(impl_->table.hypers.size());
  impl_->group.read_steps(out.data(), stream);
  return out;
}

void CudaOptimizer::set_steps(const std::vector<int64_t>& steps, cudaStream_t stream) {
  api::check_steps(impl_->table, steps);
  for (size_t j = 0; j < steps.size(); ++j) {
    cuda::set_device_value(impl_->group.steps_device() + j, steps[j], impl_->group.device(), stream);
  }
}

int CudaOptimizer::poll_skip() const { return impl_->group.poll_skip(); }

void CudaOptimizer::update_loss_scale(float* scale, int32_t* clean_steps, int32_t* floor_skips, double growth,
                                      double backoff, int32_t interval, float min_scale, cudaStream_t stream) const {
  impl_->group.update_loss_scale(scale, clean_steps, floor_skips, growth, backoff, interval, min_scale, stream);
}

const ParamTensors& CudaOptimizer::tensors(size_t param) const { return api::tensors(impl_->table, param); }

void CudaOptimizer::set_grads(const std::vector<Tensor>& grads, cudaStream_t stream) {
  if (api::set_grads(impl_->table, grads)) write_grads(stream);
}

void CudaOptimizer::write_grads(cudaStream_t stream) { impl_->group.set_grads(impl_->table.slots, stream);
}

int64_t CudaOptimizer::num_chunks() const { return impl_->group.num_chunks(); }

struct CudaModeSwitch::Impl {
  api::Table table;
  cuda::Group group;

  Impl(std::vector<ParamGroup> groups, RuleId rule)
      : table(api::bind(std::move(groups), api::check_eval_point(rule), Device::kCUDA)),
        group(table.rule, table.slots, table.device.id, int(table.hypers.size())) {}
};

CudaModeSwitch::CudaModeSwitch(RuleId rule, std::vector<ParamGroup> groups)
    : impl_(std::make_unique<Impl>(std::move(groups), rule)) {}
CudaModeSwitch::~CudaModeSwitch() = default;
CudaModeSwitch::CudaModeSwitch(CudaModeSwitch&&) noexcept = default;
CudaModeSwitch& CudaModeSwitch::operator=(CudaModeSwitch&&) noexcept = default;
RuleId CudaModeSwitch::rule() const { return impl_->table.rule; }
size_t CudaModeSwitch::num_groups() const { return impl_->table.hypers.size(); }
int CudaModeSwitch::device() const { return impl_->group.device(); }

void CudaModeSwitch::run(const std::vector<Hyper>& hypers, const std::vector<int64_t>& steps, bool to_eval,
                         uint64_t seed, cudaStream_t stream) {
  with_rule(impl_->table.rule, [&](auto rule) {
    using Rule = decltype(rule);
    const auto coeffs = api::switch_coeffs<Rule>(impl_->table, hypers, steps, to_eval);
    const auto hs = api::hypers_of<Rule>(impl_->table);  // (unread: the coefficients are the host's)
    cuda::StepArgs a;
    a.hypers = hs.data();
    a.stride = sizeof(typename Rule::Hyper);
    a.coeffs = coeffs.data();
    a.coeffs_stride = sizeof(typename Rule::Coeffs);
    a.stream = stream;
    a.transform = api::switch_transform(steps, to_eval, seed);
    a.not_a_step = true;
    a.round_key = a.transform.round_key;
    impl_->group.step(a);
  });
}

int cuda_device_count() { return cuda::device_count(); }

std::string cuda_no_device_reason() { return cuda::no_device_reason(); }

void cuda_widen(const Tensor& src, const Tensor& dst, cudaStream_t stream) {
  for (const auto& [t, name] : {std::pair{&src, "source"}, std::pair{&dst, "destination"}}) {
    if (t->device.type != Device::kCUDA) {
      throw TensorError(std::string(name) + ": is on " + t->device.str() + "; the CUDA engine takes CUDA device memory");
    }
  }
  if (dst.dtype != DType::f32 || dst.readonly || dst.shape != src.shape || dst.device != src.device) {
    throw std::invalid_argument("destination must be a writable float32 array of the source's shape and device");
  }
  cuda::widen(src.data, src.dtype, static_cast<float*>(dst.data), src.numel(), dst.device.id, stream);
}

bool cuda_stream_is_capturing(cudaStream_t stream) { return cuda::stream_is_capturing(stream); }

}  // namespace fastopt
