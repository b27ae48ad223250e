// attend_bench: every kernel of attend at the shapes of shapes.hpp, each next to the naive
// Eigen composition. See bench/RESULTS.md for how to run it and what it measured.

#include <benchmark/benchmark.h>

#include <Eigen/Core>
#include <string>

#include "attend/attend.hpp"
#include "harness.hpp"

int main(int argc, char** argv) {
  using namespace attend_bench;
  register_linear_benchmarks();
  register_kernel_benchmarks();
  register_attention_benchmarks();
  register_mha_benchmarks();
  register_decode_benchmarks();

  benchmark::AddCustomContext("attend_version", std::to_string(ATTEND_VERSION_MAJOR) + "." +
                                                    std::to_string(ATTEND_VERSION_MINOR) + "." +
                                                    std::to_string(ATTEND_VERSION_PATCH));
  std::string paths;
  for (const attend::Isa isa : attend::supported_isas())
    paths += std::string(paths.empty() ? "" : ", ") + attend::name(isa);
  benchmark::AddCustomContext("attend_paths", paths);
  benchmark::AddCustomContext("eigen_simd", Eigen::SimdInstructionSetsInUse());
  benchmark::AddCustomContext("compiler", __VERSION__);

  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
