// Linear projections: the static weights of attention applied to the token vectors.
//
// The classic picture: a sequence of tokens X [tokens, E] times three learned weight
// matrices WQ, WK, WV gives the three per-token matrices Q, K, V, split into heads of
// width D; after attention, the heads are concatenated and multiplied by WO.
//
//   linear          y [M, N] = x [M, K] . W^T + b       W [N, K]  (nn.Linear layout)
//                            = x . W + b                W [K, N]  (WeightLayout::in_out)
//   project_heads   out[b, h, s, :] = x[b*S + s, :] . W[h*D : (h+1)*D, :]^T + b[h*D : (h+1)*D]
//   project_qkv     the three projections above into Q, K, V at once
//   project_output  y[b*S + s, :] = concat_h(o[b, h, s, :]) . WO^T + bo
//
// Token matrices are [batch*seq, E] with rows ordered (b, s). Head views may be BHSD or
// BSHD (see TensorView): a projection writes straight into either.
#pragma once

#include "attend/detail/config.hpp"

#include <array>
#include <string>

#include "attend/context.hpp"
#include "attend/detail/check.hpp"
#include "attend/detail/dispatch.hpp"
#include "attend/view.hpp"

ATTEND_NAMESPACE_BEGIN

enum class WeightLayout : std::uint8_t {
  out_in,  // W [out, in]: PyTorch's nn.Linear.weight; y = x . W^T
  in_out,  // W [in, out]: y = x . W
};

// Q, K and V weights in nn.Linear layout, each with an optional bias:
//   wq [Hq*Dk, E], wk [Hkv*Dk, E], wv [Hkv*Dv, E]; bq [Hq*Dk], bk [Hkv*Dk], bv [Hkv*Dv].
template <class T>
struct QkvWeights {
  MatrixView<const T> wq, wk, wv;
  Span<const T> bq, bk, bv;

  // Splits one packed weight [(Hq + 2*Hkv) * D, E] (and bias [(Hq + 2*Hkv) * D] or empty)
  // into its Q, K and V row blocks, in that order: nn.MultiheadAttention's in_proj_weight
  // when Hq == Hkv, and the fused QKV weight of GQA models otherwise.
  static QkvWeights packed(MatrixView<const T> w, Span<const T> b, index_t q_heads,
                           index_t kv_heads, index_t head_dim) {
    const detail::Checker c("QkvWeights::packed");
    c.require(q_heads >= 0 && kv_heads >= 0 && head_dim >= 0, "q_heads, kv_heads, head_dim",
              "expected non-negative counts");
    const index_t q_rows = q_heads * head_dim, kv_rows = kv_heads * head_dim;
    c.matrix("w", w, q_rows + 2 * kv_rows, detail::any);
    if (!b.empty()) c.expect(b.size, q_rows + 2 * kv_rows, "b.size", "(Hq + 2*Hkv) * D");
    c.require(b.empty() || b.data != nullptr, "b", "null data");
    auto part = [&](index_t first, index_t rows) { return w.block(first, rows, 0, w.cols); };
    auto bias = [&](index_t first, index_t n) {
      return b.empty() ? Span<const T>{} : Span<const T>{b.data + first, n};
    };
    return {part(0, q_rows), part(q_rows, kv_rows), part(q_rows + kv_rows, kv_rows),
            bias(0, q_rows), bias(q_rows, kv_rows), bias(q_rows + kv_rows, kv_rows)};
  }
};

namespace detail {

template <class T>
void check_linear(const Checker& c, MatrixView<const T> x, MatrixView<const T> w,
                  Span<const T> bias, MatrixView<T> y, WeightLayout layout) {
  c.matrix("x", x, any, any);
  c.matrix("y", y, x.rows, any);
  if (layout == WeightLayout::out_in)
    c.matrix("w", w, y.cols, x.cols);
  else
    c.matrix("w", w, x.cols, y.cols);
  if (!bias.empty()) c.expect(bias.size, y.cols, "bias.size", "y.cols");
  c.require(bias.empty() || bias.data != nullptr, "bias", "null data");
  c.disjoint("y", y, "x", x);
  c.disjoint("y", y, "w", w);
  c.disjoint("y", y, "bias", bias);
}

// Checks one head projection; `w_name` and `b_name` name the weight and bias in messages.
template <class T>
void check_project_heads(const Checker& c, MatrixView<const T> x, MatrixView<const T> w,
                         Span<const T> bias, TensorView<T> out, const std::string& w_name,
                         const std::string& b_name, const std::string& out_name) {
  c.matrix("x", x, any, any);
  c.tensor(out_name, out, {any, any, any, any});
  c.distinct_elements(out_name, out);
  c.expect(x.rows, out.batch * out.seq, "x.rows", out_name + ".batch * " + out_name + ".seq");
  c.matrix(w_name, w, out.heads * out.dim, x.cols);
  if (!bias.empty()) c.expect(bias.size, out.heads * out.dim, b_name + ".size", "heads * dim");
  c.require(bias.empty() || bias.data != nullptr, b_name, "null data");
  c.disjoint(out_name, out, "x", x);
  c.disjoint(out_name, out, w_name, w);
  c.disjoint(out_name, out, b_name, bias);
}

// Each (batch, head) pair is one task: a [S, E] x [E, D] product.
template <class T>
void run_project_heads(MatrixView<const T> x, MatrixView<const T> w, Span<const T> bias,
                       TensorView<T> out, const Context& ctx) {
  const index_t d = out.dim, s = out.seq;
  if (out.heads == 0) return;
  const Isa isa = resolve(ctx.isa);
  executor_of(ctx).parallel_for(out.batch * out.heads, [&](index_t task) {
    const index_t b = task / out.heads, h = task % out.heads;
    gemm<T>(isa, SerialExecutor(), x.block(b * s, s, 0, x.cols), w.block(h * d, d, 0, w.cols), true,
            acc_t<T>(1), bias.empty() ? nullptr : bias.data + h * d, false, out.head(b, h));
  });
}

}  // namespace detail

