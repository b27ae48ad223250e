#include "harness.hpp"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <sstream>

#include "attend/isa.hpp"

namespace attend_bench {
namespace {

// ATTEND_BENCH_THREADS="1,2" -> {1, 2}; default {1}.
std::vector<int> thread_counts() {
  std::vector<int> counts;
  const char* env = std::getenv("ATTEND_BENCH_THREADS");
  std::stringstream list(env && *env ? env : "1");
  for (std::string item; std::getline(list, item, ',');)
    if (const int n = std::atoi(item.c_str()); n > 0) counts.push_back(n);
  return counts.empty() ? std::vector<int>{1} : counts;
}

// One pool per thread count, alive for the whole run; nullptr (the caller's thread) for 1.
const attend::Executor* executor_for(int threads) {
  static std::map<int, std::unique_ptr<attend::ThreadPool>> pools;
  if (threads == 1) return nullptr;
  std::unique_ptr<attend::ThreadPool>& pool = pools[threads];
  if (!pool) pool = std::make_unique<attend::ThreadPool>(threads);
  return pool.get();
}

}  // namespace

std::vector<Target> attend_targets() {
  std::vector<Target> targets;
  for (const attend::Isa isa : attend::supported_isas())
    for (const int threads : thread_counts())
      targets.push_back({attend::name(isa), threads, {isa, executor_for(threads)}});
  return targets;
}

Target best_attend_target() {
  const attend::Isa isa = attend::best_isa();
  return {attend::name(isa), 1, {isa, nullptr}};
}

Target eigen_target() {
  // The widest x86 instruction set this translation unit was compiled for, which is what
  // Eigen vectorises with.
#if defined(__AVX512F__)
  return {"avx512", 1};
#elif defined(__AVX2__)
  return {"avx2", 1};
#elif defined(__AVX__)
  return {"avx", 1};
#elif defined(__SSE2__)
  return {"sse2", 1};
#else
  return {"scalar", 1};
#endif
}

void register_benchmark(const std::string& kernel_variant, const std::string& shape,
                        const Target& target, std::function<void(benchmark::State&)> run) {
  const std::string name = "BM_" + kernel_variant + "/" + shape + "/isa:" + target.isa +
                           "/threads:" + std::to_string(target.threads);
  benchmark::RegisterBenchmark(name.c_str(), std::move(run))
      ->MinTime(0.5)
      ->UseRealTime()
      ->Unit(benchmark::kMillisecond);
}

void time_kernel(benchmark::State& state, std::size_t out_elems,
                 const std::function<void(float* out)>& run) {
  std::vector<float> out(out_elems);
  for (auto _ : state) {
    run(out.data());
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
}

void report(benchmark::State& state, const Target& target, double flops, double bytes) {
  state.SetLabel(target.isa);
  if (flops > 0)
    state.counters["FLOPS"] =
        benchmark::Counter(flops, benchmark::Counter::kIsIterationInvariantRate);
  if (bytes > 0) {
    // bytes_per_second prints in binary units (G/s = 2^30 bytes/s, raw bytes/s in the JSON);
    // GBps prints in decimal units, the GB/s of the peers and the read probe.
    state.SetBytesProcessed(std::int64_t(bytes) * state.iterations());
    state.counters["GBps"] = benchmark::Counter(
        bytes, benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::OneK::kIs1000);
  }
}

Agreement compare(const std::vector<float>& a, const std::vector<float>& b, double tolerance) {
  Agreement agreement{0, tolerance};
  if (a.size() != b.size()) agreement.max_abs_diff = INFINITY;
  for (std::size_t i = 0; i < a.size() && i < b.size(); ++i) {
    const double diff = std::fabs(double(a[i]) - double(b[i]));
    if (std::isnan(diff)) return {NAN, tolerance};
    agreement.max_abs_diff = std::max(agreement.max_abs_diff, diff);
  }
  return agreement;
}

const std::vector<float>& baseline_output(const std::string& key,
                                          const std::function<std::vector<float>()>& compute) {
  static std::map<std::string, std::vector<float>> outputs;
  auto found = outputs.find(key);
  if (found == outputs.end()) found = outputs.emplace(key, compute()).first;
  return found->second;
}

bool validated(benchmark::State& state, const std::string& key, const Target& path,
               const std::function<Agreement()>& check) {
  // One verdict per kernel, shape and path for the whole run.
  static std::map<std::string, Agreement> verdicts;
  const std::string full_key = key + "/" + path.isa + "/threads:" + std::to_string(path.threads);
  auto found = verdicts.find(full_key);
  if (found == verdicts.end()) {
    found = verdicts.emplace(full_key, check()).first;
    const Agreement& a = found->second;
    std::fprintf(stderr, "validate %-34s max |attend - eigen| = %.3e, tolerance %.3e: %s\n",
                 full_key.c_str(), a.max_abs_diff, a.tolerance, a.ok() ? "ok" : "MISMATCH");
  }
  if (found->second.ok()) return true;
  const std::string message = "attend and the Eigen baseline disagree on " + full_key;
  state.SkipWithError(message.c_str());
  return false;
}

}  // namespace attend_bench
