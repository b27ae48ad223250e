// decoder: generating token by token with a KV cache.
//
// A decoder produces one token per step, and the new token may look at every token before
// it. Recomputing K and V of the whole prefix at each step would be wasted work: they do
// not change. So each step projects only the new token, appends its key and value rows
// to a cache, and runs attention with one query (Sq = 1) against the cached keys.
//
//   cache storage  [1, H, capacity, D] for K and for V, allocated once
//   cache view     [1, H, length, D] over the same storage: the seq extent is the number
//                  of tokens so far; head_stride stays capacity * D. The view grows, the
//                  buffer never moves.
//   one step       x [1, E] -> q [1, H, 1, D], k and v rows appended at position t
//                  o [1, H, 1, D] = attention(q, K[0..t], V[0..t])
//                  y [1, E] = concat_h(o) WO^T
//
// The step uses the causal mask with Alignment::bottom_right: the last query row lines up
// with the last key, so the single query (the newest token) sees all t + 1 cached keys.
// (top_left would line it up with key 0 and let it see only the first token.)
//
// The model is a toy with random weights. Its input is the word's embedding plus the
// encoding of its position, and its "next token" is the word that a random language-model
// head scores highest. The words it picks mean nothing; the mechanics are the real ones,
// and they are checked: running the whole sequence at once (prefill: Sq = Sk = T, causal)
// must give, row by row, the outputs the steps gave.
#include <attend/attend.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <limits>
#include <random>
#include <string>
#include <vector>

