// The baseline attend is measured against in the same binary: the naive Eigen composition
// a user would write first. Row-major matrices over the same dense BHSD buffers, per head
//
//   S = scale * Q K^T      one GEMM, every key that exists (the causal half too)
//   P = masked row softmax of S
//   O = P V                one GEMM
//
// and, for a projection, one Eigen GEMM. Compiled with attend_bench's flags, so Eigen
// vectorises for the same baseline ISA attend is built for (SSE2 on x86-64 by default).
#pragma once

#include <Eigen/Core>
#include <algorithm>

#include "shapes.hpp"

namespace attend_bench::eigen_baseline {

using RowMatrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using RowVector = Eigen::RowVectorXf;
// A read-only or writable row-major block (a head inside a token-major buffer).
using ConstBlock = Eigen::Ref<const RowMatrix, 0, Eigen::OuterStride<>>;
using Block = Eigen::Ref<RowMatrix, 0, Eigen::OuterStride<>>;
using ConstMap = Eigen::Map<const RowMatrix>;
using Map = Eigen::Map<RowMatrix>;

// Head (b, h) of a dense [B, H, rows, cols] buffer.
inline ConstMap head(const float* data, index_t heads, index_t b, index_t h, index_t rows,
                     index_t cols) {
  return {data + ((b * heads + h) * rows) * cols, rows, cols};
}
inline Map head(float* data, index_t heads, index_t b, index_t h, index_t rows, index_t cols) {
  return {data + ((b * heads + h) * rows) * cols, rows, cols};
}

// In place on one row of n scores: softmax over keys [0, limit), zeros after.
inline void masked_softmax_row(float* row, index_t n, index_t limit) {
  Eigen::Map<Eigen::ArrayXf> r(row, n);
  r.tail(n - limit).setZero();
  if (limit == 0) return;
  auto visible = r.head(limit);
  visible = (visible - visible.maxCoeff()).exp();
  visible /= visible.sum();
}

// scores [B, Hq, Sq, Sk] = scale * q k^T per head.
inline void scores(const AttentionShape& s, const float* q, const float* k, float* out) {
  const float scale = float(s.scale());
  for (index_t b = 0; b < s.batch; ++b)
    for (index_t h = 0; h < s.q_heads; ++h)
      head(out, s.q_heads, b, h, s.q_len, s.kv_len).noalias() =
          scale * (head(q, s.q_heads, b, h, s.q_len, s.head_dim) *
                   head(k, s.kv_heads, b, h / s.group(), s.kv_len, s.head_dim).transpose());
}

// probs = masked row softmax of scores [B, Hq, Sq, Sk], with the shape's masks.
inline void masked_softmax(const AttentionShape& s, const float* scores, float* probs) {
  for (index_t b = 0; b < s.batch; ++b)
    for (index_t h = 0; h < s.q_heads; ++h)
      for (index_t i = 0; i < s.q_len; ++i) {
        const index_t row = ((b * s.q_heads + h) * s.q_len + i) * s.kv_len;
        std::copy(scores + row, scores + row + s.kv_len, probs + row);
        masked_softmax_row(probs + row, s.kv_len, s.row_limit(b, i));
      }
}

// o [B, Hq, Sq, D] = p [B, Hq, Sq, Sk] . v per head.
inline void merge(const AttentionShape& s, const float* p, const float* v, float* o) {
  for (index_t b = 0; b < s.batch; ++b)
    for (index_t h = 0; h < s.q_heads; ++h)
      head(o, s.q_heads, b, h, s.q_len, s.head_dim).noalias() =
          head(p, s.q_heads, b, h, s.q_len, s.kv_len) *
          head(v, s.kv_heads, b, h / s.group(), s.kv_len, s.head_dim);
}

// One head of batch b: q [Sq, D], and k, v [keys, D] holding only the keys that exist
// (the first valid_keys(b)). `scores` is the [Sq, keys] work matrix, kept by the caller.
inline void attention_head(const AttentionShape& s, index_t b, ConstBlock q, ConstBlock k,
                           ConstBlock v, RowMatrix& scores, Block o) {
  scores.resize(q.rows(), k.rows());
  scores.noalias() = float(s.scale()) * (q * k.transpose());
  for (index_t i = 0; i < q.rows(); ++i)
    masked_softmax_row(scores.row(i).data(), k.rows(), s.row_limit(b, i));
  o.noalias() = scores * v;
}

// o [B, Hq, Sq, D] = attention(q, k, v) with the shape's masks, one head at a time.
inline void attention(const AttentionShape& s, const float* q, const float* k, const float* v,
                      float* o, RowMatrix& scores) {
  for (index_t b = 0; b < s.batch; ++b) {
    const index_t keys = s.valid_keys(b);
    for (index_t h = 0; h < s.q_heads; ++h) {
      const index_t hk = h / s.group();
      attention_head(s, b, head(q, s.q_heads, b, h, s.q_len, s.head_dim),
                     head(k, s.kv_heads, b, hk, s.kv_len, s.head_dim).topRows(keys),
                     head(v, s.kv_heads, b, hk, s.kv_len, s.head_dim).topRows(keys), scores,
                     head(o, s.q_heads, b, h, s.q_len, s.head_dim));
    }
  }
}

// y [M, N] = x [M, K] . w^T, w [N, K] (nn.Linear layout).
inline void linear(const GemmShape& g, const float* x, const float* w, float* y) {
  Map(y, g.m, g.n).noalias() = ConstMap(x, g.m, g.k) * ConstMap(w, g.n, g.k).transpose();
}

// A multi-head attention block in torch.nn.MultiheadAttention's conventions: tokens stay
// [B * S, width] matrices, and a head is a column block of them; no transposes.
struct MhaWeights {
  RowMatrix in_proj;   // [(Hq + 2 Hkv) D, E]: the Q, K and V row blocks
  RowVector in_bias;   // [(Hq + 2 Hkv) D]
  RowMatrix out_proj;  // [E, Hq D]
  RowVector out_bias;  // [E]
};

// The intermediates, kept between calls; the tolerance of the block is derived from them.
struct MhaWork {
  RowMatrix q, k, v;  // [B * S, Hq D], [B * S, Hkv D], [B * S, Hkv D]
  RowMatrix o;        // [B * S, Hq D]: the heads' outputs side by side
  RowMatrix scores;   // [Sq, Sk] of the head in flight
};

// y [B * S, E] = MHA(x [B * S, E]) for self-attention with the shape's masks.
inline void mha(const MhaShape& m, const float* x_data, const MhaWeights& w, MhaWork& work,
                float* y) {
  const AttentionShape& s = m.attention;
  const index_t d = s.head_dim, qw = s.q_heads * d, kvw = s.kv_heads * d;
  const ConstMap x(x_data, m.tokens(), m.embed());
  auto project = [&](RowMatrix& out, index_t first, index_t rows) {
    out.noalias() = x * w.in_proj.middleRows(first, rows).transpose();
    out.rowwise() += w.in_bias.segment(first, rows);
  };
  project(work.q, 0, qw);
  project(work.k, qw, kvw);
  project(work.v, qw + kvw, kvw);
  work.o.resize(m.tokens(), qw);
  for (index_t b = 0; b < s.batch; ++b) {
    const index_t keys = s.valid_keys(b);
    for (index_t h = 0; h < s.q_heads; ++h) {
      const index_t hk = h / s.group();
      attention_head(s, b, work.q.block(b * s.q_len, h * d, s.q_len, d),
                     work.k.block(b * s.kv_len, hk * d, keys, d),
                     work.v.block(b * s.kv_len, hk * d, keys, d), work.scores,
                     work.o.block(b * s.q_len, h * d, s.q_len, d));
    }
  }
  Map out(y, m.tokens(), m.embed());
  out.noalias() = work.o * w.out_proj.transpose();
  out.rowwise() += w.out_bias;
}

}  // namespace attend_bench::eigen_baseline
