// ScoreOptions turned into per-row rules: which keys a query row may see, and what each
// visible score becomes before the softmax. Shared by softmax() and every attention path,
// so that the masks mean the same thing everywhere. See attend/options.hpp for the maths.
#pragma once

#include "attend/detail/config.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "attend/detail/check.hpp"
#include "attend/options.hpp"

ATTEND_NAMESPACE_BEGIN
namespace detail {

// A bias or mask [batch or 1, heads or 1, sq, sk].
template <class T>
void check_broadcast(const Checker& c, const char* name, const TensorView<const T>& t,
                     index_t batch, index_t heads, index_t sq, index_t sk) {
  c.tensor(name, t, {any, any, sq, sk});
  if (t.batch != 1 && t.batch != batch)
    c.fail(name, "expected batch extent 1 or " + std::to_string(batch) + ", got " +
                     std::to_string(t.batch));
  if (t.heads != 1 && t.heads != heads)
    c.fail(name, "expected heads extent 1 or " + std::to_string(heads) + ", got " +
                     std::to_string(t.heads));
}

// The largest scale or softcap accepted. The SIMD paths compute in float and fold log2(e)
// ~ 1.44 into these factors, so a value past half of float's range would become inf there
// (and 0 * inf a NaN logit) where the double reference stays finite.
constexpr double kMaxFactor = double(std::numeric_limits<float>::max()) / 2;

// Validates `o` for scores of shape [batch, heads, sq, sk].
inline void check_score_options(const Checker& c, const ScoreOptions& o, index_t batch,
                                index_t heads, index_t sq, index_t sk) {
  const index_t w[2] = {o.window.left, o.window.right};
  const char* side[2] = {"window.left", "window.right"};
  for (int i = 0; i < 2; ++i)
    if (w[i] < Window::unbounded)
      c.fail(side[i],
             "expected a key count >= 0 or Window::unbounded (-1), got " + std::to_string(w[i]));
  if (!(o.softcap >= 0 && o.softcap <= kMaxFactor))
    c.fail("softcap",
           "expected a value in [0, 1.7e38] (0 = off), got " + std::to_string(o.softcap));
  if (!o.key_lengths.empty()) {
    c.expect(o.key_lengths.size, batch, "key_lengths.size", "one length per batch");
    c.require(o.key_lengths.data != nullptr, "key_lengths", "null data");
    for (index_t b = 0; b < batch; ++b)
      if (o.key_lengths[b] < 0 || o.key_lengths[b] > sk)
        c.fail("key_lengths", "expected every length in [0, " + std::to_string(sk) + "], got " +
                                  std::to_string(o.key_lengths[b]) + " at batch " +
                                  std::to_string(b));
  }
  if (given(o.bias)) check_broadcast(c, "bias", o.bias, batch, heads, sq, sk);
  if (given(o.mask)) check_broadcast(c, "mask", o.mask, batch, heads, sq, sk);
  if (!o.alibi_slopes.empty()) {
    c.expect(o.alibi_slopes.size, heads, "alibi_slopes.size", "one slope per query head");
    c.require(o.alibi_slopes.data != nullptr, "alibi_slopes", "null data");
  }
  if (!o.sinks.empty()) {
    c.expect(o.sinks.size, heads, "sinks.size", "one sink logit per query head");
    c.require(o.sinks.data != nullptr, "sinks", "null data");
  }
}

// An output may not overlap any array of the options.
template <class Out>
void check_clear_of_options(const Checker& c, const std::string& name, const Out& out,
                            const ScoreOptions& o) {
  c.disjoint(name, out, "key_lengths", o.key_lengths);
  c.disjoint(name, out, "bias", o.bias);
  c.disjoint(name, out, "mask", o.mask);
  c.disjoint(name, out, "alibi_slopes", o.alibi_slopes);
  c.disjoint(name, out, "sinks", o.sinks);
}

// Grouped-query attention: query head h reads key/value head h / (q_heads / kv_heads).
inline void check_head_groups(const Checker& c, index_t q_heads, index_t kv_heads,
                              const std::string& kv_name) {
  if (kv_heads <= 0 && q_heads != 0) c.fail(kv_name + ".heads", "expected at least one head");
  if (kv_heads > 0 && q_heads % kv_heads != 0)
    c.fail(kv_name + ".heads", "expected a divisor of the " + std::to_string(q_heads) +
                                   " query heads (grouped-query attention), got " +
                                   std::to_string(kv_heads));
}

// Keys [begin, end) of one query row; empty when begin >= end.
struct KeyRange {
  index_t begin = 0;
  index_t end = 0;
  bool empty() const { return begin >= end; }
};

// The rules of ScoreOptions for one (batch b, query head h) pair of a [*, *, sq, sk]
// problem. Acc is the arithmetic type of the logits (float for float data, double for
// double).
template <class Acc>
class ScoreRule {
 public:
  ScoreRule(const ScoreOptions& o, index_t b, index_t h, index_t sq, index_t sk)
      : o_(o), b_(b), h_(h) {
    length_ = o.key_lengths.empty() ? sk : o.key_lengths[b];
    diagonal_ = o.alignment == Alignment::bottom_right ? length_ - sq : 0;
    slope_ = o.alibi_slopes.empty() ? Acc(0) : Acc(o.alibi_slopes[h]);
    softcap_ = Acc(o.softcap);
  }