namespace {

using attend::index_t;
using View = attend::TensorView<float>;

constexpr index_t kEmbed = 8;                  // E
constexpr index_t kHeads = 2;                  // H
constexpr index_t kHeadDim = kEmbed / kHeads;  // D
constexpr index_t kCapacity = 16;              // the most tokens the cache holds
constexpr index_t kTokens = 10;                // T: tokens fed through the decoder
const std::vector<std::string> kVocabulary = {"once",   "upon", "a",     "time", "there", "was",
                                              "dragon", "who",  "slept", "in",   "cave",  "."};
const std::vector<index_t> kPrompt = {0, 1, 2};  // "once upon a"

// Uniform in [-a, a) from the raw 32-bit Mersenne Twister output, whose sequence the C++
// standard fixes: every platform prints the same numbers.
std::vector<float> random_values(std::mt19937& gen, index_t n, float a) {
  std::vector<float> values(static_cast<std::size_t>(n));
  for (float& x : values) x = a * (2.0f * static_cast<float>(gen() / 4294967296.0) - 1.0f);
  return values;
}

struct Model {
  std::vector<float> embedding;  // [vocabulary, E]
  std::vector<float> in_proj;    // [3E, E]: WQ, WK, WV stacked
  std::vector<float> out_proj;   // [E, E]: WO
  std::vector<float> lm_head;    // [vocabulary, E]
  attend::QkvWeights<float> qkv() const {
    return attend::QkvWeights<float>::packed({in_proj.data(), 3 * kEmbed, kEmbed}, {}, kHeads,
                                             kHeads, kHeadDim);
  }
  attend::MatrixView<const float> wo() const { return {out_proj.data(), kEmbed, kEmbed}; }
};

// The decoder's input for word `id` at position t: its embedding plus the sinusoidal
// position encoding of Vaswani et al. (2017), section 3.5. Attention itself is blind to
// order; the position is what makes "once" at step 0 and "once" at step 5 differ.
std::array<float, kEmbed> token_input(const Model& m, index_t id, index_t t) {
  std::array<float, kEmbed> x{};
  for (index_t e = 0; e < kEmbed; ++e) {
    const double angle = double(t) / std::pow(10000.0, double(e - e % 2) / kEmbed);
    x[std::size_t(e)] = m.embedding[std::size_t(id * kEmbed + e)] +
                        float(e % 2 == 0 ? std::sin(angle) : std::cos(angle));
  }
  return x;
}

// K or V of the tokens so far: storage for kCapacity positions per head, viewed as
// [1, H, length, D]. Position t of head h lives at storage[(h * kCapacity + t) * D].
struct Cache {
  std::vector<float> storage = std::vector<float>(std::size_t(kHeads * kCapacity * kHeadDim));
  View first(index_t length) {
    return {storage.data(),       1,       kHeads, length, kHeadDim, kHeads * kCapacity * kHeadDim,
            kCapacity * kHeadDim, kHeadDim};
  }
  // Position t alone, [1, H, 1, D]: where a projection writes the new token's row.
  View at(index_t t) {
    View v = first(1);
    v.data += t * kHeadDim;
    return v;
  }
};

// The toy language-model head: the residual stream h = x + y [E] (the layer's input plus
// its attention output, as a transformer layer adds them) is scored against every word by
// the head's weights [vocabulary, E]; the best score wins (greedy decoding).
index_t next_token(const Model& m, const float* x, const float* y) {
  index_t best = 0;
  float best_logit = -std::numeric_limits<float>::infinity();
  for (index_t id = 0; id < index_t(kVocabulary.size()); ++id) {
    float logit = 0;
    for (index_t e = 0; e < kEmbed; ++e)
      logit += (x[e] + y[e]) * m.lm_head[std::size_t(id * kEmbed + e)];
    if (logit > best_logit) {
      best = id;
      best_logit = logit;
    }
  }
  return best;
}

// One decoder step for the token x [1, E] at position t: appends its k and v to the
// caches and writes its attention output y [1, E].
void decode_step(const Model& m, attend::MatrixView<const float> x, index_t t, Cache& k, Cache& v,
                 float* y) {
  const auto qkv = m.qkv();
  std::array<float, kHeads * kHeadDim> q_storage{}, o_storage{};
  const View q = View::bhsd(q_storage.data(), 1, kHeads, 1, kHeadDim);
  const View o = View::bhsd(o_storage.data(), 1, kHeads, 1, kHeadDim);

  attend::project_heads(x, qkv.wq, {}, q);
  attend::project_heads(x, qkv.wk, {}, k.at(t));  // appended in place
  attend::project_heads(x, qkv.wv, {}, v.at(t));

  attend::AttentionOptions opts;
  opts.causal = true;
  opts.alignment = attend::Alignment::bottom_right;  // the default; it matters here
  attend::attention(q, k.first(t + 1), v.first(t + 1), o, opts);
  attend::project_output(o, m.wo(), {}, attend::MatrixView<float>(y, 1, kEmbed));
}

// The whole sequence at once, as a prefill computes it: x [T, E] -> y [T, E], with fresh
// Q, K, V [1, H, T, D] and the causal mask (Sq = Sk = T, so both alignments agree).
std::vector<float> prefill(const Model& m, const std::vector<float>& x, index_t tokens) {
  std::vector<float> q(std::size_t(kHeads * tokens * kHeadDim)), k(q.size()), v(q.size()),
      o(q.size());
  const View qv = View::bhsd(q.data(), 1, kHeads, tokens, kHeadDim);
  const View kv = View::bhsd(k.data(), 1, kHeads, tokens, kHeadDim);
  const View vv = View::bhsd(v.data(), 1, kHeads, tokens, kHeadDim);
  const View ov = View::bhsd(o.data(), 1, kHeads, tokens, kHeadDim);
  attend::project_qkv(attend::MatrixView<const float>(x.data(), tokens, kEmbed), m.qkv(), qv, kv,
                      vv);
  attend::AttentionOptions opts;
  opts.causal = true;
  attend::attention(qv, kv, vv, ov, opts);
  std::vector<float> y(std::size_t(tokens * kEmbed));
  attend::project_output(ov, m.wo(), {}, attend::MatrixView<float>(y.data(), tokens, kEmbed));
  return y;
}

// Max |a - b| over rows [first, first + count) of two [*, E] matrices; infinite on NaN.
double max_row_difference(const std::vector<float>& a, const std::vector<float>& b, index_t first,
                          index_t count) {
  double d = 0;
  for (index_t i = first * kEmbed; i < (first + count) * kEmbed; ++i) {
    const double e = std::abs(double(a[std::size_t(i)]) - double(b[std::size_t(i)]));
    if (std::isnan(e)) return std::numeric_limits<double>::infinity();
    d = std::max(d, e);
  }
  return d;
}

}  // namespace

