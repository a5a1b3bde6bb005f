#include "pool.h"

#include <algorithm>
#include <chrono>
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

namespace {

// Spins until done() or kSpinNs have passed; whether done() came true.
template <class F>
bool spin_until(F&& done) {
  using clock = std::chrono::steady_clock;
  const auto until = clock::now() + std::chrono::nanoseconds(ThreadPool::kSpinNs);
  for (;;) {
    for (int i = 0; i < 64; ++i) {  // (a clock read costs about as much as these pauses)
      if (done()) return true;
#if defined(__x86_64__) || defined(__i386__)
      __builtin_ia32_pause();
#endif
    }
    if (clock::now() >= until) return false;
  }
}

}  // namespace

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
  // No worker is inside a region here, whatever the parent's were doing at the fork, and the
  // region a parent thread had open is closed.
  p.active_ = 0;
  p.ticket_ = ((p.generation_ & kTaskMask) << 32) | kTaskMask;
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
  spin_ = n <= default_num_threads();
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

// Claims the region's tasks one by one while its generation is open (ticket_: the generation's
// low 32 bits, then the next task) and runs them.
void ThreadPool::drain(uint64_t generation) {
  for (uint64_t t = ticket_.load(); t >> 32 == (generation & kTaskMask);) {
    const uint64_t task = t & kTaskMask;
    if (task == kTaskMask || task >= uint64_t(ntasks_)) return;  // (closed: ntasks_ may be the next region's)
    if (ticket_.compare_exchange_weak(t, t + 1)) fn_(ctx_, int64_t(task)), t = ticket_.load();
  }
}

void ThreadPool::worker_loop(uint64_t seen) {
  const auto woken = [&] { return stopping_.load() || generation_.load() != seen; };
  for (;;) {
    if (!(spin_ && spin_until(woken))) {
      std::unique_lock<std::mutex> lk(m_);
      wake_.wait(lk, woken);
    }
    if (stopping_) return;
    seen = generation_;
    // Registered before it looks at the ticket: the caller, which closes the ticket before it
    // waits for active_ to fall to 0, then waits for this thread, or this thread finds the
    // region closed and reads nothing of the job (whose fields the next region may be writing).
    active_.fetch_add(1);
    drain(seen);
    if (active_.fetch_sub(1) == 1) {
      std::lock_guard<std::mutex> g(m_);  // (so that the caller cannot miss the notification)
      done_.notify_one();
    }
  }
}

void ThreadPool::run(int64_t ntasks, TaskFn fn, void* ctx) {
  std::unique_lock<std::mutex> region(run_mutex_, std::try_to_lock);
  if (region.owns_lock() && forked_) start(size_);
  if (!region.owns_lock() || workers_.empty() || ntasks <= 1 || uint64_t(ntasks) >= kTaskMask) {
    for (int64_t t = 0; t < ntasks; ++t) fn(ctx, t);
    return;
  }
  uint64_t generation;
  {
    std::lock_guard<std::mutex> g(m_);
    fn_ = fn;
    ctx_ = ctx;
    ntasks_ = ntasks;
    generation = generation_ + 1;
    ticket_ = (generation & kTaskMask) << 32;
    generation_ = generation;
  }
  wake_.notify_all();
  // The caller runs the tasks that no worker has claimed, then closes the region: a worker
  // that wakes only now (a sleeping thread takes 10 to 50 us) is not waited for; those that
  // took a task are.
  drain(generation);
  ticket_ = ((generation & kTaskMask) << 32) | kTaskMask;
  const auto finished = [&] { return active_.load() == 0; };
  if (spin_ && spin_until(finished)) return;
  std::unique_lock<std::mutex> lk(m_);
  done_.wait(lk, finished);
}

}  // namespace fastopt::cpu
