// How a call runs: on which instruction-set path, and on which threads.
//
// Every public call takes an optional `const Context&` last. The default runs the best
// path this CPU offers (or ATTEND_ISA's) on the calling thread alone. Work is cut into
// items whose boundaries never depend on the thread count, and each item computes its
// outputs alone, so results are bit-identical for any executor and any number of threads.
#pragma once

#include "attend/detail/config.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "attend/isa.hpp"
#include "attend/view.hpp"

#if defined(_OPENMP)
#include <omp.h>
#endif

ATTEND_NAMESPACE_BEGIN

// Runs independent tasks, perhaps in parallel. Implement it to run attend on your engine's
// own threads.
class Executor {
 public:
  virtual ~Executor() = default;
  // How many tasks may run at once (1 for a serial executor).
  virtual int concurrency() const = 0;
  // Runs task(i) for every i in [0, n) exactly once, in any order and on any of its
  // threads, and returns when all have finished. If tasks throw, one exception is
  // rethrown after all have finished.
  virtual void parallel_for(index_t n, const std::function<void(index_t)>& task) const = 0;
};

// The caller's thread alone.
class SerialExecutor final : public Executor {
 public:
  int concurrency() const override { return 1; }
  void parallel_for(index_t n, const std::function<void(index_t)>& task) const override {
    for (index_t i = 0; i < n; ++i) task(i);
  }
};

// A fixed set of std::threads; the calling thread works too, so ThreadPool(4) uses the
// caller and 3 workers. Tasks are handed out one at a time from a shared counter, so fast
// threads take more of them (causal attention has unequal tasks). One parallel_for runs
// at a time; a parallel_for called from inside a task runs serially on that thread.
//
// Idle threads spin for up to `spin` (default 200 us) before they sleep: the next job of
// an engine usually follows within microseconds (one attention call runs two or three
// parallel_fors, a layer several calls), and waking a sleeping thread costs tens of
// microseconds, on a virtual machine ~40 (E1 attention at 2 threads lost 14% to it when
// cut into 48 jobs). The spin yields the core now and then, so an oversubscribed machine
// still makes progress; spin = 0 sleeps at once.
class ThreadPool final : public Executor {
 public:
  explicit ThreadPool(int threads = int(std::max(1u, std::thread::hardware_concurrency())),
                      std::chrono::microseconds spin = std::chrono::microseconds(200))
      : threads_(std::max(threads, 1)), spin_(std::max(spin, std::chrono::microseconds(0))) {
    for (int t = 1; t < threads_; ++t) workers_.emplace_back([this] { work(); });
  }
  ~ThreadPool() override {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
    }
    wake_.notify_all();
    for (std::thread& w : workers_) w.join();
  }
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int concurrency() const override { return threads_; }

  void parallel_for(index_t n, const std::function<void(index_t)>& task) const override {
    if (n <= 0) return;
    if (threads_ == 1 || n == 1 || inside_task()) {
      SerialExecutor().parallel_for(n, task);
      return;
    }
    std::lock_guard<std::mutex> one_job_at_a_time(submit_);
    Job job(&task, n);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      job_ = &job;
      generation_.fetch_add(1);
    }
    wake_.notify_all();
    run(job);
    const auto done = [&] { return job.finished == n && job.workers_inside == 0; };
    spin_until(done);  // a hint: the test that counts is the one under the lock
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, done);
    job_ = nullptr;
    if (job.error) std::rethrow_exception(job.error);
  }

 private:
  struct Job {
    Job(const std::function<void(index_t)>* t, index_t count) : task(t), n(count) {}
    const std::function<void(index_t)>* task;
    index_t n;
    std::atomic<index_t> next{0};
    // Written under mutex_; atomic so that a spinning thread may read them without it.
    std::atomic<index_t> finished{0};
    std::atomic<int> workers_inside{0};  // workers that may still touch the job
    std::exception_ptr error;            // under mutex_
  };

  static bool& inside_task() {
    thread_local bool inside = false;
    return inside;
  }

  // One turn of a spin: tells the core that this thread only waits.
  static void relax() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    asm volatile("yield");
