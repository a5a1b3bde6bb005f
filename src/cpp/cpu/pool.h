// A persistent thread pool: one parallel region per step, tasks handed out by an atomic
// counter so that a slow (shared) core does not hold the others back. Between regions the
// workers, and the caller waiting for them, spin a short while (kSpinNs) before they sleep:
// a sleeping thread takes 10 to 50 us to wake, which a step of a million params (a few hundred
// us) cannot afford, nor a step's back-to-back regions (the norm pass and the update; a
// two-pass rule's passes). Not while there are more threads than cores: a spinning thread
// would then take the core of one with work.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

namespace fastopt::cpu {

class ThreadPool {
 public:
  using TaskFn = void (*)(void* ctx, int64_t task);

  static ThreadPool& instance();

  // Runs fn(ctx, t) for t in [0, ntasks) on up to num_threads() threads, the caller being
  // one of them; returns when all are done. A call made while another is running (from
  // another Python thread) runs on the calling thread alone.
  void run(int64_t ntasks, TaskFn fn, void* ctx);

  // How long a thread spins for the next region, or for the region's end, before it sleeps.
  static constexpr int64_t kSpinNs = 100000;

  int num_threads() const { return size_; }
  void set_num_threads(int n);  // n >= 1

  ~ThreadPool();

 private:
  ThreadPool();
  void start(int n);
  void stop();
  void worker_loop(uint64_t seen);  // seen: the job generation already done
  void drain(uint64_t generation);

  // Called in the child of fork(): the parent's workers do not exist there.
  static void after_fork_in_child();

  std::vector<std::thread> workers_;
  std::atomic<int> size_{1};  // threads, the caller included (read without a lock by num_threads)
  bool forked_ = false;  // set in a forked child: restart the workers before the next run
  std::mutex run_mutex_;  // one parallel region at a time
  std::mutex m_;
  std::condition_variable wake_, done_;
  std::atomic<uint64_t> generation_{0};  // written under m_; read by spinning threads without it
  std::atomic<bool> stopping_{false};
  std::atomic<int> active_{0};  // workers inside a region
  static constexpr uint64_t kTaskMask = 0xffffffffu;
  std::atomic<uint64_t> ticket_{0};  // the open region's generation (low 32 bits) and next task
  bool spin_ = false;  // no more threads than cores
  // The current job.
  TaskFn fn_ = nullptr;
  void* ctx_ = nullptr;
  int64_t ntasks_ = 0;
};

int default_num_threads();

}  // namespace fastopt::cpu