int main() {
  std::mt19937 gen(1997);
  const float a = 2.0f / std::sqrt(float(kEmbed));  // twice nn.Linear's initial range
  const Model m{random_values(gen, index_t(kVocabulary.size()) * kEmbed, 1.0f),
                random_values(gen, 3 * kEmbed * kEmbed, a), random_values(gen, kEmbed * kEmbed, a),
                random_values(gen, index_t(kVocabulary.size()) * kEmbed, a)};

  std::printf("attend decoder: generating token by token with a KV cache\n\n");
  std::printf("cache: K and V storage [1, %lld, %lld, %lld] each, allocated once\n",
              static_cast<long long>(kHeads), static_cast<long long>(kCapacity),
              static_cast<long long>(kHeadDim));
  std::printf("prompt: once upon a; then the toy model picks each next word\n\n");

  Cache k, v;
  std::vector<float> x, y_steps;  // the decoder's inputs [T, E] and outputs [T, E]
  std::string text;
  index_t id = kPrompt[0];
  for (index_t t = 0; t < kTokens; ++t) {
    y_steps.resize(std::size_t((t + 1) * kEmbed));
    float* y = y_steps.data() + t * kEmbed;
    const std::array<float, kEmbed> x_t = token_input(m, id, t);
    decode_step(m, {x_t.data(), 1, kEmbed}, t, k, v, y);
    x.insert(x.end(), x_t.begin(), x_t.end());
    text += (t ? " " : "") + kVocabulary[std::size_t(id)];

    const bool in_prompt = t + 1 < index_t(kPrompt.size());
    const index_t next = in_prompt ? kPrompt[std::size_t(t + 1)] : next_token(m, x_t.data(), y);
    std::printf("step %2lld  feed %-9s cache view [1, %lld, %2lld, %lld]  sees keys 0..%lld",
                static_cast<long long>(t), ("\"" + kVocabulary[std::size_t(id)] + "\"").c_str(),
                static_cast<long long>(kHeads), static_cast<long long>(t + 1),
                static_cast<long long>(kHeadDim), static_cast<long long>(t));
    std::printf("  -> %s (%s)\n", kVocabulary[std::size_t(next)].c_str(),
                in_prompt ? "prompt" : "picked");
    id = next;
  }
  std::printf("\ntext: %s ...\n\n", text.c_str());

  int failures = 0;
  const auto check = [&failures](double difference, double tol, const char* what) {
    const bool ok = difference <= tol;
    std::printf("%s: %s (max difference %.2e, tolerance %.2e)\n", ok ? "ok" : "FAILED", what,
                difference, tol);
    if (!ok) ++failures;
  };

  // The prefill groups the same sums differently (T rows per product instead of 1): allow
  // about one float epsilon per term of the longest chain of sums (projection E, score D,
  // softmax and merge T each, output projection E), times 4 for exp and the division,
  // relative to the size of the outputs.
  const std::vector<float> y_full = prefill(m, x, kTokens);
  double magnitude = 1;
  for (float value : y_full) magnitude = std::max(magnitude, double(std::abs(value)));
  const double tol = 4.0 * (kEmbed + kHeadDim + 2 * kTokens + kEmbed) *
                     std::numeric_limits<float>::epsilon() * magnitude;
  check(max_row_difference(y_full, y_steps, kTokens - 1, 1), tol,
        "last step == row T-1 of the full causal attention (prefill)");
  check(max_row_difference(y_full, y_steps, 0, kTokens), tol,
        "every step == its row of the prefill");

  std::printf("\n%s\n", failures == 0 ? "all checks passed" : "SOME CHECKS FAILED");
  return failures == 0 ? 0 : 1;
}
