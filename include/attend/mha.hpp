// A whole multi-head attention block, with the conventions of torch.nn.MultiheadAttention
// (batch_first=True, need_weights=False):
//
//   Q = query . WQ^T + bq,  K = key . WK^T + bk,  V = value . WV^T + bv   (split into heads)
//   O = attention(Q, K, V) per head, scale 1/sqrt(D) unless the options say otherwise
//   y = concat_h(O) . WO^T + bo
//
// with WQ, WK, WV the three row blocks of in_proj_weight [3E, E] and D = E / num_heads.
// Self-attention passes the same tokens as query, key and value; cross-attention passes
// the decoder's tokens as query and the encoder's as key and value. With num_kv_heads <
// num_heads the block is grouped-query attention, in_proj_weight [(Hq + 2*Hkv) * D, E].
//
// Token matrices are [batch * seq, E] with rows ordered (b, s); query has Sq tokens per
// batch, key and value Sk. y [batch * Sq, E] may not overlap any input.
#pragma once

#include "attend/detail/config.hpp"

#include <vector>

#include "attend/attention.hpp"
#include "attend/detail/check.hpp"
#include "attend/linear.hpp"
#include "attend/options.hpp"
#include "attend/view.hpp"

ATTEND_NAMESPACE_BEGIN

template <class T>
struct MhaWeights {
  MatrixView<const T> in_proj_weight;   // [(Hq + 2*Hkv) * D, E]; [3E, E] when Hkv == Hq
  Span<const T> in_proj_bias;           // [(Hq + 2*Hkv) * D] or empty
  MatrixView<const T> out_proj_weight;  // [E, Hq * D]
  Span<const T> out_proj_bias;          // [E] or empty
  index_t num_heads = 1;                // Hq
  index_t num_kv_heads = 0;             // Hkv; 0 means num_heads
};

template <class T>
void multihead_attention(MatrixIn<T> query, MatrixIn<T> key, MatrixIn<T> value, index_t batch,
                         const MhaWeights<T>& w, MatrixView<T> y, const AttentionOptions& opts = {},
                         const Context& ctx = {}) {
  const detail::Checker c("multihead_attention");
  c.require(batch > 0, "batch", "expected at least 1, got " + std::to_string(batch));
  c.require(w.num_heads > 0, "num_heads", "expected at least 1");
  const index_t hq = w.num_heads, hkv = w.num_kv_heads ? w.num_kv_heads : w.num_heads;
  if (hkv <= 0 || hq % hkv != 0)
    c.fail("num_kv_heads", "expected 0 (= num_heads) or a divisor of num_heads = " +
                               std::to_string(hq) + ", got " + std::to_string(w.num_kv_heads));
  c.matrix("query", query, detail::any, detail::any);
  const index_t e = query.cols;
  c.require(
      e % hq == 0, "query.cols",
      "expected a multiple of num_heads = " + std::to_string(hq) + ", got " + std::to_string(e));
  const index_t d = e / hq;
  c.require(query.rows % batch == 0, "query.rows", "expected a multiple of batch");
  c.matrix("key", key, detail::any, e);
  c.require(key.rows % batch == 0, "key.rows", "expected a multiple of batch");
  c.matrix("value", value, key.rows, e);
  c.matrix("y", y, query.rows, e);
  c.matrix("in_proj_weight", w.in_proj_weight, (hq + 2 * hkv) * d, e);
  if (!w.in_proj_bias.empty())
    c.expect(w.in_proj_bias.size, (hq + 2 * hkv) * d, "in_proj_bias.size", "(Hq + 2*Hkv) * D");
  c.require(w.in_proj_bias.empty() || w.in_proj_bias.data != nullptr, "in_proj_bias", "null data");
  c.require(w.out_proj_bias.empty() || w.out_proj_bias.data != nullptr, "out_proj_bias",
            "null data");
  c.matrix("out_proj_weight", w.out_proj_weight, e, hq * d);
  if (!w.out_proj_bias.empty()) c.expect(w.out_proj_bias.size, e, "out_proj_bias.size", "E");
  for (const auto& [name, m] : {std::pair{"query", query},
                                {"key", key},
                                {"value", value},
                                {"in_proj_weight", w.in_proj_weight},
                                {"out_proj_weight", w.out_proj_weight}})
    c.disjoint("y", y, name, m);
  c.disjoint("y", y, "in_proj_bias", w.in_proj_bias);
  c.disjoint("y", y, "out_proj_bias", w.out_proj_bias);
  detail::check_clear_of_options(c, "y", y, opts);
  const QkvWeights<T> qkv = QkvWeights<T>::packed(w.in_proj_weight, w.in_proj_bias, hq, hkv, d);

  const index_t sq = query.rows / batch, sk = key.rows / batch;
  std::vector<T> qbuf(std::size_t(batch * hq * sq * d)), kbuf(std::size_t(batch * hkv * sk * d)),
      vbuf(kbuf.size()), obuf(qbuf.size());
  const auto q = TensorView<T>::bhsd(qbuf.data(), batch, hq, sq, d);
  const auto k = TensorView<T>::bhsd(kbuf.data(), batch, hkv, sk, d);
  const auto v = TensorView<T>::bhsd(vbuf.data(), batch, hkv, sk, d);
  const auto o = TensorView<T>::bhsd(obuf.data(), batch, hq, sq, d);
  // The remaining checks (options against the shapes) run before anything is written to y.
  detail::check_attention<T>(c, q, k, v, o, opts, {});

  project_heads<T>(query, qkv.wq, qkv.bq, q, ctx);
  project_heads<T>(key, qkv.wk, qkv.bk, k, ctx);
  project_heads<T>(value, qkv.wv, qkv.bv, v, ctx);
  detail::attention<T>(c.isa(ctx), detail::executor_of(ctx), q, k, v, o, opts, {});
  project_output<T>(o, w.out_proj_weight, w.out_proj_bias, y, ctx);
}

ATTEND_NAMESPACE_END