// y = x . W^T + bias (out_in, W [N, K]) or y = x . W + bias (in_out, W [K, N]).
// x [M, K], y [M, N], bias [N] or empty. y may not overlap x, W or bias.
template <class T>
void linear(MatrixIn<T> x, MatrixIn<T> w, SpanIn<T> bias, MatrixView<T> y,
            WeightLayout layout = WeightLayout::out_in, const Context& ctx = {}) {
  const detail::Checker c("linear");
  detail::check_linear(c, x, w, bias, y, layout);
  detail::gemm<T>(c.isa(ctx), detail::executor_of(ctx), x, w, layout == WeightLayout::out_in,
                  detail::acc_t<T>(1), bias.empty() ? nullptr : bias.data, false, y);
}

// Projects token rows into heads: out [B, H, S, D] from x [B*S, E], w [H*D, E] and bias
// [H*D] or empty. The building block of project_qkv, and of cross-attention, where K and
// V come from other tokens than Q.
template <class T>
void project_heads(MatrixIn<T> x, MatrixIn<T> w, SpanIn<T> bias, TensorView<T> out,
                   const Context& ctx = {}) {
  const detail::Checker c("project_heads");
  detail::check_project_heads(c, x, w, bias, out, "w", "bias", "out");
  c.isa(ctx);
  detail::run_project_heads(x, w, bias, out, ctx);
}

// Q, K and V from the same tokens x [B*S, E]: q [B, Hq, S, Dk], k [B, Hkv, S, Dk],
// v [B, Hkv, S, Dv]. The three outputs may interleave in one buffer (BSHD views of a fused
// [B, S, Hq + 2*Hkv, D] buffer) but must not overlap each other or the inputs. (Overlap
// with the inputs is checked; among q, k and v it is not: interleaved views share one
// address range, so telling them from overlapping ones needs their element sets.)
template <class T>
void project_qkv(MatrixIn<T> x, const QkvWeights<T>& w, TensorView<T> q, TensorView<T> k,
                 TensorView<T> v, const Context& ctx = {}) {
  const detail::Checker c("project_qkv");
  detail::check_project_heads(c, x, w.wq, w.bq, q, "wq", "bq", "q");
  detail::check_project_heads(c, x, w.wk, w.bk, k, "wk", "bk", "k");
  detail::check_project_heads(c, x, w.wv, w.bv, v, "wv", "bv", "v");
  // Each output against the other projections' weights (its own were checked above).
  const std::array<std::pair<const char*, TensorView<T>>, 3> outs{{{"q", q}, {"k", k}, {"v", v}}};
  for (const auto& [name, out] : outs) {
    c.disjoint(name, out, "wq", w.wq), c.disjoint(name, out, "bq", w.bq);
    c.disjoint(name, out, "wk", w.wk), c.disjoint(name, out, "bk", w.bk);
    c.disjoint(name, out, "wv", w.wv), c.disjoint(name, out, "bv", w.bv);
  }
  c.isa(ctx);
  detail::run_project_heads(x, w.wq, w.bq, q, ctx);
  detail::run_project_heads(x, w.wk, w.bk, k, ctx);
  detail::run_project_heads(x, w.wv, w.bv, v, ctx);
}

// The output projection: y [B*S, E] = concat over heads of o [B, H, S, Dv], times
// w [E, H*Dv] transposed, plus bias [E] or empty.
template <class T>
void project_output(TensorIn<T> o, MatrixIn<T> w, SpanIn<T> bias, MatrixView<T> y,
                    const Context& ctx = {}) {
  const detail::Checker c("project_output");
  c.tensor("o", o, {detail::any, detail::any, detail::any, detail::any});
  c.require(o.heads > 0, "o", "expected at least one head");
  c.matrix("y", y, o.batch * o.seq, detail::any);
  c.matrix("w", w, y.cols, o.heads * o.dim);
  if (!bias.empty()) c.expect(bias.size, y.cols, "bias.size", "y.cols");
  c.require(bias.empty() || bias.data != nullptr, "bias", "null data");
  c.disjoint("y", y, "o", o);
  c.disjoint("y", y, "w", w);
  c.disjoint("y", y, "bias", bias);
  // Summing head by head: the concatenation is never formed.
  const Isa isa = c.isa(ctx);
  const index_t s = o.seq, d = o.dim;
  for (index_t b = 0; b < o.batch; ++b) {
    const MatrixView<T> yb = y.block(b * s, s, 0, y.cols);
    for (index_t h = 0; h < o.heads; ++h)
      detail::gemm<T>(isa, detail::executor_of(ctx), o.head(b, h), w.block(0, y.cols, h * d, d),
                      true, detail::acc_t<T>(1), h == 0 && !bias.empty() ? bias.data : nullptr,
                      h > 0, yb);
  }
}

ATTEND_NAMESPACE_END
