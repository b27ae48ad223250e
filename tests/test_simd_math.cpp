// The vector math of the SIMD paths (detail/simd/avx512.hpp, avx2.hpp, neon.hpp) on every
// path this CPU runs: Vec::exp2's error in ulp over the softmax's arguments [-126, 0],
// pinned so that a less accurate exp2 fails, and its special values; the operations whose
// x86 behaviour the kernels rely on and NEON emulates: loads and stores of the first n
// lanes, which touch no byte past them, and max/min, which pass the second operand on NaN.
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <stdexcept>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "attend/isa.hpp"

#if ATTEND_X86_64
#include "attend/detail/simd/avx2.hpp"
#include "attend/detail/simd/avx512.hpp"
#endif
#if ATTEND_AARCH64
#include "attend/detail/simd/neon.hpp"
#endif

// Each path's operations under test, compiled for that path (in its target region on
// x86): called only where the CPU runs that path. The three namespaces differ in their
// Vec alone.
//   exp2:      y[k] = Vec::exp2(x[k]) for k in [0, n).
//   first_n:   v = Vec::load(x, n); all[0, lanes) = v; Vec::store(some, v, n).
//   max_min:   max[j] = Vec::max(a, b)[j], min[j] = Vec::min(a, b)[j] for j < lanes.
#if ATTEND_X86_64
namespace avx512_math {
ATTEND_BEGIN_TARGET_AVX512
using Vec = attend::detail::avx512::Vec;
void exp2(const float* x, float* y, std::size_t n) {
  std::size_t k = 0;
  for (; k + Vec::lanes <= n; k += Vec::lanes) Vec::store(y + k, Vec::exp2(Vec::load(x + k)));
  if (k < n) Vec::store(y + k, Vec::exp2(Vec::load(x + k, int(n - k))), int(n - k));
}
void first_n(const float* x, int n, float* all, float* some) {
  const Vec::V v = Vec::load(x, n);
  Vec::store(all, v);
  Vec::store(some, v, n);
}
void max_min(const float* a, const float* b, float* max, float* min) {
  Vec::store(max, Vec::max(Vec::load(a), Vec::load(b)));
  Vec::store(min, Vec::min(Vec::load(a), Vec::load(b)));
}
ATTEND_END_TARGET
}  // namespace avx512_math

namespace avx2_math {
ATTEND_BEGIN_TARGET_AVX2
using Vec = attend::detail::avx2::Vec;
void exp2(const float* x, float* y, std::size_t n) {
  std::size_t k = 0;
  for (; k + Vec::lanes <= n; k += Vec::lanes) Vec::store(y + k, Vec::exp2(Vec::load(x + k)));
  if (k < n) Vec::store(y + k, Vec::exp2(Vec::load(x + k, int(n - k))), int(n - k));
}
void first_n(const float* x, int n, float* all, float* some) {
  const Vec::V v = Vec::load(x, n);
  Vec::store(all, v);
  Vec::store(some, v, n);
}
void max_min(const float* a, const float* b, float* max, float* min) {
  Vec::store(max, Vec::max(Vec::load(a), Vec::load(b)));
  Vec::store(min, Vec::min(Vec::load(a), Vec::load(b)));
}
ATTEND_END_TARGET
}  // namespace avx2_math
#endif

#if ATTEND_AARCH64
namespace neon_math {  // Advanced SIMD is baseline on aarch64: no target region
using Vec = attend::detail::neon::Vec;
void exp2(const float* x, float* y, std::size_t n) {
  std::size_t k = 0;
  for (; k + Vec::lanes <= n; k += Vec::lanes) Vec::store(y + k, Vec::exp2(Vec::load(x + k)));
  if (k < n) Vec::store(y + k, Vec::exp2(Vec::load(x + k, int(n - k))), int(n - k));
}
void first_n(const float* x, int n, float* all, float* some) {
  const Vec::V v = Vec::load(x, n);
  Vec::store(all, v);
  Vec::store(some, v, n);
}
void max_min(const float* a, const float* b, float* max, float* min) {
  Vec::store(max, Vec::max(Vec::load(a), Vec::load(b)));
  Vec::store(min, Vec::min(Vec::load(a), Vec::load(b)));
}
}  // namespace neon_math
#endif

