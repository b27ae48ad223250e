// The oracle: attention written once more, straight from the definitions in
// attend/options.hpp, with naive loops in extended precision (long double: 64-bit
// mantissa on x86, 113-bit on aarch64), sharing no code with the library.
//
// Besides each result, the oracle returns how large the rounding error of a float or
// double implementation may be at that element, in units of the unit roundoff u: the
// tests' tolerances are those bounds times u, never magic numbers (see tolerance.hpp).
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "attend/options.hpp"
#include "attend/view.hpp"

namespace ref {

using attend::index_t;
using real = long double;

// A dense [b, h, s, d] tensor.
struct Tensor {
  index_t b = 0, h = 0, s = 0, d = 0;
  std::vector<real> v;

  Tensor() = default;
  Tensor(index_t b_, index_t h_, index_t s_, index_t d_)
      : b(b_), h(h_), s(s_), d(d_), v(std::size_t(b_ * h_ * s_ * d_), real(0)) {}
  real& operator()(index_t i0, index_t i1, index_t i2, index_t i3) {
    return v[std::size_t(((i0 * h + i1) * s + i2) * d + i3)];
  }
  real operator()(index_t i0, index_t i1, index_t i2, index_t i3) const {
    return v[std::size_t(((i0 * h + i1) * s + i2) * d + i3)];
  }
};

// A dense [rows, cols] matrix.
struct Matrix {
  index_t rows = 0, cols = 0;
  std::vector<real> v;

