// ScoreOptions decoded from fuzz bytes, with the arrays they point to: every mask and logit
// modification of attend/options.hpp, each on or off, for scores [B, H, Sq, Sk].
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "attend/options.hpp"
#include "fuzz_support.hpp"

namespace fuzz {

struct ScoreOptionsCase {
  attend::AttentionOptions opts;  // softmax() reads its ScoreOptions part
  std::vector<std::int32_t> key_lengths;
  std::unique_ptr<TensorBuffer<float>> bias;  // [B or 1, H or 1, Sq, Sk]
  std::unique_ptr<MaskBuffer> mask;           // [B or 1, H or 1, Sq, Sk]
  unsigned mask_density = 0;                  // P(true) = density / 4
  bool alibi = false, sinks = false;
  std::vector<float> slopes, sink_logits;  // [H]

  // The structure: which options are on, their extents and layouts. Key lengths are part
  // of it (they decide which keys exist), so they come from the case, not from Values.
  // `for_decode`: decode_attention's defaults (causal and bottom-right, three times in
  // four) and no key lengths (a KV cache's lengths take their place).
  void decode(Case& c, index_t B, index_t H, index_t Sq, index_t Sk, bool for_decode = false) {
    attend::ScoreOptions& o = opts;
    if (for_decode) {
      o.causal = !c.one_in(4, "not_causal");
      if (c.one_in(4, "top_left")) o.alignment = attend::Alignment::top_left;
    } else {
      o.causal = c.flag("causal");
      o.alignment = c.choose<attend::Alignment>("alignment",
                                                {{attend::Alignment::bottom_right, "bottom_right"},
                                                 {attend::Alignment::top_left, "top_left"}});
    }
    if (c.flag("window")) {
      // -1 is Window::unbounded; a bound past Sk is as good as none, but legal.
      o.window.left = c.pick<index_t>("window.left", -1, Sk + 2);
      o.window.right = c.pick<index_t>("window.right", -1, Sk + 2);
    }
    if (!for_decode && c.flag("key_lengths")) {
      for (index_t b = 0; b < B; ++b)
        key_lengths.push_back(c.pick<std::int32_t>("key_length", 0, std::int32_t(Sk)));
      o.key_lengths = key_lengths;
    }
    if (c.flag("bias")) {
      const index_t bb = c.flag("bias.per_batch") ? B : 1, bh = c.flag("bias.per_head") ? H : 1;
      bias = make_tensor<float>(bb, bh, Sq, Sk, decode_layout(c, "bias", false));
      o.bias = bias->in();
    }
    if (c.flag("mask")) {
      const index_t mb = c.flag("mask.per_batch") ? B : 1, mh = c.flag("mask.per_head") ? H : 1;
      mask_density = c.pick<unsigned>("mask.density/4", 0, 4);
      mask = std::make_unique<MaskBuffer>(mb, mh, Sq, Sk);
      o.mask = mask->view;
    }
    alibi = c.flag("alibi");
    o.softcap = c.choose<double>("softcap", {{0.0, "0"},
                                             {0.0, "0"},
                                             {0.5, "0.5"},
                                             {5.0, "5"},
                                             {50.0, "50"},
                                             {1e30, "1e30"},
                                             {1.7e38, "1.7e38"}});  // the largest accepted
    sinks = c.flag("sinks");
    (void)H;
  }

  // The values: bias, mask bits, ALiBi slopes and sink logits.
  void fill(Values& v, index_t H) {
    if (bias) v.fill(*bias);
    if (mask) {
      const attend::TensorView<bool>& m = mask->view;
      for (index_t b = 0; b < m.batch; ++b)
        for (index_t h = 0; h < m.heads; ++h)
          for (index_t i = 0; i < m.seq; ++i)
            for (index_t j = 0; j < m.dim; ++j) m.row(b, h, i)[j] = (v.bits() & 3u) < mask_density;
    }
    if (alibi) opts.alibi_slopes = slopes = v.vector<float>(H);
    if (sinks) opts.sinks = sink_logits = v.vector<float>(H);
  }

  // The largest finite magnitude the options add to a logit of a [*, *, Sq, Sk] problem:
  // |bias| + |slope| * (Sq + Sk) (the ALiBi distance is below that), and |sink|.
  ref::real finite_magnitude(index_t Sq, index_t Sk) const {
    ref::real bias_max = 0, slope_max = 0, sink_max = 0;
    if (bias) bias->for_each([&](float& x) { bias_max = std::max(bias_max, finite_abs(x)); });
    for (float s : slopes) slope_max = std::max(slope_max, finite_abs(s));
    for (float s : sink_logits) sink_max = std::max(sink_max, finite_abs(s));
    return bias_max + slope_max * ref::real(Sq + Sk) + sink_max;
  }
};

// Breaks one option so that the call must refuse it; returns the argument the refusal must
// name, or an empty string when this case has nothing of that kind to break.
inline std::string break_option(int which, ScoreOptionsCase& s, index_t B, index_t H) {
  attend::ScoreOptions& o = s.opts;
  switch (which) {
    case 0:
      o.window.right = -3;
      return "window.right";
    case 1:
      o.softcap = -1.0;
      return "softcap";
    case 7:
      o.softcap = std::numeric_limits<double>::quiet_NaN();
      return "softcap";
    case 8:  // past options.hpp's largest, 1.7e38 (half of float's range)
      o.softcap = 2e38;
      return "softcap";
    case 2:
      if (s.key_lengths.empty()) {
        s.key_lengths.assign(std::size_t(B + 1), 0);
        o.key_lengths = s.key_lengths;
        return "key_lengths.size";
      }
      s.key_lengths.back() = -1;
      return "key_lengths";
    case 3:
      if (!s.bias || H == 0) return "";
      o.bias.heads = H + 1;  // neither 1 nor H
      return "bias";
    case 4:
      if (!s.mask) return "";
      o.mask.seq += 1;
      return "mask";
    case 5:
      s.slopes.assign(std::size_t(H + 1), 0.5f);
      o.alibi_slopes = s.slopes;
      return "alibi_slopes.size";
    case 6:
      s.sink_logits.assign(std::size_t(H + 1), 0.0f);
      o.sinks = s.sink_logits;
      return "sinks.size";
    default:
      o.window.left = -2;
      return "window.left";
  }
}
constexpr int kOptionBreaks = 10;  // cases 0 to 8 and the default

// AttentionOptions::scale: unset (1 / sqrt(Dk)) half the time, else from 0 and negative
// values up to the largest accepted, 1.7e38, which overflows float's logits.
inline std::optional<double> pick_scale(Case& c) {
  return c.choose<std::optional<double>>("scale", {{std::nullopt, "default"},
                                                   {std::nullopt, "default"},
                                                   {1.0, "1"},
                                                   {0.125, "0.125"},
                                                   {0.0, "0"},
                                                   {-0.5, "-0.5"},
                                                   {1e3, "1e3"},
                                                   {1e30, "1e30"},
                                                   {1.7e38, "1.7e38"}});
}

}  // namespace fuzz
