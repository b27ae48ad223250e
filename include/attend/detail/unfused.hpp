// The unfused attention path: scores, masked softmax and the V merge, one head at a time.
// The portable path of attention(), and the readable reference of what every fused kernel
// computes.
#pragma once

#include "attend/detail/config.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "attend/context.hpp"
#include "attend/detail/portable/gemm.hpp"
#include "attend/detail/portable/softmax.hpp"
#include "attend/detail/score_rule.hpp"
#include "attend/options.hpp"
#include "attend/view.hpp"

ATTEND_NAMESPACE_BEGIN
namespace detail {

// o_i = sum of p_ij v_j over the keys j row i can see. Hidden keys are skipped rather than
// multiplied by their zero weight, so whatever their V rows hold (NaN, inf) stays out. A row
// with no mass (lse[i] = -inf: every visible logit -inf, as an additive -inf mask gives) is
// fully masked too, and gets zeros; a row with a NaN denominator (lse[i] NaN: a NaN logit or
// sink) is NaN, keys or none. Row i of p, lse and o is query row first + i of the rule.
template <class T>
void merge_visible(const ScoreRule<acc_t<T>>& rule, MatrixView<const T> p, const acc_t<T>* lse,
                   MatrixView<const T> v, MatrixView<T> o, index_t first = 0) {
  using Acc = acc_t<T>;
  std::vector<Acc> row(static_cast<std::size_t>(v.cols));
  for (index_t i = 0; i < p.rows; ++i) {
    std::fill(row.begin(), row.end(), Acc(0));
    const KeyRange keys = rule.keys(first + i);
    if (std::isnan(lse[i])) std::fill(row.begin(), row.end(), lse[i]);
    const bool empty = lse[i] == -std::numeric_limits<Acc>::infinity() || std::isnan(lse[i]);
    for (index_t j = keys.begin; j < std::min(keys.end, p.cols) && !empty; ++j) {
      if (rule.hidden(first + i, j)) continue;
      const Acc pij = Acc(p(i, j));
      const T* vj = v.row(j);
      for (index_t d = 0; d < v.cols; ++d) row[d] += pij * Acc(vj[d]);
    }
    T* oi = o.row(i);
    for (index_t d = 0; d < v.cols; ++d) oi[d] = static_cast<T>(row[d]);
  }
}

// The unfused path for one (batch b, query head h): scores over the keys that exist, the
// masked row softmax in place, and the merge with V. Keys past key_lengths[b] are never
// read. `probs` holds [Sq, Sk] values, `scratch` Sk + Sq.
template <class T>
void unfused_head(TensorView<const T> q, TensorView<const T> k, TensorView<const T> v,
                  TensorView<T> o, const AttentionOptions& opts, TensorView<T> lse, index_t b,
                  index_t h, T* probs, acc_t<T>* scratch) {
  using Acc = acc_t<T>;
  const index_t group = q.heads / k.heads;
  const Acc scale = Acc(opts.scale.value_or(default_scale(q.dim)));
  const index_t keys = opts.key_lengths.empty() ? k.seq : opts.key_lengths[b];
  const MatrixView<const T> kh = k.head(b, h / group).block(0, keys, 0, k.dim);
  const MatrixView<const T> vh = v.head(b, h / group).block(0, keys, 0, v.dim);
  const MatrixView<T> p(probs, q.seq, keys);
  portable::gemm<T>(q.head(b, h), kh, true, scale, nullptr, false, p);
  const ScoreRule<Acc> rule(opts, b, h, q.seq, k.seq);
  Acc* row_lse = scratch + keys;
  for (index_t i = 0; i < q.seq; ++i) {
    row_lse[i] = portable::softmax_row<T>(rule, i, p.row(i), keys, p.row(i), scratch);
    if (!lse.empty()) *lse.row(b, h, i) = static_cast<T>(row_lse[i]);
  }
  merge_visible<T>(rule, p, row_lse, vh, o.head(b, h));
}

// Every (batch, head) pair as one task of `executor`.
template <class T>
void unfused_attention(TensorView<const T> q, TensorView<const T> k, TensorView<const T> v,
                       TensorView<T> o, const AttentionOptions& opts, TensorView<T> lse,
                       const Executor& executor) {
  if (q.heads == 0) return;
  executor.parallel_for(q.batch * q.heads, [&](index_t task) {
    std::vector<T> probs(static_cast<std::size_t>(q.seq * k.seq));
    std::vector<acc_t<T>> scratch(static_cast<std::size_t>(k.seq + q.seq));
    unfused_head<T>(q, k, v, o, opts, lse, task / q.heads, task % q.heads, probs.data(),
                    scratch.data());
  });
}

// The portable decode path: for each query batch b, the keys and values of its cache
// sequence are copied out of the cache (contiguous or paged, through `kv`: see
// kv_cache.hpp) into dense [kv_heads, L, d] buffers, and each query head runs unfused_head
// on them. opts.key_lengths holds each query batch's key count L; sk is the logical key
// extent of the bias and mask.
template <class T, class Source>
void unfused_decode(TensorView<const T> q, const Source& kv, index_t kv_heads, index_t dv,
                    const std::int32_t* sequence, const AttentionOptions& opts, index_t sk,
                    TensorView<T> o, TensorView<T> lse, const Executor& executor) {
  if (q.heads == 0) return;
  const index_t dk = q.dim;
  executor.parallel_for(q.batch, [&](index_t b) {
    const index_t s = sequence ? sequence[b] : b;
    const index_t keys = opts.key_lengths.empty() ? sk : opts.key_lengths[b];
    std::vector<T> kbuf(std::size_t(kv_heads * keys * dk)), vbuf(std::size_t(kv_heads * keys * dv));
    for (index_t g = 0; g < kv_heads; ++g)
      for (index_t j = 0; j < keys; ++j) {
        std::copy_n(kv.k_row(s, g, j), dk, kbuf.data() + (g * keys + j) * dk);
        std::copy_n(kv.v_row(s, g, j), dv, vbuf.data() + (g * keys + j) * dv);
      }
    // Batch stride 0: every batch index reads this sequence's keys.
    const TensorView<const T> k(kbuf.data(), q.batch, kv_heads, keys, dk, 0, keys * dk, dk);
    const TensorView<const T> v(vbuf.data(), q.batch, kv_heads, keys, dv, 0, keys * dv, dv);
    std::vector<T> probs(std::size_t(q.seq * keys));
    std::vector<acc_t<T>> scratch(static_cast<std::size_t>(keys + q.seq));
    for (index_t h = 0; h < q.heads; ++h)
      unfused_head<T>(q, k, v, o, opts, lse, b, h, probs.data(), scratch.data());
  });
}

}  // namespace detail
ATTEND_NAMESPACE_END