  Matrix() = default;
  Matrix(index_t r, index_t c) : rows(r), cols(c), v(std::size_t(r * c), real(0)) {}
  real& operator()(index_t i, index_t j) { return v[std::size_t(i * cols + j)]; }
  real operator()(index_t i, index_t j) const { return v[std::size_t(i * cols + j)]; }
};

template <class T>
Tensor load(attend::TensorView<const T> t) {
  Tensor r(t.batch, t.heads, t.seq, t.dim);
  for (index_t b = 0; b < t.batch; ++b)
    for (index_t h = 0; h < t.heads; ++h)
      for (index_t s = 0; s < t.seq; ++s)
        for (index_t d = 0; d < t.dim; ++d) r(b, h, s, d) = real(t.row(b, h, s)[d]);
  return r;
}

template <class T>
Matrix load(attend::MatrixView<const T> m) {
  Matrix r(m.rows, m.cols);
  for (index_t i = 0; i < m.rows; ++i)
    for (index_t j = 0; j < m.cols; ++j) r(i, j) = real(m(i, j));
  return r;
}

// y = x . W^T + b (W [N, K]) with the error scale of each entry: (K + 2) * sum |x||w| + |b|.
struct Product {
  Matrix y, slack;
};
inline Product linear(const Matrix& x, const Matrix& w_out_in, const std::vector<real>& bias) {
  Product r{Matrix(x.rows, w_out_in.rows), Matrix(x.rows, w_out_in.rows)};
  for (index_t i = 0; i < x.rows; ++i)
    for (index_t j = 0; j < w_out_in.rows; ++j) {
      real sum = bias.empty() ? 0 : bias[std::size_t(j)], mag = 0;
      for (index_t k = 0; k < x.cols; ++k) {
        sum += x(i, k) * w_out_in(j, k);
        mag += std::fabs(x(i, k) * w_out_in(j, k));
      }
      r.y(i, j) = sum;
      r.slack(i, j) = real(x.cols + 2) * mag + 2 * (bias.empty() ? 0 : std::fabs(bias[j]));
    }
  return r;
}

inline Matrix transpose(const Matrix& m) {
  Matrix t(m.cols, m.rows);
  for (index_t i = 0; i < m.rows; ++i)
    for (index_t j = 0; j < m.cols; ++j) t(j, i) = m(i, j);
  return t;
}

// May query row i of (batch b, head h) attend to key j? Exactly the list in options.hpp.
inline bool visible(const attend::ScoreOptions& o, index_t b, index_t h, index_t i, index_t j,
                    index_t sq, index_t sk) {
  const index_t len = o.key_lengths.empty() ? sk : o.key_lengths[b];
  const index_t diagonal = i + (o.alignment == attend::Alignment::bottom_right ? len - sq : 0);
  if (j >= len) return false;
  if (o.causal && j > diagonal) return false;
  if (o.window.left >= 0 && j < diagonal - o.window.left) return false;
  if (o.window.right >= 0 && j > diagonal + o.window.right) return false;
  if (!o.mask.empty()) {
    const auto& m = o.mask;
    if (!m.row(m.batch == 1 ? 0 : b, m.heads == 1 ? 0 : h, i)[j]) return false;
  }
  return true;
}

// Probabilities, log-sum-exp and error scales of a masked softmax over [B, H, Sq, Sk].
struct Rows {
  Tensor p;      // [B, H, Sq, Sk]
  Tensor lse;    // [B, H, Sq, 1]
  Tensor slack;  // [B, H, Sq, 1]: bound on any logit's rounding error in the row, over u
  Tensor logit;  // [B, H, Sq, Sk]: the logits the weights come from; -inf where hidden
};

// `scores` are the scaled scores; `score_slack` (same shape, or empty) bounds the rounding
// error each score already carries, over u.
inline Rows softmax(const Tensor& scores, const Tensor& score_slack,
                    const attend::ScoreOptions& o) {
  const index_t B = scores.b, H = scores.h, Sq = scores.s, Sk = scores.d;
  Rows r{Tensor(B, H, Sq, Sk), Tensor(B, H, Sq, 1), Tensor(B, H, Sq, 1), Tensor(B, H, Sq, Sk)};
  const real inf = std::numeric_limits<real>::infinity();
  std::vector<real> logit(static_cast<std::size_t>(Sk));
  std::vector<bool> seen(static_cast<std::size_t>(Sk));
  for (index_t b = 0; b < B; ++b)
    for (index_t h = 0; h < H; ++h)
      for (index_t i = 0; i < Sq; ++i) {
        const index_t len = o.key_lengths.empty() ? Sk : o.key_lengths[b];
        const index_t diagonal =
            i + (o.alignment == attend::Alignment::bottom_right ? len - Sq : 0);
        real slack = 0;
        bool any_nan = false;
        for (index_t j = 0; j < Sk; ++j) {
          seen[j] = visible(o, b, h, i, j, Sq, Sk);
          if (!seen[j]) continue;
          real s = scores(b, h, i, j), err = score_slack.v.empty() ? 0 : score_slack(b, h, i, j);
          if (o.softcap > 0) {
            s = real(o.softcap) * std::tanh(s / real(o.softcap));
            err += 4 * real(o.softcap);
          }
          if (!o.alibi_slopes.empty()) {
            const real a = -real(o.alibi_slopes[h]) * real(std::abs(diagonal - j));
            s += a;
            err += 3 * std::fabs(a);
          }
          if (!o.bias.empty()) {
            const real x = o.bias.row(o.bias.batch == 1 ? 0 : b, o.bias.heads == 1 ? 0 : h, i)[j];
            s += x;
            err += 2 * std::fabs(x);
          }
          logit[j] = s;
          any_nan = any_nan || std::isnan(s);
          if (std::isfinite(s)) slack = std::max(slack, err + 4 * std::fabs(s));
        }
        const bool has_sink = !o.sinks.empty();
        const real sink = has_sink ? real(o.sinks[h]) : -inf;
        // m: the largest logit, sink included; keys at +inf share the mass equally.
        real m = sink;
        for (index_t j = 0; j < Sk; ++j)
          if (seen[j] && logit[j] > m) m = logit[j];
        if (has_sink && std::isfinite(sink)) slack = std::max(slack, 4 * std::fabs(sink));
        real z = 0;
        auto weight = [&](real l) { return l == m ? real(1) : std::exp(l - m); };
        if (m != -inf) {
          for (index_t j = 0; j < Sk; ++j)
            if (seen[j]) z += weight(logit[j]);
          if (has_sink) z += weight(sink);
        }
        const real nan = std::numeric_limits<real>::quiet_NaN();
        for (index_t j = 0; j < Sk; ++j)
          r.p(b, h, i, j) =
              any_nan && seen[j] ? nan : (seen[j] && m != -inf ? weight(logit[j]) / z : 0);
        r.lse(b, h, i, 0) = any_nan ? nan : (m == -inf ? -inf : m + std::log(z));
        r.slack(b, h, i, 0) = slack;
        for (index_t j = 0; j < Sk; ++j) r.logit(b, h, i, j) = seen[j] ? logit[j] : -inf;
      }
  return r;
}

// Attention with error scales: o, and o_abs = sum_j p_j |v_j| (the magnitude the rounding
// error of o is relative to).
struct Attention {
  Tensor o, o_abs, lse, slack;  // slack: per-row logit error bound over u
  Rows rows;
};

inline Attention attention(const Tensor& q, const Tensor& k, const Tensor& v,
                           const attend::AttentionOptions& o) {
  const index_t B = q.b, Hq = q.h, Sq = q.s, Dk = q.d, Sk = k.s, Dv = v.d;
  const index_t group = Hq / k.h;
  const real scale = o.scale ? real(*o.scale) : real(attend::default_scale(Dk));
  Tensor s(B, Hq, Sq, Sk), s_slack(B, Hq, Sq, Sk);
  for (index_t b = 0; b < B; ++b)
    for (index_t h = 0; h < Hq; ++h)
      for (index_t i = 0; i < Sq; ++i)
        for (index_t j = 0; j < Sk; ++j) {
          if (!visible(o, b, h, i, j, Sq, Sk)) continue;  // keys past the length are unread
          real dot = 0, mag = 0;
          for (index_t d = 0; d < Dk; ++d) {
            dot += q(b, h, i, d) * k(b, h / group, j, d);
            mag += std::fabs(q(b, h, i, d) * k(b, h / group, j, d));
          }
          s(b, h, i, j) = scale * dot;
          s_slack(b, h, i, j) = std::fabs(scale) * real(Dk + 2) * mag;
        }
  Attention r{Tensor(B, Hq, Sq, Dv), Tensor(B, Hq, Sq, Dv), {}, {}, softmax(s, s_slack, o)};
  r.lse = r.rows.lse;
  r.slack = r.rows.slack;
  const real inf = std::numeric_limits<real>::infinity();
  for (index_t b = 0; b < B; ++b)
    for (index_t h = 0; h < Hq; ++h)
      for (index_t i = 0; i < Sq; ++i) {
        // A row without mass (every visible logit -inf, as an additive -inf mask gives) is
        // fully masked: zeros whatever V holds. A NaN denominator (a NaN logit, or a NaN
        // sink) makes o = (sum p v) / z NaN, keys seen or not.
        const real row_lse = r.lse(b, h, i, 0);
        if (row_lse == -inf) continue;
        if (std::isnan(row_lse)) {
          for (index_t d = 0; d < Dv; ++d) r.o(b, h, i, d) = row_lse;
          continue;
        }
        for (index_t j = 0; j < Sk; ++j) {
          if (!visible(o, b, h, i, j, Sq, Sk)) continue;  // hidden keys take no part at all
          const real p = r.rows.p(b, h, i, j);
          for (index_t d = 0; d < Dv; ++d) {
            r.o(b, h, i, d) += p * v(b, h / group, j, d);
            r.o_abs(b, h, i, d) += std::fabs(p * v(b, h / group, j, d));
          }
        }
      }
  return r;
}

}  // namespace ref
