// Comparisons against the oracle with tolerances derived from the problem.
//
// A float or double implementation of attention carries three kinds of rounding error,
// each bounded by the oracle (reference.hpp) in units of the unit roundoff u:
//   - each logit: slack = (Dk + 2) * scale * sum_d |q_d k_d| + a few |logit|, |bias|, ...
//     (a dot product of Dk terms, then a few more operations), so exp(logit) is off by a
//     relative 2 * slack * u at most;
//   - the softmax sum and the merge each add up Sk terms: (Sk + 4) u relative each;
//   - so o is within o_abs * (2 * slack + 2 * Sk + 8) * u, o_abs = sum_j p_j |v_j|.
// The bounds are worst cases (errors of random data grow like sqrt(n), not n), with a
// factor 2 kept for the few roundings the count leaves out (rounding of p, of the inputs'
// conversion, of exp). A test that passes them says the result is as accurate as its
// arithmetic allows; a bug of any size above rounding fails them.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <sstream>
#include <string>

#include "support/reference.hpp"

namespace ref {

template <class T>
constexpr real unit_roundoff() {
  return real(std::numeric_limits<T>::epsilon()) / 2;
}

// One element: NaN matches NaN, an infinity matches the same infinity, anything else must
// be within tol.
inline bool close(real actual, real expected, real tol) {
  if (std::isnan(expected) || std::isnan(actual)) return std::isnan(expected) && std::isnan(actual);
  if (std::isinf(expected) || std::isinf(actual)) return actual == expected;
  return std::fabs(actual - expected) <= tol;
}

inline std::string where(index_t b, index_t h, index_t s, index_t d) {
  std::ostringstream os;
  os << "[" << b << ", " << h << ", " << s << ", " << d << "]";
  return os.str();
}

// Expects every element of `actual` within tol(b, h, s, d) of `expected`; reports the
// first few misses with their indices and the worst ratio error / tolerance.
template <class T, class Tol>
::testing::AssertionResult all_close(attend::TensorView<const T> actual, const Tensor& expected,
                                     Tol tol) {
  int misses = 0;
  std::ostringstream report;
  for (index_t b = 0; b < expected.b; ++b)
    for (index_t h = 0; h < expected.h; ++h)
      for (index_t s = 0; s < expected.s; ++s)
        for (index_t d = 0; d < expected.d; ++d) {
          const real a = actual.row(b, h, s)[d], e = expected(b, h, s, d), t = tol(b, h, s, d);
          if (close(a, e, t)) continue;
          if (++misses <= 5)
            report << "\n  at " << where(b, h, s, d) << ": got " << double(a) << ", expected "
                   << double(e) << " (error " << double(std::fabs(a - e)) << " > tolerance "
                   << double(t) << ")";
        }
  if (misses == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << misses << " elements out of tolerance" << report.str();
}

// The attention output o against the oracle.
template <class T>
::testing::AssertionResult output_matches(attend::TensorView<const T> o, const Attention& r) {
  const real u = unit_roundoff<T>();
  const real sk_terms = real(2 * r.rows.p.d + 8);
  return all_close<T>(o, r.o, [&](index_t b, index_t h, index_t s, index_t d) {
    const real bound = r.o_abs(b, h, s, d) * (2 * r.slack(b, h, s, 0) + sk_terms) * u;
    return 2 * bound + 2 * real(std::numeric_limits<T>::min());
  });
}

// A log-sum-exp [B, H, Sq, 1]: off by the logit error plus the sum's, relative to 1.
template <class T>
::testing::AssertionResult lse_matches(attend::TensorView<const T> lse, const Rows& r) {
  const real u = unit_roundoff<T>();
  return all_close<T>(lse, r.lse, [&](index_t b, index_t h, index_t s, index_t) {
    const real e = r.lse(b, h, s, 0);
    const real bound = (r.slack(b, h, s, 0) + real(r.p.d + 4) + std::fabs(e)) * u;
    return 2 * bound;
  });
}

// Probabilities [B, H, Sq, Sk]: each within a relative (2 slack + Sk + 4) u; masked
// entries exactly zero.
template <class T>
::testing::AssertionResult probs_match(attend::TensorView<const T> p, const Rows& r) {
  const real u = unit_roundoff<T>();
  return all_close<T>(p, r.p, [&](index_t b, index_t h, index_t s, index_t d) {
    const real e = r.p(b, h, s, d);
    if (e == 0) return real(0);  // masked: exactly zero
    // Beyond the relative bound, room for results that fall below T's normal range.
    return 2 * e * (2 * r.slack(b, h, s, 0) + real(r.p.d + 4)) * u +
           2 * real(std::numeric_limits<T>::min());
  });
}

}  // namespace ref
