// Scaled dot-product attention for all batches and heads in one call:
//
//   O = softmax(scale * Q K^T, masked and modified by the options) V
//
// Each query row asks "which keys match me?" (the scores), turns the answer into weights
// that sum to one (the softmax), and returns the weighted mix of the value rows.
//
// Shapes (any strides, BHSD or BSHD; see TensorView):
//   q [B, Hq, Sq, Dk]   k [B, Hkv, Sk, Dk]   v [B, Hkv, Sk, Dv]   o [B, Hq, Sq, Dv]
//   lse (optional) [B, Hq, Sq, 1]: each row's log-sum-exp, for merging partial results.
// Hq must be a multiple of Hkv (grouped-query attention; Hkv = 1 is multi-query): query
// head h reads key/value head h / (Hq / Hkv), with no copies.
//
// The SIMD paths run a fused kernel (FlashAttention-2's tiled online softmax, Dao 2023)
// that never forms the [Sq, Sk] scores; the portable path runs the unfused composition
// scores -> softmax -> merge_values of detail/unfused.hpp, one head at a time. Both give
// the same results to rounding.
//
// Aliasing: o and lse may not overlap q, k, v, each other or any array of the options.
// NaN in q, k, v or the bias propagates to exactly the output rows that see it: keys a row
// cannot see never reach it, whatever their K and V rows hold. Without a sink, a row whose
// every visible logit is -inf is fully masked (zeros, LSE -inf); a NaN sink makes its
// head's rows NaN.
#pragma once

#include "attend/detail/config.hpp"

#include <algorithm>
#include <vector>

#include "attend/context.hpp"
#include "attend/detail/check.hpp"
#include "attend/detail/dispatch.hpp"
#include "attend/detail/score_rule.hpp"
#include "attend/detail/with_probs.hpp"
#include "attend/options.hpp"
#include "attend/scores.hpp"
#include "attend/view.hpp"

ATTEND_NAMESPACE_BEGIN

namespace detail {

template <class T>
void check_attention(const Checker& c, TensorView<const T> q, TensorView<const T> k,
                     TensorView<const T> v, TensorView<T> o, const AttentionOptions& opts,
                     TensorView<T> lse) {
  c.tensor("q", q, {any, any, any, any});
  c.tensor("k", k, {q.batch, any, any, q.dim});
  check_head_groups(c, q.heads, k.heads, "k");
  c.tensor("v", v, {q.batch, k.heads, k.seq, any});
  c.tensor("o", o, {q.batch, q.heads, q.seq, v.dim});
  c.distinct_elements("o", o);
  if (opts.scale) check_scale(c, *opts.scale, kMaxFactor);
  check_score_options(c, opts, q.batch, q.heads, q.seq, k.seq);
  c.disjoint("o", o, "q", q);
  c.disjoint("o", o, "k", k);
  c.disjoint("o", o, "v", v);
  check_clear_of_options(c, "o", o, opts);
  if (given(lse)) {
    c.tensor("lse", lse, {q.batch, q.heads, q.seq, 1});
    c.distinct_elements("lse", lse);
    c.disjoint("lse", lse, "q", q);
    c.disjoint("lse", lse, "k", k);
    c.disjoint("lse", lse, "v", v);
    c.disjoint("lse", lse, "o", o);
    check_clear_of_options(c, "lse", lse, opts);
  }
}

}  // namespace detail

// o = attention(q, k, v) under `opts`; see the top of this file for shapes and rules.
template <class T>
void attention(TensorIn<T> q, TensorIn<T> k, TensorIn<T> v, TensorView<T> o,
               const AttentionOptions& opts = {}, TensorView<T> lse = {}, const Context& ctx = {}) {
  const detail::Checker c("attention");
  detail::check_attention<T>(c, q, k, v, o, opts, lse);
  detail::attention<T>(c.isa(ctx), detail::executor_of(ctx), q, k, v, o, opts, lse);
}

// attention() that also writes the probabilities, probs [B, Hq, Sq, Sk]: row i of head h
// holds the weights with which o's row mixes the value rows, the softmax of its logits,
// zeros for the keys it cannot see. For users who need the weights (to inspect them, or
// for a backward pass). o and lse are those of attention() to rounding (the arithmetic
// is the unfused composition's: scores, softmax, merge, each with the path's kernels).
// It writes Sq x Sk values per head where attention() writes none, so it is slower; it
// computes only the keys each block of rows can see, so causal prefill costs about half
// the full products. probs may not overlap q, k, v, o, lse or the options' arrays.
template <class T>
void attention_with_probs(TensorIn<T> q, TensorIn<T> k, TensorIn<T> v, TensorView<T> o,
                          TensorView<T> probs, const AttentionOptions& opts = {},
                          TensorView<T> lse = {}, const Context& ctx = {}) {
  const detail::Checker c("attention_with_probs");
  detail::check_attention<T>(c, q, k, v, o, opts, lse);
  c.tensor("probs", probs, {q.batch, q.heads, q.seq, k.seq});
  c.distinct_elements("probs", probs);
  c.disjoint("probs", probs, "q", q);
  c.disjoint("probs", probs, "k", k);
  c.disjoint("probs", probs, "v", v);
  c.disjoint("probs", probs, "o", o);
  if (detail::given(lse)) c.disjoint("probs", probs, "lse", lse);
  detail::check_clear_of_options(c, "probs", probs, opts);
  detail::attention_with_probs<T>(c.isa(ctx), detail::executor_of(ctx), q, k, v, o, probs, opts,
                                  lse);
}

ATTEND_NAMESPACE_END
