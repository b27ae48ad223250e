// Variable-length (packed) attention: a batch of sequences of different lengths stored back
// to back, with no padding stored or computed.
//
// Shapes: sequence s owns query rows [cu_seqlens_q[s], cu_seqlens_q[s + 1]) and key rows
// [cu_seqlens_k[s], cu_seqlens_k[s + 1]) of
//   q [1, Hq, total_q, Dk]   k [1, Hkv, total_k, Dk]   v [1, Hkv, total_k, Dv]
//   o [1, Hq, total_q, Dv]   lse (optional) [1, Hq, total_q, 1]
// (the [total, heads, dim] token layout of a packed QKV projection is the BSHD view with
// batch 1). cu_seqlens_q and cu_seqlens_k have n + 1 entries, start at 0, never decrease,
// and end at total_q and total_k. For self-attention prefill pass the same offsets twice.
//
// Each sequence is an independent attention() problem: its rows see only its own keys, and
// causal, window and ALiBi align per sequence (bottom-right by default: a sequence's last
// query sees its last key). scale, softcap, sinks apply as in attention(); key_lengths, bias
// and mask would need ragged shapes and must be empty.
#pragma once

#include "attend/detail/config.hpp"

#include <cstdint>
#include <string>

#include "attend/attention.hpp"
#include "attend/context.hpp"
#include "attend/detail/check.hpp"
#include "attend/detail/dispatch.hpp"
#include "attend/options.hpp"
#include "attend/view.hpp"

ATTEND_NAMESPACE_BEGIN

namespace detail {

// Offsets of n sequences into `total` rows: n + 1 entries from 0 to total, never decreasing.
inline void check_offsets(const Checker& c, const char* name, Span<const std::int32_t> cu,
                          index_t total) {
  if (cu.size < 1) c.fail(name, "expected n + 1 >= 1 offsets, got none");
  c.require(cu.data != nullptr, name, "null data");
  if (cu[0] != 0) c.fail(name, "expected the first offset 0, got " + std::to_string(cu[0]));
  for (index_t s = 0; s + 1 < cu.size; ++s)
    if (cu[s + 1] < cu[s])
      c.fail(name, "offsets decrease at entry " + std::to_string(s + 1) + ": " +
                       std::to_string(cu[s]) + " then " + std::to_string(cu[s + 1]));
  if (cu[cu.size - 1] != total)
    c.fail(name, "expected the last offset to be the " + std::to_string(total) + " rows, got " +
                     std::to_string(cu[cu.size - 1]));
}

}  // namespace detail

// o = attention of each packed sequence over its own keys; see the top of this file. The
// sequences run one after another, each split into tasks for ctx's executor.
template <class T>
void attention_varlen(TensorIn<T> q, TensorIn<T> k, TensorIn<T> v,
                      SpanIn<std::int32_t> cu_seqlens_q, SpanIn<std::int32_t> cu_seqlens_k,
                      TensorView<T> o, const AttentionOptions& opts = {}, TensorView<T> lse = {},
                      const Context& ctx = {}) {
  const detail::Checker c("attention_varlen");
  c.tensor("q", q, {1, detail::any, detail::any, detail::any});
  for (const auto& [name, set] : {std::pair{"opts.key_lengths", !opts.key_lengths.empty()},
                                  std::pair{"opts.bias", detail::given(opts.bias)},
                                  std::pair{"opts.mask", detail::given(opts.mask)}})
    if (set) c.fail(name, "expected none: packed sequences have no common [Sq, Sk] shape");
  detail::check_attention<T>(c, q, k, v, o, opts, lse);
  detail::check_offsets(c, "cu_seqlens_q", cu_seqlens_q, q.seq);
  detail::check_offsets(c, "cu_seqlens_k", cu_seqlens_k, k.seq);
  c.expect(cu_seqlens_k.size, cu_seqlens_q.size, "cu_seqlens_k.size",
           "one offset per sequence of cu_seqlens_q, plus one");
  for (const auto& [name, out] : {std::pair{"o", o}, std::pair{"lse", lse}}) {
    c.disjoint(name, out, "cu_seqlens_q", cu_seqlens_q);
    c.disjoint(name, out, "cu_seqlens_k", cu_seqlens_k);
  }
  const Isa isa = c.isa(ctx);
  for (index_t s = 0; s + 1 < cu_seqlens_q.size; ++s) {
    const index_t q0 = cu_seqlens_q[s], sq = cu_seqlens_q[s + 1] - q0;
    const index_t k0 = cu_seqlens_k[s], sk = cu_seqlens_k[s + 1] - k0;
    if (sq == 0) continue;
    detail::attention<T>(isa, detail::executor_of(ctx), q.seq_slice(q0, sq), k.seq_slice(k0, sk),
                         v.seq_slice(k0, sk), o.seq_slice(q0, sq), opts,
                         lse.empty() ? lse : lse.seq_slice(q0, sq));
  }
}

ATTEND_NAMESPACE_END
