// Executors of context.hpp: every task runs exactly once, exceptions surface after all
// tasks have finished, nested and concurrent submissions are safe, and a ThreadPool both
// spins for and sleeps through the gaps between jobs.
#include "attend/context.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <stdexcept>
#include <thread>
#include <vector>

namespace {

using attend::index_t;
using std::chrono::microseconds;

// Runs parallel_for(n) on `ex` and expects each task index exactly once.
void expect_each_task_once(const attend::Executor& ex, index_t n) {
  std::vector<std::atomic<int>> runs(static_cast<std::size_t>(n));
  ex.parallel_for(n, [&](index_t i) { runs[std::size_t(i)].fetch_add(1); });
  for (index_t i = 0; i < n; ++i) ASSERT_EQ(runs[std::size_t(i)].load(), 1) << "task " << i;
}

TEST(ThreadPool, RunsEveryTaskExactlyOnce) {
  for (int threads : {1, 2, 3, 4})
    for (microseconds spin : {microseconds(0), microseconds(200)}) {
      SCOPED_TRACE(::testing::Message() << threads << " threads, spin " << spin.count() << " us");
      const attend::ThreadPool pool(threads, spin);
      EXPECT_EQ(pool.concurrency(), threads);
      for (index_t n : {0, 1, 2, 7, 1000}) expect_each_task_once(pool, n);
    }
}

TEST(ThreadPool, ConcurrencyIsAtLeastOne) {
  EXPECT_EQ(attend::ThreadPool(0).concurrency(), 1);
  EXPECT_EQ(attend::ThreadPool(-3).concurrency(), 1);
  EXPECT_GE(attend::ThreadPool().concurrency(), 1);
}

// Back-to-back jobs catch workers spinning; gaps longer than the spin catch them asleep,
// and a job may finish before a late worker wakes. Each must still run every task once.
TEST(ThreadPool, JobsBackToBackAndAfterSleeping) {
  for (microseconds spin : {microseconds(0), microseconds(50), microseconds(200)}) {
    SCOPED_TRACE(::testing::Message() << "spin " << spin.count() << " us");
    const attend::ThreadPool pool(3, spin);
    for (int job = 0; job < 300; ++job) {
      expect_each_task_once(pool, 1 + job % 5);
      if (job % 50 == 0) std::this_thread::sleep_for(microseconds(500));
    }
  }
}

TEST(ThreadPool, UsesMoreThanOneThreadForLongTasks) {
  const attend::ThreadPool pool(2);
  std::atomic<int> inside{0}, most{0};
  pool.parallel_for(8, [&](index_t) {
    const int now = inside.fetch_add(1) + 1;
    for (int seen = most.load(); now > seen && !most.compare_exchange_weak(seen, now);) {
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    inside.fetch_sub(1);
  });
  EXPECT_EQ(most.load(), 2);
}

TEST(ThreadPool, RethrowsOneExceptionAfterEveryTaskHasRun) {
  const attend::ThreadPool pool(3);
  std::vector<std::atomic<int>> runs(64);
  EXPECT_THROW(pool.parallel_for(64,
                                 [&](index_t i) {
                                   runs[std::size_t(i)].fetch_add(1);
                                   if (i % 10 == 3) throw std::runtime_error("task failed");
                                 }),
               std::runtime_error);
  for (std::size_t i = 0; i < runs.size(); ++i) EXPECT_EQ(runs[i].load(), 1) << "task " << i;
  expect_each_task_once(pool, 100);  // the pool still works afterwards
}

TEST(ThreadPool, NestedParallelForRunsOnTheCallingTask) {
  const attend::ThreadPool pool(3);
  std::vector<std::atomic<int>> runs(8 * 8);
  pool.parallel_for(8, [&](index_t i) {
    const std::thread::id outer = std::this_thread::get_id();
    pool.parallel_for(8, [&](index_t j) {
      EXPECT_EQ(std::this_thread::get_id(), outer);
      runs[std::size_t(i * 8 + j)].fetch_add(1);
    });
  });
  for (std::size_t i = 0; i < runs.size(); ++i) EXPECT_EQ(runs[i].load(), 1) << "task " << i;
}

TEST(ThreadPool, JobsFromSeveralThreadsTakeTurns) {
  const attend::ThreadPool pool(3);
  std::vector<std::thread> submitters;
  std::atomic<int> failures{0};
  for (int s = 0; s < 3; ++s)
    submitters.emplace_back([&] {
      for (int job = 0; job < 100; ++job) {
        std::vector<std::atomic<int>> runs(17);
        pool.parallel_for(17, [&](index_t i) { runs[std::size_t(i)].fetch_add(1); });
        for (const std::atomic<int>& r : runs) failures += r.load() != 1;
      }
    });
  for (std::thread& t : submitters) t.join();
  EXPECT_EQ(failures.load(), 0);
}

TEST(ThreadPool, DestroysPromptlyWhetherWorkersSpinOrSleep) {
  for (int i = 0; i < 50; ++i) {
    const attend::ThreadPool idle(4);
    const attend::ThreadPool used(4, microseconds(i % 2 ? 0 : 200));
    expect_each_task_once(used, 9);
  }
}

TEST(SerialExecutor, RunsEveryTaskInOrderOnTheCaller) {
  const attend::SerialExecutor serial;
  const std::thread::id caller = std::this_thread::get_id();
  std::vector<index_t> order;
  serial.parallel_for(5, [&](index_t i) {
    EXPECT_EQ(std::this_thread::get_id(), caller);
    order.push_back(i);
  });
  EXPECT_EQ(order, (std::vector<index_t>{0, 1, 2, 3, 4}));
  EXPECT_EQ(serial.concurrency(), 1);
}

TEST(FunctionExecutor, HandsTheTasksToTheCallersParallelFor) {
  int calls = 0;
  const attend::FunctionExecutor ex(4, [&](index_t n, const std::function<void(index_t)>& task) {
    ++calls;
    for (index_t i = n - 1; i >= 0; --i) task(i);  // any order will do
  });
  EXPECT_EQ(ex.concurrency(), 4);
  expect_each_task_once(ex, 10);
  ex.parallel_for(0, [](index_t) { FAIL() << "no task for n = 0"; });
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(attend::FunctionExecutor(0, {}).concurrency(), 1);
}

}  // namespace
