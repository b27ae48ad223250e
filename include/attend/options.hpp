// What happens to a row of attention scores between S = scale * Q K^T and the softmax.
//
// For query row i of batch b and head h, and key j, the logit that enters the softmax is
//
//   s  = scale * <q_i, k_j>                     (scores(): the only step with the scale)
//   s  = softcap * tanh(s / softcap)            if softcap > 0        (Gemma 2)
//   s += -alibi_slopes[h] * |i + d - j|         if alibi_slopes given (Press et al. 2022)
//   s += bias[b, h, i, j]                       if bias given (broadcast over b and h)
//   s  = -inf                                   if key j is masked for row i
//
// and the row's probabilities are p_j = exp(s_j) / (sum_j exp(s_j) + exp(sinks[h])), the
// sink term only when sinks are given. Key j is masked for row i when any of these holds:
//
//   j >= key_lengths[b]                          per-batch key padding
//   j > i + d                                    causal
//   j < i + d - window.left, j > i + d + window.right   sliding window (unbounded = -1)
//   mask[b, h, i, j] == false                    boolean mask (true = may attend)
//
// d is the alignment of the diagonal. With L = key_lengths[b] (or Sk without key lengths):
//   Alignment::bottom_right  d = L - Sq : the last query sees the last key. The KV-cache
//                            convention: the Sq queries are the newest Sq tokens.
//   Alignment::top_left      d = 0      : query i sees keys 0..i (PyTorch's is_causal).
// When Sq == Sk and there is no padding the two agree.
//
// A fully masked row yields probabilities (and output) of exact zeros and an LSE of -inf
// (the sink's logit, to rounding, when sinks are given), never NaN but from a NaN sink.
// Without a sink, a row whose every visible logit is -inf is fully masked too: zeros
// whatever its value rows hold.
#pragma once

#include "attend/detail/config.hpp"

#include <cmath>
#include <cstdint>
#include <optional>

#include "attend/view.hpp"

ATTEND_NAMESPACE_BEGIN

enum class Alignment : std::uint8_t { bottom_right, top_left };

// A sliding window of keys around the aligned diagonal: row i sees keys
// [i + d - left, i + d + right]. unbounded on a side removes that bound.
struct Window {
  static constexpr index_t unbounded = -1;
  index_t left = unbounded;
  index_t right = unbounded;
};

// Everything applied to the scores between the Q K^T product and the softmax: masks and
// logit modifications. Used by softmax() on precomputed scores and by attention().
// Every array is optional (empty = off) and is only read, never retained after the call.
struct ScoreOptions {
  bool causal = false;
  Alignment alignment = Alignment::bottom_right;  // for causal, window and ALiBi
  Window window{};

  // [batch]: keys j >= key_lengths[b] are masked and never read (their K, V rows may be
  // uninitialised). Each length is in [0, Sk].
  Span<const std::int32_t> key_lengths{};

  // Additive bias [batch or 1, heads or 1, Sq, Sk]; a dimension of extent 1 broadcasts.
  TensorView<const float> bias{};
  // Boolean mask [batch or 1, heads or 1, Sq, Sk]; true means the key may be attended.
  TensorView<const bool> mask{};

  // [heads]: ALiBi slope per query head; adds -slope * |i + d - j|.
  Span<const float> alibi_slopes{};
  // > 0: logits are soft-capped to (-softcap, softcap); 0 turns it off. At most 1.7e38
  // (half of float's range: the SIMD paths fold log2(e) into it).
  double softcap = 0.0;
  // [heads]: one extra logit per query head that joins the softmax denominator only
  // (attention sinks: Xiao et al. 2023, as in gpt-oss).
  Span<const float> sinks{};
};

// The conventional scale for head width dk: 1 / sqrt(dk).
inline double default_scale(index_t dk) {
  return dk > 0 ? 1.0 / std::sqrt(double(dk)) : 1.0;
}

// Options of the whole attention call: the score options plus the scale.
struct AttentionOptions : ScoreOptions {
  // Multiplies Q K^T; unset means 1 / sqrt(Dk). Finite, |scale| <= 1.7e38 (as softcap).
  std::optional<double> scale{};
};

ATTEND_NAMESPACE_END
