// encoder_block: self-attention over a padded batch, as a BERT-style encoder runs it.
//
// Sentences have different lengths, but a batch is one rectangular tensor: the shorter
// sentences are padded to the longest one, S = 6 tokens, and the padding must not change
// anything. AttentionOptions::key_lengths says how many keys of each sequence are real;
// keys past that length get probability exactly 0 and are never even read.
//
//   X        [B*S, E] = [3*6, 8]   token rows, ordered (sequence, position)
//   weights  in_proj [3E, E] (WQ, WK, WV stacked) with bias [3E], out_proj [E, E] + [E]
//   Y        [B*S, E]              rows past a sequence's length are padding: ignored
//
// The padded rows of X are filled with NaN here. Had attention read one padded key, the
// NaN would have spread into the real rows; they stay finite, and each sequence's output
// is checked against running that sequence alone, unpadded (batch 1, S = its length).
#include <attend/attend.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <map>
#include <random>
#include <string>
#include <vector>

namespace {

using attend::index_t;

constexpr index_t kBatch = 3;                  // B
constexpr index_t kPadded = 6;                 // S, the longest sentence
constexpr index_t kEmbed = 8;                  // E
constexpr index_t kHeads = 2;                  // H
constexpr index_t kHeadDim = kEmbed / kHeads;  // D
const std::array<std::vector<std::string>, kBatch> kSentences = {{
    {"the", "cat", "sat", "on", "the", "mat"},
    {"dogs", "bark", "loudly"},
    {"birds", "sing", "in", "the", "morning"},
}};
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// Uniform in [-a, a) from the raw 32-bit Mersenne Twister output, whose sequence the C++
// standard fixes: every platform prints the same numbers.
std::vector<float> random_values(std::mt19937& gen, index_t n, float a) {
  std::vector<float> values(static_cast<std::size_t>(n));
  for (float& x : values) x = a * (2.0f * static_cast<float>(gen() / 4294967296.0) - 1.0f);
  return values;
}

struct Weights {
  std::vector<float> in_proj, in_bias;    // [3E, E], [3E]
  std::vector<float> out_proj, out_bias;  // [E, E], [E]
  attend::MhaWeights<float> mha() const {
    return {{in_proj.data(), 3 * kEmbed, kEmbed},
            in_bias,
            {out_proj.data(), kEmbed, kEmbed},
            out_bias,
            kHeads,
            0};
  }
};

// The padded batch X [B*S, E]: one embedding per distinct word, NaN rows as padding.
std::vector<float> padded_batch(std::mt19937& gen) {
  std::map<std::string, std::vector<float>> embedding;
  std::vector<float> x(std::size_t(kBatch * kPadded * kEmbed), kNaN);
  for (index_t b = 0; b < kBatch; ++b)
    for (std::size_t s = 0; s < kSentences[b].size(); ++s) {
      auto [it, is_new] = embedding.try_emplace(kSentences[b][s]);
      if (is_new) it->second = random_values(gen, kEmbed, 1.0f);
      std::copy(it->second.begin(), it->second.end(),
                x.begin() + (b * kPadded + index_t(s)) * kEmbed);
    }
  return x;
}

// Shows the mask at work: the attention weights of head 0 for sequence `b`, computed with
// the step-by-step calls. Returns whether every padded key got weight exactly 0, in every
// sequence, head and row.
bool show_padding_weights(const std::vector<float>& x, const Weights& w,
                          const attend::ScoreOptions& opts, index_t b) {
  std::vector<float> q(std::size_t(kBatch * kHeads * kPadded * kHeadDim)), k(q.size()), v(q.size());
  std::vector<float> p(std::size_t(kBatch * kHeads * kPadded * kPadded));
  using View = attend::TensorView<float>;
  const View qv = View::bhsd(q.data(), kBatch, kHeads, kPadded, kHeadDim);
  const View kv = View::bhsd(k.data(), kBatch, kHeads, kPadded, kHeadDim);
  const View vv = View::bhsd(v.data(), kBatch, kHeads, kPadded, kHeadDim);
  const View pv = View::bhsd(p.data(), kBatch, kHeads, kPadded, kPadded);
  const auto mha = w.mha();
  const auto qkv = attend::QkvWeights<float>::packed(mha.in_proj_weight, mha.in_proj_bias, kHeads,
                                                     kHeads, kHeadDim);
  attend::project_qkv(attend::MatrixView<const float>(x.data(), kBatch * kPadded, kEmbed), qkv, qv,
                      kv, vv);
  attend::scores(qv, kv, attend::default_scale(kHeadDim), pv);
  attend::softmax(pv, opts);  // in place: scores become probabilities

  const index_t length = opts.key_lengths[b];
  std::printf("attention weights, sequence %lld (length %lld, padded to %lld), head 0:\n%8s",
              static_cast<long long>(b), static_cast<long long>(length),
              static_cast<long long>(kPadded), "");
  for (index_t j = 0; j < kPadded; ++j)
    std::printf("%8s", j < length ? kSentences[b][std::size_t(j)].c_str() : "<pad>");
  std::printf("\n");
  // Rows of padded queries are not printed: their outputs are discarded (here they are
  // NaN). Exact zeros print as "0".
  for (index_t i = 0; i < length; ++i) {
    std::printf("%8s", kSentences[b][std::size_t(i)].c_str());
    for (index_t j = 0; j < kPadded; ++j) {
      const float pij = pv.head(b, 0)(i, j);
      if (pij == 0.0f)
        std::printf("%8s", "0");
      else
        std::printf("%8.3f", pij);
    }
    std::printf("\n");
  }

  bool zero = true;
  for (index_t bb = 0; bb < kBatch; ++bb)
    for (index_t h = 0; h < kHeads; ++h)
      for (index_t i = 0; i < kPadded; ++i)
        for (index_t j = opts.key_lengths[bb]; j < kPadded; ++j)
          zero = zero && pv.head(bb, h)(i, j) == 0.0f;
  return zero;
}

// Max |a - b| over n entries; infinite when either holds a NaN, so that NaN never passes.
double max_difference(const float* a, const float* b, index_t n) {
  double d = 0;
  for (index_t i = 0; i < n; ++i) {
    const double e = std::abs(double(a[i]) - double(b[i]));
    if (std::isnan(e)) return std::numeric_limits<double>::infinity();
    d = std::max(d, e);
  }
  return d;
}

// The padded and the alone runs compute the same sums, but an optimised kernel may group
// them differently for different shapes: allow about one epsilon per term of the longest
// chain of sums (projection E, score D, softmax and merge S each, output projection E),
// times 4 for exp and the division, relative to the size of the values.
double tolerance(double magnitude) {
  const double terms = kEmbed + kHeadDim + 2 * kPadded + kEmbed;
  return 4 * terms * std::numeric_limits<float>::epsilon() * std::max(1.0, magnitude);
}

}  // namespace

