// The benchmark harness: how every benchmark of attend_bench is named, timed, counted and
// validated, so that the kernel files contain only the calls they measure.
//
// Names: BM_<Kernel>_<Variant>/<shape>/isa:<isa>/threads:<n>, e.g.
//   BM_Attention_Attend/P1/isa:avx512/threads:1   attend::attention on its AVX-512 path
//   BM_Attention_Eigen/P1/isa:sse2/threads:1      the naive Eigen baseline
// so --benchmark_filter=P1 selects a shape, =isa:portable an instruction-set path.
#pragma once

#include <benchmark/benchmark.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "attend/context.hpp"

namespace attend_bench {

// How a kernel runs: the instruction-set path of its inner loops and its thread count.
struct Target {
  std::string isa;
  int threads = 1;
  attend::Context context{};  // attend's calls run under it; the baseline ignores it
};

// attend's targets: every path this CPU runs (attend::supported_isas(), portable first),
// each at every thread count of ATTEND_BENCH_THREADS (a comma-separated list, default
// "1"; n > 1 runs on an attend::ThreadPool of n). Every attend kernel is registered once
// per target.
std::vector<Target> attend_targets();

// The attend target the Eigen baseline's own runs are validated against: the best path
// this CPU runs, on one thread.
Target best_attend_target();

// The Eigen baseline's target: the ISA Eigen was compiled for (attend_bench's flags) on
// one thread (Eigen parallelises only under OpenMP, which attend_bench does not enable).
Target eigen_target();

// Registers `run` as BM_<kernel_variant>/<shape>/isa:<isa>/threads:<n> with the timing
// policy shared by all: real time, and at least 0.5 s of it. A kernel slower than that
// (the portable path at the prefill shapes takes seconds) is timed for one iteration.
void register_benchmark(const std::string& kernel_variant, const std::string& shape,
                        const Target& target, std::function<void(benchmark::State&)> run);

// The timed loop: run(out) into a zeroed buffer of `out_elems` floats (first touched
// before timing), kept from being optimised away.
void time_kernel(benchmark::State& state, std::size_t out_elems,
                 const std::function<void(float* out)>& run);

// After the timed loop: the ISA as the label, a FLOPS rate counter (reads as FLOP/s) when
// flops > 0, and when bytes > 0 the bytes processed, twice: bytes_per_second (Google
// Benchmark's, printed in GiB/s) and GBps (printed in GB/s, 10^9 bytes, as the peers
// print); all per iteration.
void report(benchmark::State& state, const Target& target, double flops, double bytes);

// attend against the baseline on the same inputs.
struct Agreement {
  double max_abs_diff = 0;
  double tolerance = 0;
  bool ok() const { return max_abs_diff <= tolerance; }  // false for NaN
};

// max |a - b| (NaN if any entry is NaN) against `tolerance`.
Agreement compare(const std::vector<float>& a, const std::vector<float>& b, double tolerance);

// The baseline's output for `key` ("<Kernel>/<shape>"), computed on first use and kept for
// the run: every attend path is compared with the same one.
const std::vector<float>& baseline_output(const std::string& key,
                                          const std::function<std::vector<float>()>& compute);

// Runs `check` (attend on `path` against the baseline) the first time `key`/`path` is
// asked for, logs the verdict to stderr and remembers it: a benchmark called again
// (repetitions, growing iteration counts) is validated once, before its first timing. On
// disagreement calls state.SkipWithError and returns false.
bool validated(benchmark::State& state, const std::string& key, const Target& path,
               const std::function<Agreement()>& check);

// Each bench_<kernel>.cpp registers its benchmarks, attend's and the baseline's side by
// side for every shape, so that the two run under the same conditions.
void register_linear_benchmarks();
void register_kernel_benchmarks();  // scores, softmax, merge_values
void register_attention_benchmarks();
void register_mha_benchmarks();
void register_decode_benchmarks();

}  // namespace attend_bench
