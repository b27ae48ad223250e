// Portable masked softmax of one row of scores.
#pragma once

#include "attend/detail/config.hpp"

#include <cmath>
#include <limits>

#include "attend/detail/score_rule.hpp"
#include "attend/detail/types.hpp"

ATTEND_NAMESPACE_BEGIN
namespace detail::portable {

// Probabilities p[0, n) of query row i from its scaled scores s[0, n), under `rule`.
// Only s[j] for j in rule.keys(i) is read; s and p may be the same row (in place), since
// every logit is read into `scratch` (n values) before p is written. Returns the row's
// log-sum-exp, the sink included: p_j = exp(logit_j - lse).
//
// Stability: logits are shifted by their maximum m before exp (so no overflow for any
// finite input). A fully masked row gives p = 0 and lse = -inf. When some logit is +inf
// (a huge scale), m = +inf and those keys share the mass equally instead of producing
// inf - inf. A NaN logit that is not masked (or a NaN sink) makes its whole row NaN.
template <class T>
acc_t<T> softmax_row(const ScoreRule<acc_t<T>>& rule, index_t i, const T* s, index_t n, T* p,
                     acc_t<T>* scratch) {
  using Acc = acc_t<T>;
  constexpr Acc inf = std::numeric_limits<Acc>::infinity();
  const KeyRange keys = rule.keys(i);
  const index_t begin = std::min(keys.begin, n), end = std::min(keys.end, n);

  Acc m = -inf;
  bool has_nan = false;
  for (index_t j = begin; j < end; ++j) {
    const Acc l = rule.logit(i, j, Acc(s[j]));
    scratch[j] = l;
    if (l > m) m = l;  // NaN compares false: tracked separately
    if (std::isnan(l)) has_nan = true;
  }
  const Acc sink = rule.has_sink() ? rule.sink() : -inf;
  if (sink > m) m = sink;
  if (std::isnan(sink)) has_nan = true;  // the sink is never masked: a NaN one poisons the row

  for (index_t j = 0; j < begin; ++j) p[j] = T(0);
  for (index_t j = end; j < n; ++j) p[j] = T(0);
  if (m == -inf) {  // every key masked, or every visible logit -inf: no mass anywhere
    const Acc fill = has_nan ? std::numeric_limits<Acc>::quiet_NaN() : Acc(0);
    for (index_t j = begin; j < end; ++j) p[j] = rule.hidden(i, j) ? T(0) : static_cast<T>(fill);
    return has_nan ? fill : -inf;
  }
  // exp(l - m), reading l == m as exactly 1 so that m = +inf needs no inf - inf.
  auto shifted_exp = [m](Acc l) { return l == m ? Acc(1) : std::exp(l - m); };
  Acc z = rule.has_sink() ? shifted_exp(sink) : Acc(0);
  for (index_t j = begin; j < end; ++j) {
    scratch[j] = shifted_exp(scratch[j]);
    z += scratch[j];
  }
  // Keys the boolean mask hides stay exact zeros even in a row that a NaN made NaN.
  for (index_t j = begin; j < end; ++j)
    p[j] = has_nan && rule.hidden(i, j) ? T(0) : static_cast<T>(scratch[j] / z);
  return m + std::log(z);
}

}  // namespace detail::portable
ATTEND_NAMESPACE_END
