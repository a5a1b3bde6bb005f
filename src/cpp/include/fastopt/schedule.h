// Learning-rate schedules as pure functions of the step, evaluated identically on the host
// and on a CUDA device: a Schedule is a small POD (no pointers, trivially copyable, passed
// by value as a kernel argument), and lr_at(schedule, step) is the lr of the optimizer step
// that comes after `step` steps have been taken (step 0: the lr of the first step). This is
// torch.optim.lr_scheduler's `last_epoch` after `step` calls of scheduler.step().
//
// Where torch has the same schedule, the formula is torch's closed form
// (`_get_closed_form_lr`), written with the same operations in the same order, so that on
// the host (same libm) the doubles are identical. Everything is computed in double.
//
// Host and device agree bit for bit on + - * / and sqrt (IEEE, correctly rounded) provided
// the CUDA translation unit is compiled with -fmad=false (as fastopt's engine is: otherwise
// nvcc may fuse a*b+c); cos and pow come from different libraries (glibc vs CUDA's libm)
// and may differ in the last ulp or two of a double, which only shows in the float lr an
// engine passes down when the double lies at a float rounding boundary.
#pragma once
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "fastopt/platform.h"

namespace fastopt {

enum class ScheduleKind : int32_t {
  constant,     // ConstantLR: base * factor before total_iters, base from then on
  step,         // StepLR
  multistep,    // MultiStepLR
  exponential,  // ExponentialLR
  cosine,       // CosineAnnealingLR (periodic past T_max, as torch's closed form)
  linear,       // LinearLR: factors interpolated over total_iters, then held
  polynomial,   // PolynomialLR
  one_cycle,    // OneCycleLR (held at its last lr past total_steps - 1)
  anneal,       // start -> end over `steps` steps (linear, cosine, 1-sqrt), then held at end
};

enum class AnnealShape : int32_t { linear = 0, cosine = 1, one_minus_sqrt = 2 };

// One schedule of a single kind. Fields by kind (step counts in n, reals in x):
//   kind         n             opt                          x[0]    x[1]        x[2]      x[3]
//   constant     total_iters   -                            base    factor
//   step         step_size     -                            base    gamma
//   multistep    #milestones   first index in milestones[]  base    gamma
//   exponential  -             -                            base    gamma
//   cosine       T_max         -                            base    eta_min
//   linear       total_iters   -                            base    start_f     end_f
//   polynomial   total_iters   -                            base    power
//   one_cycle    total_steps   bit0 linear, bit1 3-phase    max_lr  initial_lr  min_lr    pct_start*total_steps
//   anneal       steps         AnnealShape                  start   end
struct ScheduleSegment {
  int32_t kind;
  int32_t opt;
  int64_t n;
  double x[4];
};

// A chain of up to kMaxSegments segments (a single schedule is a chain of one): segment i
// runs from step start[i] on and sees the step relative to start[i] (torch's SequentialLR).
struct Schedule {
  static constexpr int kMaxSegments = 8;
  static constexpr int kMaxMilestones = 8;  // multistep milestones, all segments together

