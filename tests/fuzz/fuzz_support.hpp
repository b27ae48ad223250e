// Shared pieces of the libFuzzer targets (tests/fuzz/fuzz_*.cpp): a case decoded from the
// fuzzer's bytes, element values that include the special ones, and checks that stop the
// run with an explanation.
//
// Decoding. FuzzedDataProvider takes integers from the end of the input and raw bytes from
// the front. A target first builds its Values source, which decodes the range and the rate
// of special values (the last bytes of the input, so that even short inputs vary them),
// then decodes its whole structure (shapes, strides, options, path, whether the call is
// deliberately invalid) with Case::pick and friends, and last calls Values::take_pool,
// which takes the remaining bytes as the pool the element values come from. A short input
// is still a whole case: integers past the end decode as their minimum, and values past
// the pool come from a generator seeded by the pool.
//
// Failures. Every check prints what failed and the decoded case (all of it: shapes, strides,
// options, path), then traps, which libFuzzer reports as a crash and saves the input. The
// comparisons reuse tests/support/tolerance.hpp, whose helpers return
// ::testing::AssertionResult (no gtest macros): Case::check turns a failed one into a trap.
#pragma once

#include <fuzzer/FuzzedDataProvider.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "attend/context.hpp"
#include "attend/isa.hpp"
#include "attend/view.hpp"
#include "support/buffers.hpp"
#include "support/checks.hpp"
#include "support/reference.hpp"
#include "support/tolerance.hpp"

#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#include <sanitizer/asan_interface.h>
#define ATTEND_FUZZ_ASAN 1
#endif
#endif

namespace fuzz {

using attend::index_t;
using testing_support::Layout;
using testing_support::TensorBuffer;

// Bitwise equality of two buffers.
template <class T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() &&
         (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
}

// One input of one target: the decoder, and the record of everything decoded so far.
class Case {
 public:
  Case(const char* target, const std::uint8_t* data, std::size_t size)
      : target_(target), in_(data, size) {}
  // ATTEND_FUZZ_PRINT=1 prints every case as it finishes (to see what a corpus covers).
  ~Case() {
    static const bool print = std::getenv("ATTEND_FUZZ_PRINT") != nullptr;
    if (print) std::fprintf(stderr, "%s: %s\n", target_, record_.c_str());
  }
  Case(const Case&) = delete;
  Case& operator=(const Case&) = delete;

  // An integer in [lo, hi], recorded as `name=value`.
  template <class I>
  I pick(const char* name, I lo, I hi) {
    const I v = in_.ConsumeIntegralInRange<I>(lo, hi);
    note(name, std::to_string(v));
    return v;
  }
  // An extent: 0 one time in eight, else in [1, small] or, one time in four, [1, max]; so
  // that most cases stay cheap and the large ones still come up.
  index_t extent(const char* name, index_t small, index_t max) {
    const int kind = in_.ConsumeIntegralInRange<int>(0, 7);
    return kind == 0 ? pick<index_t>(name, 0, 0) : pick<index_t>(name, 1, kind <= 2 ? max : small);
  }
  // Halves the largest of `extents` until cost() is at most `budget` (keeping every input
  // fast), and records the extents if that changed them.
  template <class Cost>
  void fit(index_t budget, std::initializer_list<std::pair<const char*, index_t*>> extents,
           Cost cost) {
    if (cost() <= budget) return;
    while (cost() > budget) {
      index_t* largest = extents.begin()->second;
      for (const auto& e : extents)
        if (*e.second > *largest) largest = e.second;
      *largest /= 2;
    }
    for (const auto& e : extents) note(std::string("fit.") + e.first, std::to_string(*e.second));
  }
  // True one time in n, recorded as `name` when true.
  bool one_in(int n, const char* name) {
    const bool v = in_.ConsumeIntegralInRange<int>(0, n - 1) == 0;
    if (v) note(name, "1");
    return v;
  }
  bool flag(const char* name) {
    const bool v = in_.ConsumeBool();
    if (v) note(name, "1");
    return v;
  }
  // One of `options`, each with the name it prints as.
  template <class E, std::size_t N>
  E choose(const char* name, const std::pair<E, const char*> (&options)[N]) {
    const auto& o = options[in_.ConsumeIntegralInRange<std::size_t>(0, N - 1)];
    note(name, o.second);
    return o.first;
  }
  // The instruction-set path: one of those this CPU runs.
  attend::Isa isa() {
    const std::vector<attend::Isa> isas = attend::supported_isas();
    const attend::Isa isa = isas[in_.ConsumeIntegralInRange<std::size_t>(0, isas.size() - 1)];
    note("isa", attend::name(isa));
    return isa;
  }

