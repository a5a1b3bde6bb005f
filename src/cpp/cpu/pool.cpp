#include "pool.h"

#include <algorithm>
#include <stdexcept>
#include <string>
#include <system_error>

#include <pthread.h>
#if defined(__linux__)
#include <sched.h>
#endif

#include <new>
#include <stdexcept>

namespace fastopt::cpu {

int default_num_threads() {
#if defined(__linux__)
  cpu_set_t set;  // the cores this process may run on, not all the machine's
  if (sched_getaffinity(0, sizeof(set), &set) == 0 && CPU_COUNT(&set) > 0) return CPU_COUNT(&set);
#endif
  const unsigned n = std::thread::hardware_concurrency();
  return n ? int(n) : 1;
}

ThreadPool& ThreadPool::instance() {
  // Never destroyed: joining threads during interpreter shutdown is not safe.
  static ThreadPool* pool = new ThreadPool();
  return *pool;
}

ThreadPool::ThreadPool() {
  start(default_num_threads());
  pthread_atfork(nullptr, nullptr, &ThreadPool::after_fork_in_child);
}

void ThreadPool::after_fork_in_child() {
  ThreadPool& p = instance();
  // The std::thread objects name threads that only exist in the parent: forget them
  // without joining (leaked on purpose), and rebuild the locks, which a parent thread
  // may have held at the fork.
  new std::vector<std::thread>(std::move(p.workers_));
  p.workers_.clear();
  new (&p.run_mutex_) std::mutex();
  new (&p.m_) std::mutex();
  new (&p.wake_) std::condition_variable();
  new (&p.done_) std::condition_variable();
  p.forked_ = true;
}

ThreadPool::~ThreadPool() { stop(); }

void ThreadPool::start(int n) {
  uint64_t now;
  {
    std::lock_guard<std::mutex> g(m_);
    stopping_ = false;
    now = generation_;  // a new worker waits for the next job, not the last one
  }
  size_ = n;
  forked_ = false;
  for (int i = 1; i < n; ++i) workers_.emplace_back([this, now] { worker_loop(now); });
}

void ThreadPool::stop() {
  {
    std::lock_guard<std::mutex> g(m_);
    stopping_ = true;
  }
  wake_.notify_all();
  for (auto& t : workers_) t.join();
  workers_.clear();
}

void ThreadPool::set_num_threads(int n) {
  // A step is memory-bound: threads beyond a few per core only add scheduling.
  const int most = 4 * std::max(default_num_threads(), std::thread::hardware_concurrency() > 0
                                                          ? int(std::thread::hardware_concurrency()) : 1);
  if (n < 1 || n > most) {
    throw std::invalid_argument("num_threads must be in [1, " + std::to_string(most) + "] (4 per CPU), got " +
                                std::to_string(n));
  }
  std::lock_guard<std::mutex> g(run_mutex_);
  if (n == num_threads()) return;
  const int before = num_threads();
  stop();
  try {
    start(n);
  } catch (const std::system_error& e) {  // the system refused a thread: back to the pool it had
    stop();
    start(before);
    throw std::runtime_error("set_num_threads(" + std::to_string(n) + "): could not start the threads (" +
                             e.what() + "); still " + std::to_string(before));
  }
}

void ThreadPool::drain() {
  for (int64_t t = next_.fetch_add(1, std::memory_order_relaxed); t < ntasks_;
       t = next_.fetch_add(1, std::memory_order_relaxed)) {
    fn_(ctx_, t);
  }
}

void ThreadPool::worker_loop(uint64_t seen) {
  for (;;) {
    {
      std::unique_lock<std::mutex> lk(m_);
      wake_.wait(lk, [&] { return stopping_ || generation_ != seen; });
      if (stopping_) return;
      seen = generation_;
    }
    drain();
    {
      std::lock_guard<std::mutex> g(m_);
      if (--busy_ == 0) done_.notify_one();
    }
  }
}

void ThreadPool::run(int64_t ntasks, TaskFn fn, void* ctx) {
  std::unique_lock<std::mutex> region(run_mutex_, std::try_to_lock);
  if (region.owns_lock() && forked_) start(size_);
  if (!region.owns_lock() || workers_.empty() || ntasks <= 1) {
    for (int64_t t = 0; t < ntasks; ++t) fn(ctx, t);
    return;
  }
  {
    std::lock_guard<std::mutex> g(m_);
    fn_ = fn;
    ctx_ = ctx;
    ntasks_ = ntasks;
    next_.store(0, std::memory_order_relaxed);
    busy_ = int(workers_.size());
    ++generation_;
  }
  wake_.notify_all();
  drain();
  std::unique_lock<std::mutex> lk(m_);
  done_.wait(lk, [&] { return busy_ == 0; });
}

}  // namespace fastopt::cpu