  int32_t num_segments;
  int32_t num_milestones;
  int64_t start[kMaxSegments];  // start[0] == 0, strictly increasing
  ScheduleSegment seg[kMaxSegments];
  int64_t milestones[kMaxMilestones];  // sorted within each multistep segment's range
};

static_assert(std::is_trivially_copyable<Schedule>::value && std::is_standard_layout<Schedule>::value,
              "Schedule is passed by value to kernels and copied as bytes");
static_assert(sizeof(Schedule) == 520, "the POD layout is part of the engine interface");

namespace schedule_detail {

constexpr double kPi = 3.141592653589793238462643383279502884;  // == Python's math.pi

FASTOPT_HD int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
FASTOPT_HD int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

// OneCycleLR's _annealing_cos / _annealing_linear, same operation order.
FASTOPT_HD double one_cycle_anneal(bool linear, double start, double end, double pct) {
  if (linear) return (end - start) * pct + start;
  const double cos_out = std::cos(kPi * pct) + 1;
  return end + (start - end) / 2.0 * cos_out;
}

// One phase of OneCycleLR.get_lr: pct runs from the previous phase's (float) end step.
FASTOPT_HD double one_cycle_phase(bool linear, double t, double begin, double end, double lr0, double lr1) {
  const double den = end - begin;
  return one_cycle_anneal(linear, lr0, lr1, den != 0 ? (t - begin) / den : 1.0);  // torch: 0/0 here
}

// OneCycleLR.get_lr at step_num = step: a phase is picked by `step <= its end step` (the
// last one otherwise); phases end at float steps q - 1, 2q - 2 (three-phase) and total - 1,
// q = pct_start * total (2q is float(2 * pct_start * total) exactly).
FASTOPT_HD double one_cycle(const ScheduleSegment& s, int64_t step) {
  const int64_t total = max64(s.n, 1);
  const double t = double(min64(step, total - 1));  // torch raises past total_steps: hold instead
  const bool linear = s.opt & 1, three_phase = s.opt & 2;
  const double max_lr = s.x[0], initial_lr = s.x[1], min_lr = s.x[2], q = s.x[3];
  const double e1 = q - 1, last = double(total - 1);
  if (t <= e1) return one_cycle_phase(linear, t, 0.0, e1, initial_lr, max_lr);
  if (!three_phase) return one_cycle_phase(linear, t, e1, last, max_lr, min_lr);
  const double e2 = 2 * q - 2;
  if (t <= e2) return one_cycle_phase(linear, t, e1, e2, max_lr, initial_lr);
  return one_cycle_phase(linear, t, e2, last, initial_lr, min_lr);
}

FASTOPT_HD double segment_lr(const Schedule& sc, const ScheduleSegment& s, int64_t step) {
  const double base = s.x[0];
  switch (static_cast<ScheduleKind>(s.kind)) {
    case ScheduleKind::constant:
      return step < s.n ? base * s.x[1] : base;
    case ScheduleKind::step:
      return base * std::pow(s.x[1], double(step / max64(s.n, 1)));
    case ScheduleKind::multistep: {
      int passed = 0;  // bisect_right: a milestone m applies from step m on
      for (int64_t i = s.opt; i >= 0 && i < s.opt + s.n && i < Schedule::kMaxMilestones; ++i) {
        passed += sc.milestones[i] <= step;
      }
      return base * std::pow(s.x[1], double(passed));
    }
    case ScheduleKind::exponential:
      return base * std::pow(s.x[1], double(step));
    case ScheduleKind::cosine: {
      const double eta_min = s.x[1];
      return eta_min + (base - eta_min) * (1 + std::cos(kPi * double(step) / double(max64(s.n, 1)))) / 2;
    }
    case ScheduleKind::linear: {
      const int64_t total = max64(s.n, 1);
      return base * (s.x[1] + (s.x[2] - s.x[1]) * double(min64(total, step)) / double(total));
    }
    case ScheduleKind::polynomial: {
      const int64_t total = max64(s.n, 1);
      return base * std::pow(1.0 - double(min64(total, step)) / double(total), s.x[1]);
    }
    case ScheduleKind::one_cycle:
      return one_cycle(s, step);
    case ScheduleKind::anneal: {
      const double start = s.x[0], end = s.x[1];
      if (step >= s.n) return end;  // held at `end` from step n on (also covers n <= 0)
      const double t = double(step), n = double(s.n);
      switch (static_cast<AnnealShape>(s.opt)) {
        case AnnealShape::cosine: return end + (start - end) * (1 + std::cos(kPi * t / n)) / 2;
        case AnnealShape::one_minus_sqrt: return end + (start - end) * (1 - std::sqrt(t / n));
        default: return end + (start - end) * (n - t) / n;
      }
    }
  }
  return 0.0;  // unknown kind: a corrupt POD, never a valid schedule
}

}  // namespace schedule_detail

// The lr of the step taken after `step` optimizer steps (negative steps count as 0).
FASTOPT_HD double lr_at(const Schedule& s, int64_t step) {
  if (step < 0) step = 0;
  int i = 0;  // the last segment that has started (SequentialLR's bisect_right)
  while (i + 1 < s.num_segments && i + 1 < Schedule::kMaxSegments && step >= s.start[i + 1]) ++i;
  return schedule_detail::segment_lr(s, s.seg[i], step - s.start[i]);
}

// Host-side builders. They do not validate (fastopt.schedules does, naming the argument);
// lr_at never divides by zero whatever the POD holds.
namespace schedules {

inline Schedule single(ScheduleKind kind, int32_t opt, int64_t n, double x0, double x1 = 0, double x2 = 0,
                       double x3 = 0) {
  Schedule s{};
  s.num_segments = 1;
  s.seg[0] = ScheduleSegment{int32_t(kind), opt, n, {x0, x1, x2, x3}};
  return s;
}

inline Schedule constant(double base_lr, double factor = 1.0, int64_t total_iters = 0) {
  return single(ScheduleKind::constant, 0, total_iters, base_lr, factor);
}
inline Schedule step(double base_lr, int64_t step_size, double gamma = 0.1) {
  return single(ScheduleKind::step, 0, step_size, base_lr, gamma);
}
// `milestones` sorted, at most Schedule::kMaxMilestones of them (more make a schedule that
// set_schedule refuses as malformed; only the first kMaxMilestones are copied).
inline Schedule multistep(double base_lr, const int64_t* milestones, int count, double gamma = 0.1) {
  Schedule s = single(ScheduleKind::multistep, 0, count, base_lr, gamma);
  s.num_milestones = count;
  for (int i = 0; i < count && i < Schedule::kMaxMilestones; ++i) s.milestones[i] = milestones[i];
  return s;
}
inline Schedule exponential(double base_lr, double gamma) {
  return single(ScheduleKind::exponential, 0, 0, base_lr, gamma);
}
inline Schedule cosine(double base_lr, int64_t T_max, double eta_min = 0.0) {
  return single(ScheduleKind::cosine, 0, T_max, base_lr, eta_min);
}
inline Schedule linear(double base_lr, double start_factor, double end_factor, int64_t total_iters) {
  return single(ScheduleKind::linear, 0, total_iters, base_lr, start_factor, end_factor);
}
inline Schedule polynomial(double base_lr, int64_t total_iters, double power = 1.0) {
  return single(ScheduleKind::polynomial, 0, total_iters, base_lr, power);
}
inline Schedule one_cycle(double max_lr, int64_t total_steps, double pct_start = 0.3, bool linear = false,
                          double div_factor = 25.0, double final_div_factor = 1e4, bool three_phase = false) {
  const double initial_lr = max_lr / div_factor;  // as OneCycleLR.__init__
  return single(ScheduleKind::one_cycle, (linear ? 1 : 0) | (three_phase ? 2 : 0), total_steps, max_lr, initial_lr,
                initial_lr / final_div_factor, pct_start * double(total_steps));
}
inline Schedule anneal(double start_lr, double end_lr, int64_t steps, AnnealShape shape) {
  return single(ScheduleKind::anneal, int32_t(shape), steps, start_lr, end_lr);
}

// SequentialLR: parts[i] runs from milestones[i-1] (0 for i == 0), seeing the step relative
// to that start. Nested chains are flattened; a part's segments that would start at or after
// the next milestone are never reached and are dropped. `milestones` (count - 1 of them)
// must be strictly increasing and > 0. Returns nullptr, or why the chain does not fit.
inline const char* chain(const Schedule* parts, const int64_t* milestones, int count, Schedule* out) {
  Schedule s{};
  for (int i = 0; i + 1 < count; ++i) {
    if (milestones[i] <= (i == 0 ? 0 : milestones[i - 1])) return "milestones must be strictly increasing and > 0";
  }
  for (int i = 0; i < count; ++i) {
    const int64_t begin = i == 0 ? 0 : milestones[i - 1];
    const Schedule& p = parts[i];
    for (int j = 0; j < p.num_segments; ++j) {
      const int64_t at = begin + p.start[j];
      if (j > 0 && i + 1 < count && at >= milestones[i]) break;
      if (s.num_segments == Schedule::kMaxSegments) return "too many segments (flattened) for one schedule";
      ScheduleSegment seg = p.seg[j];
      if (static_cast<ScheduleKind>(seg.kind) == ScheduleKind::multistep) {
        if (s.num_milestones + seg.n > Schedule::kMaxMilestones) return "too many multistep milestones in one schedule";
        for (int k = 0; k < seg.n; ++k) s.milestones[s.num_milestones + k] = p.milestones[seg.opt + k];
        seg.opt = s.num_milestones;
        s.num_milestones += int32_t(seg.n);
      }
      s.start[s.num_segments] = at;
      s.seg[s.num_segments++] = seg;
    }
  }
  *out = s;
  return nullptr;
}

}  // namespace schedules
}  // namespace fastopt