  void note(const std::string& name, const std::string& value) {
    record_ += (record_.empty() ? "" : " ") + name + "=" + value;
  }
  FuzzedDataProvider& provider() { return in_; }

  [[noreturn]] void fail(const std::string& what) const {
    std::fprintf(stderr, "\n%s: FAILED: %s\n  case: %s\n", target_, what.c_str(), record_.c_str());
    std::fflush(stderr);
    __builtin_trap();
  }
  void check(bool ok, const std::string& what) const {
    if (!ok) fail(what);
  }
  void check(const ::testing::AssertionResult& r, const std::string& what) const {
    if (!r) fail(what + ": " + r.message());
  }

  // Runs a call the case made valid: it must not throw.
  template <class Call>
  void valid(const char* what, Call&& call) const {
    try {
      call();
    } catch (const std::exception& e) {
      fail(std::string(what) + ": a valid call threw: " + e.what());
    }
  }
  // Runs a call the case made invalid: it must throw std::invalid_argument whose message
  // starts "attend::<function>: <argument>: ", with every storage in `watched` bitwise
  // unchanged (attend checks all arguments before it writes anything: detail/check.hpp).
  template <class Call, class... Storage>
  void rejected(const char* function, const std::string& argument, Call&& call,
                const std::vector<Storage>&... watched) const {
    const auto before = std::make_tuple(watched...);
    const std::string prefix = std::string("attend::") + function + ": " + argument + ": ";
    const std::string what = std::string("invalid call of ") + function + " (" + argument + ")";
    try {
      call();
    } catch (const std::invalid_argument& e) {
      const std::string message = e.what();
      check(message.rfind(prefix, 0) == 0,
            what + ": the message \"" + message + "\" does not start \"" + prefix + "\"");
      const bool unchanged = std::apply(
          [&](const auto&... snapshot) { return (same_bits(snapshot, watched) && ...); }, before);
      check(unchanged, what + ": refused with \"" + message + "\", but a buffer changed");
      return;
    } catch (const std::exception& e) {
      fail(what + ": threw something other than std::invalid_argument: " + e.what());
    }
    fail(what + ": no exception");
  }

 private:
  const char* target_;
  FuzzedDataProvider in_;
  std::string record_;
};

// Element values. Most are uniform in [-range, range] on a grid of 2^16 steps; a fraction
// `rate` are the values kernels get wrong: NaN, +-inf, +-1e30 (finite, but its products
// overflow float), subnormals and signed zeros.
class Values {
 public:
  // Decodes the range and the rate of special values.
  explicit Values(Case& c) {
    range_ = c.choose<double>("range", {{1.0, "1"}, {8.0, "8"}, {100.0, "100"}, {1e4, "1e4"}});
    // Out of 256: none (half of all cases: most comparisons see only finite values), 1, 8, 64.
    rate_ = c.choose<unsigned>("specials",
                               {{0, "0"}, {0, "0"}, {1, "1/256"}, {8, "8/256"}, {64, "64/256"}});
  }
  // Takes every byte left as the pool: call it once the rest of the case is decoded.
  void take_pool(Case& c) {
    pool_ = c.provider().ConsumeRemainingBytes<std::uint8_t>();
    for (std::uint8_t b : pool_) seed_ = seed_ * 131 + b;
  }

