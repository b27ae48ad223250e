// How far attend and the Eigen baseline may differ: tolerances derived from the problem's
// sizes, the data's magnitudes and float's unit roundoff u = 2^-24, never picked by hand.
//
// Model: probabilistic rounding-error analysis (Higham and Mary, "A New Approach to
// Probabilistic Rounding Error Analysis", SIAM J. Sci. Comput. 41(5), 2019). A K-term
// float dot product lands within lambda * sqrt(K) * u * sum_k |a_k b_k| of the exact one
// with probability at least 1 - 2K exp(-lambda^2 / 2), whatever the summation order; the
// worst-case bound K * u * sum |a b| is far too loose to catch anything. sum |a b| is
// estimated from the data as K * rms(a) * rms(b).
//
// attend and Eigen each carry such an error from the exact result, in different orders,
// so the tolerance on their difference is twice one side's error.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>

#include "shapes.hpp"

namespace attend_bench {

inline constexpr double unit_roundoff = std::numeric_limits<float>::epsilon() / 2;
// Confidence multiplier of the probabilistic bound: 1 - 2K exp(-12.5) for K terms.
inline constexpr double lambda = 5.0;
// exp as implemented by libm (attend) or Eigen's vectorised polynomial, plus the shift by
// the row maximum before it: a few ulps of relative error per probability.
inline constexpr double exp_ulps = 4.0;

struct Magnitude {
  double max_abs = 0;
  double rms = 0;
};

inline Magnitude magnitude(const float* x, std::size_t n) {
  Magnitude m;
  double sum_squares = 0;
  for (std::size_t i = 0; i < n; ++i) {
    m.max_abs = std::max(m.max_abs, double(std::fabs(x[i])));
    sum_squares += double(x[i]) * x[i];
  }
  m.rms = n ? std::sqrt(sum_squares / double(n)) : 0.0;
  return m;
}

// One side's rounding error in a K-term dot product with sum_k |a_k b_k| = sum_abs.
inline double dot_error(index_t k, double sum_abs) {
  return lambda * std::sqrt(double(k)) * unit_roundoff * sum_abs;
}

// One side's rounding error in an entry of a [*, K] x [K, *] product of data a and b.
inline double product_error(index_t k, Magnitude a, Magnitude b) {
  return dot_error(k, double(k) * a.rms * b.rms);
}

// How errors of at most `input_error` in each of K inputs move a K-term dot product with
// partners of magnitude `partner`. input_error is already a high-probability bound, so
// the sum is taken at its typical sqrt(K) growth (independent signs), without a second
// lambda: confidence factors compounded at every stage of a block would bury any bug.
inline double propagated_error(index_t k, double input_error, Magnitude partner) {
  return std::sqrt(double(k)) * input_error * partner.rms;
}

// Relative error of one softmax probability over n keys: exp, the n-term normaliser, the
// division.
inline double softmax_relative_error(index_t n) {
  return (exp_ulps + 1 + lambda * std::sqrt(double(n))) * unit_roundoff;
}

// One side's error in an attention output entry, for inputs that may already carry errors
// (q_error, ...) from an earlier stage; zero errors for inputs both sides share.
struct AttentionInputs {
  Magnitude q, k, v;
  double q_error = 0, k_error = 0, v_error = 0;
};

inline double attention_error(const AttentionShape& s, const AttentionInputs& in) {
  const index_t d = s.head_dim;
  // The logit scale * <q, k> and its error.
  const double logit =
      s.scale() * (product_error(d, in.q, in.k) + propagated_error(d, in.q_error, in.k) +
                   propagated_error(d, in.k_error, in.q));
  // A logit off by delta, and the log-normaliser off by at most delta too, move each
  // probability by a factor within exp(+-2 delta).
  const double prob = 2 * logit + softmax_relative_error(s.kv_len);
  // o = sum_j p_j v_j with sum_j p_j = 1: each error term is weighted by at most max |v|.
  return in.v.max_abs * prob + dot_error(s.kv_len, in.v.max_abs) + in.v_error;
}

}  // namespace attend_bench
