// bench/ab: two revisions of attend in one process, called in alternation (ab.sh builds
// it). This machine's timings drift by up to 40% between runs of the same binary, and
// within a run the drift reaches both sides of an alternation alike; so an A/B of two
// builds in separate processes says little, and one in a single process reads changes of a
// few percent. This header is what main.cpp and the two copies of side.cpp share; it names
// nothing of attend, whose two copies live in different ABI namespaces.
#pragma once

#include <memory>
#include <string>
#include <vector>

namespace ab {

// What to time: a kernel on a benchmark shape (bench/shapes.hpp, bench/decode_data.hpp).
struct Case {
  // "attention" (P1, P2, E1), "decode" (D1, D2, DL, DR, DC) or "linear" (PR1, GEMM4096,
  // PD1, PD16, PD64)
  std::string kernel;
  std::string shape;
  std::string isa = "avx512";        // a path this CPU runs: avx512, avx2, portable
  int threads = 1;                   // 1: the calling thread; more: an attend::ThreadPool
  std::string cache = "contiguous";  // decode: contiguous, paged or token_major
  // linear: W as it is ([N, K], packed by each call), in_out (stored [K, N]) or packed (an
  // attend::PackedWeight made before timing)
  std::string weight = "as_is";
};

// One prepared call: inputs made and output allocated, so run() is the call alone.
class Runner {
 public:
  virtual ~Runner() = default;
  virtual void run() = 0;
  virtual const std::vector<float>& output() const = 0;

  double work = 0;        // per call: FLOP for attention and linear, bytes of K and V for decode
  const char* unit = "";  // the rate work gives: "GFLOP/s" or "GB/s" (10^9)
};

}  // namespace ab

// Each side's factory; throws std::invalid_argument naming what it does not know.
namespace ab_old {
std::unique_ptr<ab::Runner> make(const ab::Case& c);
}
namespace ab_new {
std::unique_ptr<ab::Runner> make(const ab::Case& c);
}