  template <class T>
  T next() {
    const std::uint32_t w = word(count_++);
    if ((w >> 24) < rate_) return special<T>((w >> 16) & 0xff);
    return T(range_ * (double(w & 0xffff) / 32767.5 - 1.0));
  }
  // A raw 32-bit word, for decisions drawn per element (mask bits).
  std::uint32_t bits() { return word(count_++); }
  template <class T>
  void fill(TensorBuffer<T>& t) {
    t.for_each([&](T& x) { x = next<T>(); });
  }
  template <class T>
  std::vector<T> vector(index_t n) {
    std::vector<T> v(static_cast<std::size_t>(n));
    for (T& x : v) x = next<T>();
    return v;
  }

  template <class T>
  static T special(unsigned which) {
    using L = std::numeric_limits<T>;
    const T table[] = {L::quiet_NaN(),  L::infinity(),           -L::infinity(), T(1e30), T(-1e30),
                       L::denorm_min(), T(-3) * L::denorm_min(), L::min() / 2,   T(0),    -T(0)};
    return table[which % (sizeof(table) / sizeof(table[0]))];
  }

 private:
  // Four bytes of the pool, then splitmix64 of the pool's hash once it runs out.
  std::uint32_t word(std::size_t i) const {
    if (4 * i + 3 < pool_.size())
      return std::uint32_t(pool_[4 * i]) | std::uint32_t(pool_[4 * i + 1]) << 8 |
             std::uint32_t(pool_[4 * i + 2]) << 16 | std::uint32_t(pool_[4 * i + 3]) << 24;
    std::uint64_t z = seed_ + 0x9e3779b97f4a7c15ull * (i + 1);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return std::uint32_t((z ^ (z >> 31)) >> 32);
  }

  double range_ = 1;
  unsigned rate_ = 0;
  std::vector<std::uint8_t> pool_;
  std::uint64_t seed_ = 0;
  std::size_t count_ = 0;
};

// The layout of one tensor: BHSD or BSHD, the padding of each row (seq stride - dim), and
// for an input, whether all batches share one tensor (batch stride 0, which the checks
// allow on inputs).
struct TensorLayout {
  Layout layout = Layout::bhsd;
  index_t pad = 0;
  bool shared_batch = false;
};

inline TensorLayout decode_layout(Case& c, const std::string& name, bool input) {
  TensorLayout l;
  l.layout = c.choose<Layout>((name + ".layout").c_str(),
                              {{Layout::bhsd, "bhsd"}, {Layout::bshd, "bshd"}});
  l.pad = c.pick<index_t>((name + ".pad").c_str(), 0, 5);
  if (input) l.shared_batch = c.flag((name + ".shared_batch").c_str());
  return l;
}

// A [b, h, s, d] tensor in a canary-guarded buffer (tests/support/buffers.hpp) laid out as
// `l` says; a shared batch is one [1, h, s, d] buffer viewed with batch stride 0.
template <class T>
std::unique_ptr<TensorBuffer<T>> make_tensor(index_t b, index_t h, index_t s, index_t d,
                                             const TensorLayout& l) {
  auto t = std::make_unique<TensorBuffer<T>>(l.shared_batch ? std::min<index_t>(b, 1) : b, h, s, d,
                                             l.layout, l.pad);
  if (l.shared_batch) t->view.batch = b, t->view.batch_stride = 0;
  return t;
}

// A boolean mask [b, h, s, d], dense. (TensorBuffer<bool> would be a std::vector<bool>.)
struct MaskBuffer {
  std::unique_ptr<bool[]> storage;
  attend::TensorView<bool> view;