namespace {

using attend::Isa;

constexpr float kInf = std::numeric_limits<float>::infinity();

// The bound the comments of Vec::exp2 state: the maximum error on [-126, 0], rounded up.
// An exhaustive sweep of every float in [-1, 0] (which yields every reduced argument f that
// [-126, 0] does, see below) measured 0.9516 ulp on both paths, at x = -0.49600968.
constexpr double kExp2MaxUlp = 1.0;

struct Path {
  Isa isa;
  int lanes;
  void (*exp2)(const float* x, float* y, std::size_t n);
  void (*first_n)(const float* x, int n, float* all, float* some);
  void (*max_min)(const float* a, const float* b, float* max, float* min);
};

// The SIMD paths this CPU runs.
std::vector<Path> simd_paths() {
  std::vector<Path> paths;
#if ATTEND_X86_64
  if (attend::supported(Isa::avx2))
    paths.push_back({Isa::avx2, avx2_math::Vec::lanes, avx2_math::exp2, avx2_math::first_n,
                     avx2_math::max_min});
  if (attend::supported(Isa::avx512))
    paths.push_back({Isa::avx512, avx512_math::Vec::lanes, avx512_math::exp2, avx512_math::first_n,
                     avx512_math::max_min});
#endif
#if ATTEND_AARCH64
  if (attend::supported(Isa::neon))
    paths.push_back({Isa::neon, neon_math::Vec::lanes, neon_math::exp2, neon_math::first_n,
                     neon_math::max_min});
#endif
  return paths;
}

std::vector<float> exp2_of(const Path& path, const std::vector<float>& x) {
  std::vector<float> y(x.size());
  path.exp2(x.data(), y.data(), x.size());
  return y;
}

// |y - 2^x| in units of the last place of a float at 2^x (the spacing of floats in 2^x's
// binade). 2^x in double is within 2^-29 of those units.
double ulp_error(float x, float y) {
  const double exact = std::exp2(double(x));
  int e = 0;
  std::frexp(exact, &e);  // exact in [2^(e-1), 2^e)
  return std::fabs(double(y) - exact) / std::ldexp(1.0, e - std::numeric_limits<float>::digits);
}

// Arguments of the softmax's exp2: [-126, 0], below which results flush to zero. exp2
// splits x = n + f exactly (n an integer, |f| <= 1/2) and scales 2^f by 2^n exactly while
// the result is a normal float, so the error in ulp depends on f alone. The sample covers
// every n and f on a grid, every f within 0.01 of +-1/2 (where the error peaks), and random floats:
// uniform ones, and ones uniform in their bits, which reach the tiny |f| of arguments near 0.
std::vector<float> exp2_sample() {
  std::vector<float> x;
  for (std::int32_t k = -126 * 4096; k <= 0; ++k) x.push_back(std::ldexp(float(k), -12));
  for (float v = -0.51f; v <= -0.49f; v = std::nextafter(v, 0.0f)) x.push_back(v);
  std::mt19937 gen(2024);
  std::uniform_real_distribution<float> uniform(-126.0f, 0.0f);
  for (int k = 0; k < (1 << 21); ++k) x.push_back(uniform(gen));
  std::uniform_int_distribution<std::uint32_t> bits(0x80000000u, 0xBF000000u);  // -0 .. -1/2
  for (int k = 0; k < (1 << 20); ++k) {
    const std::uint32_t b = bits(gen);
    float v;
    std::memcpy(&v, &b, sizeof v);
    x.push_back(v);
  }
  return x;
}

// The paths a build compiles: the portable one, and the SIMD paths of its architecture
// (none with ATTEND_NO_SIMD), of which supported_isas() lists those this CPU runs.
TEST(SimdPaths, EachBuildListsThePathsOfItsArchitecture) {
  const std::vector<Isa> isas = attend::supported_isas();
  ASSERT_FALSE(isas.empty());
  EXPECT_EQ(isas.front(), Isa::portable);
#if ATTEND_AARCH64
  EXPECT_EQ(isas, (std::vector<Isa>{Isa::portable, Isa::neon}));
#elif ATTEND_X86_64
  EXPECT_FALSE(attend::supported(Isa::neon));
#else
  EXPECT_EQ(isas, std::vector<Isa>{Isa::portable});
#endif
  for (Isa isa : {Isa::automatic, Isa::portable, Isa::avx2, Isa::avx512, Isa::neon})
    EXPECT_EQ(attend::parse_isa(attend::name(isa)), isa);
}

class SimdMath : public ::testing::Test {
 protected:
  void SetUp() override {
    if (simd_paths().empty()) GTEST_SKIP() << "this CPU runs no SIMD path";
  }
};

TEST_F(SimdMath, Exp2IsWithinItsStatedUlpBoundOnTheSoftmaxRange) {
  const std::vector<float> x = exp2_sample();
  for (const Path& path : simd_paths()) {
    SCOPED_TRACE(attend::name(path.isa));
    const std::vector<float> y = exp2_of(path, x);
    double worst = 0;
    float worst_x = 0;
    std::size_t not_numbers = 0;
    for (std::size_t k = 0; k < x.size(); ++k) {
      const double err = ulp_error(x[k], y[k]);
      if (std::isnan(err)) ++not_numbers;
      if (err > worst) worst = err, worst_x = x[k];
    }
    std::printf("[ measured ] %s Vec::exp2: max error %.4f ulp at x = %.9g over %zu arguments\n",
                attend::name(path.isa), worst, double(worst_x), x.size());
    EXPECT_EQ(not_numbers, 0u);
    EXPECT_LE(worst, kExp2MaxUlp) << "at x = " << worst_x;
  }
}

TEST_F(SimdMath, Exp2SpecialValues) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float max = std::numeric_limits<float>::max();
  const float lowest = std::numeric_limits<float>::lowest();
  struct Case {
    float x, expected;
  };
  std::vector<Case> cases = {
      {-kInf, 0.0f},
      {0.0f, 1.0f},
      {-0.0f, 1.0f},
      // Below 2^-126 every result flushes to +0: the softmax never multiplies denormals.
      {std::nextafter(-126.0f, -kInf), 0.0f},
      {-126.5f, 0.0f},
      {-127.0f, 0.0f},
      {-149.0f, 0.0f},
      {-1e4f, 0.0f},
      {lowest, 0.0f},
      {-126.0f, std::numeric_limits<float>::min()},
      {128.0f, kInf},
      {128.5f, kInf},
      {1e4f, kInf},
      {max, kInf},
      {kInf, kInf},
  };
  // Integers give their power of two exactly (f = 0, and the polynomial is 1 at 0).
  for (int n = -126; n <= 127; ++n) cases.push_back({float(n), std::ldexp(1.0f, n)});

