// The V merge O = P V: each output row is the probability-weighted mix of value rows.
#pragma once

#include "attend/detail/config.hpp"

#include "attend/context.hpp"
#include "attend/detail/check.hpp"
#include "attend/detail/dispatch.hpp"
#include "attend/detail/score_rule.hpp"
#include "attend/view.hpp"

ATTEND_NAMESPACE_BEGIN

// One head: o [Sq, Dv] = p [Sq, Sk] . v [Sk, Dv].
template <class T>
void merge_values(MatrixIn<T> p, MatrixIn<T> v, MatrixView<T> o, const Context& ctx = {}) {
  const detail::Checker c("merge_values");
  c.matrix("p", p, detail::any, detail::any);
  c.matrix("v", v, p.cols, detail::any);
  c.matrix("o", o, p.rows, v.cols);
  c.disjoint("o", o, "p", p);
  c.disjoint("o", o, "v", v);
  detail::gemm<T>(c.isa(ctx), detail::executor_of(ctx), p, v, false, detail::acc_t<T>(1), nullptr,
                  false, o);
}

// All heads: o [B, Hq, Sq, Dv] from p [B, Hq, Sq, Sk] and v [B, Hkv, Sk, Dv]; query head h
// reads value head h / (Hq / Hkv).
template <class T>
void merge_values(TensorIn<T> p, TensorIn<T> v, TensorView<T> o, const Context& ctx = {}) {
  const detail::Checker c("merge_values");
  c.tensor("p", p, {detail::any, detail::any, detail::any, detail::any});
  c.tensor("v", v, {p.batch, detail::any, p.dim, detail::any});
  detail::check_head_groups(c, p.heads, v.heads, "v");
  c.tensor("o", o, {p.batch, p.heads, p.seq, v.dim});
  c.distinct_elements("o", o);
  c.disjoint("o", o, "p", p);
  c.disjoint("o", o, "v", v);
  c.isa(ctx);
  detail::gemm_per_head<T>(ctx, p, v, false, detail::acc_t<T>(1), o);
}

ATTEND_NAMESPACE_END
