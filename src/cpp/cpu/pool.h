// A persistent thread pool: one parallel region per step, tasks handed out by an atomic
// counter so that a slow (shared) core does not hold the others back.
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

  int num_threads() const { return size_; }
  void set_num_threads(int n);  // n >= 1

  ~ThreadPool();

 private:
  ThreadPool();
  void start(int n);
  void stop();
  void worker_loop(uint64_t seen);  // seen: the job generation already done
  void drain();

  // Called in the child of fork(): the parent's workers do not exist there.
  static void after_fork_in_child();

  std::vector<std::thread> workers_;
  int size_ = 1;  // threads, the caller included
  bool forked_ = false;  // set in a forked child: restart the workers before the next run
  std::mutex run_mutex_;  // one parallel region at a time
  std::mutex m_;
  std::condition_variable wake_, done_;
  uint64_t generation_ = 0;
  bool stopping_ = false;
  int busy_ = 0;
  // The current job.
  TaskFn fn_ = nullptr;
  void* ctx_ = nullptr;
  int64_t ntasks_ = 0;
  std::atomic<int64_t> next_{0};
};

int default_num_threads();

}  // namespace fastopt::cpu