  // The interval of keys that padding, causality and the window leave to row i. The
  // boolean mask may hide more inside it; nothing outside it is ever read.
  KeyRange keys(index_t i) const {
    const index_t diag = i + diagonal_;  // the key on the aligned diagonal of row i
    index_t begin = 0, end = length_;
    if (o_.causal) end = std::min(end, diag + 1);
    if (o_.window.right != Window::unbounded) end = std::min(end, diag + o_.window.right + 1);
    if (o_.window.left != Window::unbounded) begin = std::max(begin, diag - o_.window.left);
    return {begin, std::max(begin, end)};
  }

  // Does the boolean mask hide key j (in keys(i)) from row i?
  bool hidden(index_t i, index_t j) const { return !o_.mask.empty() && !at(o_.mask, i, j); }

  // The logit of key j in keys(i) from its scaled score s; -inf where the boolean mask
  // hides it (then s is not looked at, so a NaN there does not leak).
  Acc logit(index_t i, index_t j, Acc s) const {
    if (hidden(i, j)) return -std::numeric_limits<Acc>::infinity();
    if (softcap_ > 0) s = softcap_ * std::tanh(s / softcap_);
    if (slope_ != 0) s -= slope_ * static_cast<Acc>(std::abs(i + diagonal_ - j));
    if (!o_.bias.empty()) s += static_cast<Acc>(at(o_.bias, i, j));
    return s;
  }

  // True when logit(i, j, s) == s for every key in keys(i): no boolean mask, bias, ALiBi
  // or softcap. Vectorised kernels then need only the key ranges.
  bool plain() const {
    return o_.mask.empty() && o_.bias.empty() && slope_ == Acc(0) && softcap_ == Acc(0);
  }
  // True when keys(i) is all a row hides: no boolean mask (bias, ALiBi and softcap change
  // logits but hide nothing).
  bool ranges_only() const { return o_.mask.empty(); }

  bool has_sink() const { return !o_.sinks.empty(); }
  Acc sink() const { return static_cast<Acc>(o_.sinks[h_]); }

 private:
  // Element (i, j) of a [batch or 1, heads or 1, sq, sk] tensor, broadcasting.
  template <class T>
  T at(const TensorView<const T>& t, index_t i, index_t j) const {
    return t.row(t.batch == 1 ? 0 : b_, t.heads == 1 ? 0 : h_, i)[j];
  }

  const ScoreOptions& o_;
  index_t b_, h_;
  index_t length_;    // keys [0, length_) exist for this batch
  index_t diagonal_;  // row i's aligned diagonal is key i + diagonal_
  Acc slope_, softcap_;
};

}  // namespace detail
ATTEND_NAMESPACE_END