#endif
  }

  // Spins until ready() or for spin_, whichever comes first; yields every 64 turns.
  template <class Ready>
  void spin_until(const Ready& ready) const {
    if (spin_.count() == 0) return;
    const auto until = std::chrono::steady_clock::now() + spin_;
    for (unsigned turn = 1; !ready(); ++turn) {
      relax();
      if (turn % 64 == 0) {
        if (std::chrono::steady_clock::now() >= until) return;
        std::this_thread::yield();
      }
    }
  }

  // Takes tasks until none are left; records completions and the first exception.
  void run(Job& job) const {
    index_t ran = 0;
    std::exception_ptr error;
    inside_task() = true;
    for (index_t i = 0; (i = job.next.fetch_add(1)) < job.n; ++ran) {
      try {
        (*job.task)(i);
      } catch (...) {
        if (!error) error = std::current_exception();
      }
    }
    inside_task() = false;
    std::lock_guard<std::mutex> lock(mutex_);
    job.finished += ran;
    if (error && !job.error) job.error = error;
  }

  void work() const {
    std::uint64_t seen = 0;
    for (;;) {
      spin_until([&] { return generation_.load() != seen; });
      Job* job = nullptr;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return stopping_ || generation_.load() != seen; });
        if (stopping_) return;
        seen = generation_.load();
        job = job_;
        if (!job) continue;  // it finished before this thread woke
        ++job->workers_inside;
      }
      run(*job);
      {
        std::lock_guard<std::mutex> lock(mutex_);
        --job->workers_inside;
      }
      done_.notify_all();
    }
  }

  int threads_;
  std::chrono::microseconds spin_;
  std::vector<std::thread> workers_;
  mutable std::mutex submit_;  // serialises parallel_for calls
  mutable std::mutex mutex_;   // guards job_, stopping_, the Job bookkeeping, the waits
  mutable std::condition_variable wake_, done_;
  mutable Job* job_ = nullptr;
  mutable std::atomic<std::uint64_t> generation_{0};  // changed under mutex_
  bool stopping_ = false;
};

#if defined(_OPENMP)
// OpenMP's threads (compile with -fopenmp to get this class).
class OpenMpExecutor final : public Executor {
 public:
  int concurrency() const override { return omp_get_max_threads(); }
  void parallel_for(index_t n, const std::function<void(index_t)>& task) const override {
    std::exception_ptr error;
#pragma omp parallel for schedule(dynamic, 1)
    for (index_t i = 0; i < n; ++i) {
      try {
        task(i);
      } catch (...) {
#pragma omp critical(attend_error)
        if (!error) error = std::current_exception();
      }
    }
    if (error) std::rethrow_exception(error);
  }
};
#endif

// An executor made of the caller's own parallel-for: `run(n, task)` must call task(i) for
// every i in [0, n) and return when all are done.
class FunctionExecutor final : public Executor {
 public:
  using ParallelFor = std::function<void(index_t, const std::function<void(index_t)>&)>;
  FunctionExecutor(int concurrency, ParallelFor run)
      : concurrency_(std::max(concurrency, 1)), run_(std::move(run)) {}
  int concurrency() const override { return concurrency_; }
  void parallel_for(index_t n, const std::function<void(index_t)>& task) const override {
    if (n > 0) run_(n, task);
  }

 private:
  int concurrency_;
  ParallelFor run_;
};

struct Context {
  Isa isa = Isa::automatic;            // a path to force (tests, benchmarks), else the best
  const Executor* executor = nullptr;  // nullptr: the calling thread alone
};

namespace detail {
// The executor a call runs on.
inline const Executor& executor_of(const Context& ctx) {
  static const SerialExecutor serial;
  if (ctx.executor) return *ctx.executor;
  return serial;
}
}  // namespace detail

ATTEND_NAMESPACE_END
