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
// This is the unfused composition scores -> softmax -> merge_values, one head at a time,
// with an [Sq, Sk] score buffer per head.
//
// Aliasing: o and lse may not overlap q, k, v, each other or any array of the options.
// NaN in q, k, v or the bias propagates to exactly the output rows that see it: keys a row
// cannot see never reach it, whatever their K and V rows hold.
#pragma once

#include <algorithm>
#include <vector>

#include "attend/detail/check.hpp"
#include "attend/detail/portable/gemm.hpp"
#include "attend/detail/portable/softmax.hpp"
#include "attend/detail/score_rule.hpp"
#include "attend/options.hpp"
#include "attend/scores.hpp"
#include "attend/view.hpp"

namespace attend {

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
  if (opts.scale) check_scale(c, *opts.scale);
  check_score_options(c, opts, q.batch, q.heads, q.seq, k.seq);
  c.disjoint("o", o, "q", q);
  c.disjoint("o", o, "k", k);
  c.disjoint("o", o, "v", v);
  check_clear_of_options(c, "o", o, opts);
  if (!lse.empty()) {
    c.tensor("lse", lse, {q.batch, q.heads, q.seq, 1});
    c.distinct_elements("lse", lse);
    c.disjoint("lse", lse, "q", q);
    c.disjoint("lse", lse, "k", k);
    c.disjoint("lse", lse, "v", v);
    c.disjoint("lse", lse, "o", o);
    check_clear_of_options(c, "lse", lse, opts);
  }
}

// o_i = sum of p_ij v_j over the keys j row i can see. Hidden keys are skipped rather than
// multiplied by their zero weight, so whatever their V rows hold (NaN, inf) stays out.
template <class T>
void merge_visible(const ScoreRule<acc_t<T>>& rule, MatrixView<const T> p, MatrixView<const T> v,
                   MatrixView<T> o) {
  using Acc = acc_t<T>;
  std::vector<Acc> row(static_cast<std::size_t>(v.cols));
  for (index_t i = 0; i < p.rows; ++i) {
    std::fill(row.begin(), row.end(), Acc(0));
    const KeyRange keys = rule.keys(i);
    for (index_t j = keys.begin; j < std::min(keys.end, p.cols); ++j) {
      if (rule.hidden(i, j)) continue;
      const Acc pij = Acc(p(i, j));
      const T* vj = v.row(j);
      for (index_t d = 0; d < v.cols; ++d) row[d] += pij * Acc(vj[d]);
    }
    T* oi = o.row(i);
    for (index_t d = 0; d < v.cols; ++d) oi[d] = static_cast<T>(row[d]);
  }
}

// The unfused path: per (batch, head), scores over the keys that exist, the masked row
// softmax in place, and the merge with V. Keys past key_lengths[b] are never read.
template <class T>
void unfused_attention(TensorView<const T> q, TensorView<const T> k, TensorView<const T> v,
                       TensorView<T> o, const AttentionOptions& opts, TensorView<T> lse) {
  using Acc = acc_t<T>;
  const index_t group = k.heads ? q.heads / k.heads : 1;
  const Acc scale = Acc(opts.scale.value_or(default_scale(q.dim)));
  std::vector<T> probs(static_cast<std::size_t>(q.seq * k.seq));
  std::vector<Acc> scratch(static_cast<std::size_t>(k.seq));
  for (index_t b = 0; b < q.batch; ++b) {
    const index_t keys = opts.key_lengths.empty() ? k.seq : opts.key_lengths[b];
    for (index_t h = 0; h < q.heads; ++h) {
      const MatrixView<const T> kh = k.head(b, h / group).block(0, keys, 0, k.dim);
      const MatrixView<const T> vh = v.head(b, h / group).block(0, keys, 0, v.dim);
      const MatrixView<T> p(probs.data(), q.seq, keys);
      portable::gemm<T>(q.head(b, h), kh, true, scale, nullptr, false, p);
      const ScoreRule<Acc> rule(opts, b, h, q.seq, k.seq);
      for (index_t i = 0; i < q.seq; ++i) {
        const Acc row_lse =
            portable::softmax_row<T>(rule, i, p.row(i), keys, p.row(i), scratch.data());
        if (!lse.empty()) *lse.row(b, h, i) = static_cast<T>(row_lse);
      }
      merge_visible<T>(rule, p, vh, o.head(b, h));
    }
  }
}

}  // namespace detail

// o = attention(q, k, v) under `opts`; see the top of this file for shapes and rules.
template <class T>
void attention(TensorIn<T> q, TensorIn<T> k, TensorIn<T> v, TensorView<T> o,
               const AttentionOptions& opts = {}, TensorView<T> lse = {}) {
  detail::check_attention<T>(detail::Checker("attention"), q, k, v, o, opts, lse);
  detail::unfused_attention<T>(q, k, v, o, opts, lse);
}

}  // namespace attend