  for (const Path& path : simd_paths()) {
    SCOPED_TRACE(attend::name(path.isa));
    std::vector<float> x;
    for (const Case& c : cases) x.push_back(c.x);
    x.push_back(nan);
    x.push_back(-nan);
    const std::vector<float> y = exp2_of(path, x);
    for (std::size_t k = 0; k < cases.size(); ++k) {
      EXPECT_EQ(y[k], cases[k].expected) << "exp2(" << cases[k].x << ")";
      EXPECT_FALSE(std::signbit(y[k])) << "exp2(" << cases[k].x << ")";
    }
    EXPECT_TRUE(std::isnan(y[cases.size()]));
    EXPECT_TRUE(std::isnan(y[cases.size() + 1]));
    // Up to 127.5 the result is finite (in the largest binade past 127); from 127.5 the
    // AVX2 path overflows to +inf, where 2^x is within a factor 1.42 of it (see avx2.hpp),
    // and the other paths' results stay finite until 128.
    const std::vector<float> top = exp2_of(path, {127.25f, std::nextafter(127.5f, 0.0f)});
    for (std::size_t k = 0; k < top.size(); ++k) {
      EXPECT_TRUE(std::isfinite(top[k])) << k;
      EXPECT_GE(top[k], std::ldexp(1.0f, 127)) << k;
    }
    const float below_128 = exp2_of(path, {std::nextafter(128.0f, 0.0f)})[0];
    if (path.isa == Isa::avx2)
      EXPECT_EQ(below_128, kInf);
    else
      EXPECT_TRUE(std::isfinite(below_128));
  }
}