int main() {
  std::mt19937 gen(1810);
  const std::vector<float> x = padded_batch(gen);
  const float a = 1.0f / std::sqrt(float(kEmbed));  // nn.Linear's initial range
  const Weights w{random_values(gen, 3 * kEmbed * kEmbed, 2 * a), random_values(gen, 3 * kEmbed, a),
                  random_values(gen, kEmbed * kEmbed, 2 * a), random_values(gen, kEmbed, a)};

  std::printf("attend encoder block: self-attention over a padded batch\n\n");
  std::vector<std::int32_t> lengths;
  for (index_t b = 0; b < kBatch; ++b) {
    lengths.push_back(std::int32_t(kSentences[b].size()));
    std::printf("sequence %lld, length %d:", static_cast<long long>(b), lengths.back());
    for (index_t s = 0; s < kPadded; ++s)
      std::printf(" %s", s < lengths.back() ? kSentences[b][std::size_t(s)].c_str() : "<pad>");
    std::printf("\n");
  }
  std::printf("X [%lld*%lld, %lld], padded rows filled with NaN; key_lengths = {%d, %d, %d}\n",
              static_cast<long long>(kBatch), static_cast<long long>(kPadded),
              static_cast<long long>(kEmbed), lengths[0], lengths[1], lengths[2]);
  std::printf("(if attention read a single padded key, NaN would reach the real rows)\n\n");

  // Encoder attention: no causal mask, only the padding mask.
  attend::AttentionOptions opts;
  opts.key_lengths = lengths;

  int failures = 0;
  const auto check = [&failures](bool ok, const std::string& what) {
    std::printf("%s: %s\n", ok ? "ok" : "FAILED", what.c_str());
    if (!ok) ++failures;
  };

  const bool padding_ignored = show_padding_weights(x, w, opts, 1);
  check(padding_ignored, "every padded key has weight exactly 0, in every sequence and head");

  // The whole block, all sequences at once.
  std::vector<float> y(x.size());
  const attend::MatrixView<const float> xv(x.data(), kBatch * kPadded, kEmbed);
  attend::multihead_attention(xv, xv, xv, kBatch, w.mha(),
                              attend::MatrixView<float>(y.data(), kBatch * kPadded, kEmbed), opts);
  std::printf("\nmultihead_attention over the batch: Y [%lld, %lld]\n",
              static_cast<long long>(kBatch * kPadded), static_cast<long long>(kEmbed));

  // Each sequence alone: batch 1, S = its length, no padding and no key_lengths.
  for (index_t b = 0; b < kBatch; ++b) {
    const index_t length = lengths[std::size_t(b)];
    const float* xb = x.data() + b * kPadded * kEmbed;
    const float* yb = y.data() + b * kPadded * kEmbed;
    std::vector<float> alone(std::size_t(length * kEmbed));
    const attend::MatrixView<const float> xs(xb, length, kEmbed);
    attend::multihead_attention(xs, xs, xs, 1, w.mha(),
                                attend::MatrixView<float>(alone.data(), length, kEmbed));

    double magnitude = 0;
    for (float v : alone) magnitude = std::max(magnitude, double(std::abs(v)));
    const double difference = max_difference(yb, alone.data(), length * kEmbed);
    char what[160];
    std::snprintf(what, sizeof what,
                  "sequence %lld: padded batch == alone unpadded, %lld rows "
                  "(max difference %.2e, tolerance %.2e)",
                  static_cast<long long>(b), static_cast<long long>(length), difference,
                  tolerance(magnitude));
    check(difference <= tolerance(magnitude), what);
  }

  std::printf("\n%s\n", failures == 0 ? "all checks passed" : "SOME CHECKS FAILED");
  return failures == 0 ? 0 : 1;
}