  MaskBuffer(index_t b, index_t h, index_t s, index_t d)
      : storage(new bool[std::size_t(b * h * s * d + 1)]()),
        view(attend::TensorView<bool>::bhsd(storage.get(), b, h, s, d)) {}
};

// The largest finite magnitude a case may produce in T and still be compared with the
// oracle: intermediates past it could overflow T where the oracle's long double does not.
// A quarter of T's range leaves room for the few roundings and sums a bound leaves out.
template <class T>
ref::real finite_limit() {
  return ref::real(std::numeric_limits<T>::max()) / 4;
}
// |x| if finite, else 0: the finite part of a magnitude bound (infinite and NaN operands
// combine the same way in any order and precision, so only finite ones can overflow).
inline ref::real finite_abs(ref::real x) {
  return std::isfinite(x) ? std::fabs(x) : 0;
}

// Whether T's weights in row (b, h, i) of the oracle's softmax `r` follow the oracle's
// within tolerance.hpp's bounds. Those bound each weight's relative error by a multiple of
// the error of a logit difference, delta = 2 slack u: the linearisation of exp(delta) - 1,
// good while delta stays under 1. Past that (logits near 1e30 leave T no digits for their
// gaps), T may weigh alike any two entries within delta of each other that long double
// tells apart, by any factor, even where long double's weight underflows to 0. Such a row
// is predictable only when one entry (a key or the sink, of logit `sink`, -inf for none)
// leads every other by more than delta + ln(1 / min<T>) + 1: T then weighs the others
// under its smallest normal, as the oracle does, and `trailing(j)` is called for each such
// key of finite logit (its value row must then be small: the bounds allow 2 min<T> in all).
// A NaN or +inf entry decides the weights exactly in any precision.
template <class T, class Visible, class Trailing>
bool weights_predictable(const ref::Rows& r, index_t b, index_t h, index_t i, ref::real sink,
                         Visible visible, Trailing trailing) {
  const ref::real delta = 2 * r.slack(b, h, i, 0) * ref::unit_roundoff<T>();
  if (!(delta > 1)) return true;
  const index_t Sk = r.logit.d;
  ref::real top = sink;
  for (index_t j = 0; j < Sk; ++j) {
    const ref::real l = r.logit(b, h, i, j);
    if (!visible(j)) continue;
    if (std::isnan(l) || l == std::numeric_limits<ref::real>::infinity()) return true;
    top = std::max(top, l);
  }
  if (std::isnan(sink) || std::isinf(top)) return true;  // a +inf sink, or nothing finite
  const ref::real lead = delta + std::log(1 / ref::real(std::numeric_limits<T>::min())) + 1;
  int contenders = top - sink <= lead ? 1 : 0;
  for (index_t j = 0; j < Sk; ++j) {
    const ref::real l = r.logit(b, h, i, j);
    if (!visible(j) || l == -std::numeric_limits<ref::real>::infinity()) continue;
    if (top - l <= lead)
      ++contenders;
    else
      trailing(j);
  }
  return contenders == 1;
}

// Marks [p, p + n) as unreadable under AddressSanitizer (a no-op without it), so that a
// kernel reading memory it promised not to read crashes there; unpoison() undoes it.
template <class T>
void poison(const T* p, index_t n) {
#ifdef ATTEND_FUZZ_ASAN
  __asan_poison_memory_region(p, std::size_t(n) * sizeof(T));
#else
  (void)p, (void)n;
#endif
}
template <class T>
void unpoison(const T* p, index_t n) {
#ifdef ATTEND_FUZZ_ASAN
  __asan_unpoison_memory_region(p, std::size_t(n) * sizeof(T));
#else
  (void)p, (void)n;
#endif
}

// Bitwise equality of two results, reading any two NaNs as equal (a NaN's payload is not
// part of any result).
template <class T>
bool same_results(const std::vector<T>& a, const std::vector<T>& b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (std::isnan(a[i]) && std::isnan(b[i])) continue;
    if (std::memcmp(&a[i], &b[i], sizeof(T)) != 0) return false;
  }
  return true;
}

// A pool of three threads shared by every input: calls that ask for it must give the bits
// of the serial run (context.hpp: results are bit-identical for any executor).
inline const attend::Executor& pool() {
  static const attend::ThreadPool threads(3);
  return threads;
}

}  // namespace fuzz