// Two pages, the second inaccessible: floats that end at the boundary are the last of
// their buffer, as at the end of a tensor, and touching any byte past them faults.
class GuardedPage {
 public:
  GuardedPage() : size_(std::size_t(sysconf(_SC_PAGESIZE))) {
    void* pages =
        mmap(nullptr, 2 * size_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (pages == MAP_FAILED) throw std::runtime_error("mmap failed");
    base_ = static_cast<char*>(pages);
    if (mprotect(base_ + size_, size_, PROT_NONE) != 0) throw std::runtime_error("mprotect failed");
  }
  GuardedPage(const GuardedPage&) = delete;
  GuardedPage& operator=(const GuardedPage&) = delete;
  ~GuardedPage() { munmap(base_, 2 * size_); }
  // The last n floats before the inaccessible page.
  float* last(int n) const { return reinterpret_cast<float*>(base_ + size_) - n; }

 private:
  std::size_t size_;
  char* base_ = nullptr;
};

std::uint32_t bits_of(float x) {
  std::uint32_t b;
  std::memcpy(&b, &x, sizeof b);
  return b;
}

TEST_F(SimdMath, FirstNLanesTouchNoBytePastThem) {
  const GuardedPage source, target;
  for (const Path& path : simd_paths()) {
    SCOPED_TRACE(attend::name(path.isa));
    for (int n = 0; n <= path.lanes; ++n) {
      SCOPED_TRACE("n = " + std::to_string(n));
      float* x = source.last(n);
      float* some = target.last(n);
      for (int j = 0; j < n; ++j) x[j] = j == 0 ? -0.0f : -1.5f * float(j);
      std::fill(some, some + n, std::numeric_limits<float>::quiet_NaN());
      std::vector<float> all(std::size_t(path.lanes), std::numeric_limits<float>::quiet_NaN());
      path.first_n(x, n, all.data(), some);  // a byte past x or some: SIGSEGV
      for (int j = 0; j < path.lanes; ++j) {
        const std::uint32_t expected = j < n ? bits_of(x[j]) : 0u;  // +0 past n
        EXPECT_EQ(bits_of(all[std::size_t(j)]), expected) << "lane " << j;
        if (j < n) {
          EXPECT_EQ(bits_of(some[j]), expected) << "lane " << j;
        }
      }
    }
  }
}

TEST_F(SimdMath, MaxAndMinPassTheSecondOperandOnNaNAndEqualZeros) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  // (a, b): ordinary pairs, NaN on either side or both (told apart by their sign), zeros
  // of both signs.
  const std::vector<std::pair<float, float>> pairs = {
      {1.0f, 2.0f},   {2.0f, 1.0f},   {-kInf, kInf}, {nan, 1.0f},   {1.0f, nan},
      {nan, -nan},    {-nan, nan},    {kInf, nan},   {0.0f, -0.0f}, {-0.0f, 0.0f},
      {-3.0f, -3.0f}, {-kInf, -kInf}, {nan, -kInf},  {-kInf, -nan}, {5.0f, -7.0f}};
  for (const Path& path : simd_paths()) {
    SCOPED_TRACE(attend::name(path.isa));
    const std::size_t lanes = std::size_t(path.lanes);
    // Every pair in every lane.
    for (std::size_t start = 0; start < pairs.size(); ++start) {
      std::vector<float> a(lanes), b(lanes), max(lanes), min(lanes);
      for (std::size_t j = 0; j < lanes; ++j)
        std::tie(a[j], b[j]) = pairs[(start + j) % pairs.size()];
      path.max_min(a.data(), b.data(), max.data(), min.data());
      for (std::size_t j = 0; j < lanes; ++j) {
        SCOPED_TRACE("a = " + std::to_string(a[j]) + ", b = " + std::to_string(b[j]));
        EXPECT_EQ(bits_of(max[j]), bits_of(a[j] > b[j] ? a[j] : b[j]));
        EXPECT_EQ(bits_of(min[j]), bits_of(a[j] < b[j] ? a[j] : b[j]));
      }
    }
  }
}

}  // namespace
