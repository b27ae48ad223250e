// attention_with_probs on every path: the unfused composition of unfused.hpp (scores ->
// masked softmax -> merge with V), run with the path's GEMM and softmax kernels, and with
// the probabilities written out.
//
// Work. A task is kProbRows query rows of one (batch, head). It computes the scores of
// only the keys its rows can see, [kb, ke), the union of their key ranges (for causal
// prefill about half of Sq x Sk: a block of rows [i0, i1) stops at key i1), turns them
// into probabilities in place in the output, and multiplies that [rows, ke - kb] block
// by V[kb, ke). The block, 64 KiB per 128 keys, stays in L2 between the three stages, and
// no stage waits for the others' threads: one (batch, head) at a time as three parallel
// calls leaves each call too few tasks to share (a merge of 1024 rows by 128 columns is
// one GEMM task).
//
// Hidden keys. The merge is a GEMM over [kb, ke), so a key that row i cannot see but
// another row of the block can is multiplied by its zero probability, and 0 * (NaN or inf)
// is NaN. Where the V rows such keys reach hold a non-finite value, the block merges with
// merge_visible instead, which skips hidden keys as the reference does.
#pragma once

#include "attend/detail/config.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "attend/context.hpp"
#include "attend/detail/dispatch.hpp"
#include "attend/detail/score_rule.hpp"
#include "attend/detail/unfused.hpp"
#include "attend/options.hpp"
#include "attend/view.hpp"

ATTEND_NAMESPACE_BEGIN
namespace detail {

// Query rows per task: a [128, Sk] block of scores (512 KiB at Sk = 1024) fits L2 beside
// K's and V's packed panels, and the causal triangle that a block computes above its
// diagonal (rows [i0, i1) compute keys up to i1) is 1/8 extra work at Sq = 1024.
constexpr index_t kProbRows = 128;

// Do rows [first, last) of v hold only finite numbers? (x - x is 0 exactly when x is.)
template <class T>
bool finite_rows(MatrixView<const T> v, index_t first, index_t last) {
  T spoiled = 0;
  for (index_t j = first; j < last; ++j) {
    const T* row = v.row(j);
    for (index_t d = 0; d < v.cols; ++d) spoiled += row[d] - row[d];
  }
  return spoiled == 0;
}

// Rows [i0, i1) of (batch b, query head h): o, p and lse. scratch holds Sk + (i1 - i0)
// values.
template <class T>
void with_probs_rows(Isa isa, TensorView<const T> q, TensorView<const T> k, TensorView<const T> v,
                     TensorView<T> o, TensorView<T> p, const AttentionOptions& opts,
                     TensorView<T> lse, index_t b, index_t h, index_t i0, index_t i1,
                     acc_t<T>* scratch) {
  using Acc = acc_t<T>;
  const index_t group = q.heads / k.heads, rows = i1 - i0;
  const index_t keys = opts.key_lengths.empty() ? k.seq : opts.key_lengths[b];
  const ScoreRule<Acc> rule(opts, b, h, q.seq, k.seq);
  // [kb, ke): the keys some row sees. [begin_max, end_min): the keys every row's range
  // holds; only keys outside it can be hidden from one row and seen by another.
  index_t kb = keys, ke = 0, begin_max = 0, end_min = keys;
  for (index_t i = i0; i < i1; ++i) {
    const KeyRange r = rule.keys(i);
    const index_t begin = std::min(r.begin, keys), end = std::min(r.end, keys);
    if (begin < end) kb = std::min(kb, begin), ke = std::max(ke, end);
    begin_max = std::max(begin_max, begin), end_min = std::min(end_min, end);
  }
  const MatrixView<T> ph = p.head(b, h);
  const MatrixView<const T> kh = k.head(b, h / group), vh = v.head(b, h / group);
  if (kb < ke)
    gemm<T>(isa, SerialExecutor(), q.head(b, h).block(i0, rows, 0, q.dim),
            kh.block(kb, ke - kb, 0, k.dim), true, Acc(opts.scale.value_or(default_scale(q.dim))),
            nullptr, false, ph.block(i0, rows, kb, ke - kb));
  Acc* row_lse = scratch + keys;  // row_lse[i - i0]
  for (index_t i = i0; i < i1; ++i) {
    T* pi = ph.row(i);
    row_lse[i - i0] = softmax_row<T>(isa, rule, i, pi, keys, pi, scratch);
    std::fill(pi + keys, pi + ph.cols, T(0));  // past the batch's key length
    if (!lse.empty()) *lse.row(b, h, i) = static_cast<T>(row_lse[i - i0]);
  }

  const MatrixView<T> oh = o.head(b, h);
  const bool gemm_safe = rule.ranges_only() ? finite_rows<T>(vh, kb, std::min(begin_max, ke)) &&
                                                  finite_rows<T>(vh, std::max(end_min, kb), ke)
                                            : finite_rows<T>(vh, kb, ke);
  if (kb < ke && gemm_safe) {
    gemm<T>(isa, SerialExecutor(), MatrixView<const T>(ph.block(i0, rows, kb, ke - kb)),
            vh.block(kb, ke - kb, 0, v.dim), false, Acc(1), nullptr, false,
            oh.block(i0, rows, 0, v.dim));
    // What the product cannot know: a row without mass (every logit -inf) is zeros
    // whatever the value rows it sees hold, and a NaN sink makes a row NaN even where it
    // sees no key.
    for (index_t i = i0; i < i1; ++i) {
      const Acc l = row_lse[i - i0];
      if (std::isnan(l) || l == -std::numeric_limits<Acc>::infinity())
        std::fill(oh.row(i), oh.row(i) + v.dim, std::isnan(l) ? T(l) : T(0));
    }
  } else {
    merge_visible<T>(rule, MatrixView<const T>(ph.block(i0, rows, 0, keys)), row_lse,
                     vh.block(0, keys, 0, v.dim), oh.block(i0, rows, 0, v.dim), i0);
  }
}

template <class T>
void attention_with_probs(Isa isa, const Executor& executor, TensorView<const T> q,
                          TensorView<const T> k, TensorView<const T> v, TensorView<T> o,
                          TensorView<T> p, const AttentionOptions& opts, TensorView<T> lse) {
  const index_t chunks = (q.seq + kProbRows - 1) / kProbRows;
  if (q.batch * q.heads * chunks == 0) return;
  executor.parallel_for(q.batch * q.heads * chunks, [&](index_t task) {
    const index_t b = task / (q.heads * chunks), h = task / chunks % q.heads;
    const index_t i0 = task % chunks * kProbRows, i1 = std::min(i0 + kProbRows, q.seq);
    std::vector<acc_t<T>> scratch(static_cast<std::size_t>(k.seq + kProbRows));
    with_probs_rows<T>(isa, q, k, v, o, p, opts, lse, b, h, i0, i1, scratch.data());
  });
}

}  // namespace detail
ATTEND_NAMESPACE_END
