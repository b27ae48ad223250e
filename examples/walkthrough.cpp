// walkthrough: one self-attention layer, one step at a time.
//
// The classic explanation of attention (Vaswani et al. 2017, "Attention Is All You Need"),
// made runnable on a six-token sentence. Every token is a vector of E = 8 numbers, a row
// of X [6, 8], and the layer has four learned weight matrices [8, 8], applied in the
// nn.Linear convention y = x W^T:
//
//   1. project  q = x WQ^T says what token x is looking for, k = x WK^T what it offers to
//               be found by, v = x WV^T what it hands over when found. The 8 columns
//               split into 2 heads of D = 4: each head attends on its own.
//   2. scores   S = Q K^T / sqrt(D): how well query i matches key j, one matrix per head.
//   3. softmax  each row of S becomes probabilities P that sum to 1: how much of each
//               token's value token i takes.
//   4. merge    O = P V: each token's new vector is the P-weighted mix of the value rows.
//   5. output   Y = concat_h(O) WO^T: the heads are put side by side again and mixed.
//
// It runs twice: as encoder attention (every token sees every token) and as decoder
// attention (causal: token i sees tokens 0..i only). Then attend::attention and
// attend::multihead_attention, one call each, must give the same result, and so must a
// plain double-precision loop that shares no code with attend.
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

constexpr index_t kTokens = 6;                 // S
constexpr index_t kEmbed = 8;                  // E
constexpr index_t kHeads = 2;                  // H
constexpr index_t kHeadDim = kEmbed / kHeads;  // D
const std::array<std::string, kTokens> kSentence = {"the", "cat", "sat", "on", "the", "mat"};

// Uniform in [-a, a) from the raw 32-bit Mersenne Twister output, whose sequence the C++
// standard fixes: every platform prints the same numbers.
std::vector<float> random_values(std::mt19937& gen, index_t n, float a) {
  std::vector<float> values(static_cast<std::size_t>(n));
  for (float& x : values) x = a * (2.0f * static_cast<float>(gen() / 4294967296.0) - 1.0f);
  return values;
}

// A dense [batch, heads, seq, dim] tensor (BHSD) that owns its storage.
struct Tensor {
  index_t batch, heads, seq, dim;
  std::vector<float> data = std::vector<float>(static_cast<std::size_t>(batch * heads * seq * dim));
  attend::TensorView<float> view() {
    return attend::TensorView<float>::bhsd(data.data(), batch, heads, seq, dim);
  }
};

// The layer's static weights, laid out as torch.nn.MultiheadAttention stores them.
struct Weights {
  std::vector<float> in_proj;   // [3E, E]: WQ, WK and WV stacked, each [E, E]
  std::vector<float> out_proj;  // [E, E]: WO
  attend::MatrixView<const float> in() const { return {in_proj.data(), 3 * kEmbed, kEmbed}; }
  attend::MatrixView<const float> wo() const { return {out_proj.data(), kEmbed, kEmbed}; }
  attend::QkvWeights<float> qkv() const {
    return attend::QkvWeights<float>::packed(in(), {}, kHeads, kHeads, kHeadDim);
  }
};

// ---- printing ---------------------------------------------------------------------------

double sum(const std::vector<float>& v) {
  double s = 0;
  for (float x : v) s += x;
  return s;
}

void print_shape_sum(const char* what, const std::string& shape, const std::vector<float>& v) {
  std::printf("          %-22s %-14s sum = %+10.6f\n", what, shape.c_str(), sum(v));
}

std::string shape(const Tensor& t) {
  return "[" + std::to_string(t.batch) + ", " + std::to_string(t.heads) + ", " +
         std::to_string(t.seq) + ", " + std::to_string(t.dim) + "]";
}

// Row `i` of head 0 of S or P [1, H, S, S], each entry labelled with its key's word.
void print_row(const char* name, attend::TensorView<float> t, index_t i, bool with_sum) {
  std::printf("          %s, head 0, query \"%s\":", name, kSentence[std::size_t(i)].c_str());
  double total = 0;
  for (index_t j = 0; j < kTokens; ++j) {
    const float value = t.head(0, 0)(i, j);
    total += value;
    std::printf(with_sum ? " %s %.3f" : " %s %+.2f", kSentence[std::size_t(j)].c_str(), value);
  }
  if (with_sum) std::printf("  (sum %.6f)", total);
  std::printf("\n");
}

// One head of P [1, H, S, S] as a table: row = query token, column = key token. Exact
// zeros print as "0", to tell a masked key from a small weight.
void print_probabilities(attend::TensorView<float> p, index_t head) {
  std::printf("          P of head %lld (row: query, column: key):\n          %5s",
              static_cast<long long>(head), "");
  for (const auto& w : kSentence) std::printf("%7s", w.c_str());
  std::printf("\n");
  for (index_t i = 0; i < kTokens; ++i) {
    std::printf("          %5s", kSentence[std::size_t(i)].c_str());
    for (index_t j = 0; j < kTokens; ++j) {
      const float pij = p.head(0, head)(i, j);
      if (pij == 0.0f)
        std::printf("%7s", "0");
      else
        std::printf("%7.3f", pij);
    }
    std::printf("\n");
  }
}

// ---- the layer, step by step ------------------------------------------------------------

struct StepResults {
  Tensor q{1, kHeads, kTokens, kHeadDim}, k = q, v = q;                      // [1, H, S, D]
  Tensor s{1, kHeads, kTokens, kTokens}, p = s;                              // [1, H, S, S]
  Tensor o = q;                                                              // [1, H, S, D]
  std::vector<float> y = std::vector<float>(std::size_t(kTokens * kEmbed));  // [S, E]
};

// Runs the five steps on x [S, E], printing what each one produced. `opts` holds the mask:
// none for the encoder, causal for the decoder.
StepResults attention_step_by_step(const std::vector<float>& x, const Weights& w,
                                   const attend::ScoreOptions& opts) {
  StepResults r;
  const attend::MatrixView<const float> xv(x.data(), kTokens, kEmbed);

  // X [S, E] . WQ^T [E, H*D] lands directly in heads: Q[0, h, i, :] is row i, columns
  // h*D .. h*D+D-1 of the product. Same for K and V.
  attend::project_qkv(xv, w.qkv(), r.q.view(), r.k.view(), r.v.view());
  std::printf("step 1  project: q, k, v of every token, split into %lld heads\n",
              static_cast<long long>(kHeads));
  print_shape_sum("Q = X WQ^T", shape(r.q), r.q.data);
  print_shape_sum("K = X WK^T", shape(r.k), r.k.data);
  print_shape_sum("V = X WV^T", shape(r.v), r.v.data);

  // Per head, S [S, S] = Q [S, D] . K^T [D, S] / sqrt(D).
  attend::scores(r.q.view(), r.k.view(), attend::default_scale(kHeadDim), r.s.view());
  std::printf("step 2  scores: how well each query matches each key\n");
  print_shape_sum("S = Q K^T / sqrt(4)", shape(r.s), r.s.data);
  const index_t sat = 2;  // the row shown: the query of "sat"
  print_row("S", r.s.view(), sat, false);
  if (opts.causal)
    std::printf("          (Q, K, V and S are the encoder's: the mask acts in the softmax)\n");

  // The mask acts here: a key that a row may not see gets probability exactly 0.
  attend::softmax(r.s.view(), r.p.view(), opts);
  std::printf("step 3  softmax of each row of S: attention weights\n");
  print_shape_sum("P = softmax(S)", shape(r.p), r.p.data);
  std::printf("          (each row sums to 1: %lld heads x %lld rows = %lld)\n",
              static_cast<long long>(kHeads), static_cast<long long>(kTokens),
              static_cast<long long>(kHeads * kTokens));
  print_row("P", r.p.view(), sat, true);
  print_probabilities(r.p.view(), 0);

  // Per head, O [S, D] = P [S, S] . V [S, D].
  attend::merge_values(r.p.view(), r.v.view(), r.o.view());
  std::printf("step 4  merge: each token's output is its P-weighted mix of the value rows\n");
  print_shape_sum("O = P V", shape(r.o), r.o.data);

  // Y [S, E] = concat_h(O[0, h]) [S, H*D] . WO^T.
  attend::project_output(r.o.view(), w.wo(), {},
                         attend::MatrixView<float>(r.y.data(), kTokens, kEmbed));
  std::printf("step 5  output projection: heads side by side, mixed by WO\n");
  print_shape_sum("Y = concat(O) WO^T", "[6, 8]", r.y);
  return r;
}

// ---- checks -----------------------------------------------------------------------------

using Rows = std::array<std::array<double, kEmbed>, kTokens>;  // [S, E]

// y [S, E] = x [S, E] . W^T, W [E, E] the `block`-th [E, E] block of rows of w.
Rows naive_linear(const Rows& x, const std::vector<float>& w, index_t block) {
  Rows y{};
  for (index_t i = 0; i < kTokens; ++i)
    for (index_t c = 0; c < kEmbed; ++c)
      for (index_t e = 0; e < kEmbed; ++e)
        y[i][c] += x[i][e] * w[std::size_t((block * kEmbed + c) * kEmbed + e)];
  return y;
}

// The same layer as plain loops in double, sharing no code with attend: the oracle.
// Returns Y [S, E], flattened.
std::vector<double> naive_layer(const std::vector<float>& x_float, const Weights& w, bool causal) {
  Rows x{};
  for (index_t i = 0; i < kTokens; ++i)
    for (index_t e = 0; e < kEmbed; ++e) x[i][e] = x_float[std::size_t(i * kEmbed + e)];
  // Head h is columns h*D .. h*D+D-1 of q, k, v and o.
  const Rows q = naive_linear(x, w.in_proj, 0), k = naive_linear(x, w.in_proj, 1),
             v = naive_linear(x, w.in_proj, 2);
  Rows o{};
  for (index_t h = 0; h < kHeads; ++h)
    for (index_t i = 0; i < kTokens; ++i) {
      const index_t visible = causal ? i + 1 : kTokens;
      std::array<double, kTokens> p{};
      double max = -std::numeric_limits<double>::infinity(), z = 0;
      for (index_t j = 0; j < visible; ++j) {
        for (index_t d = h * kHeadDim; d < (h + 1) * kHeadDim; ++d) p[j] += q[i][d] * k[j][d];
        p[j] /= std::sqrt(double(kHeadDim));
        max = std::max(max, p[j]);
      }
      for (index_t j = 0; j < visible; ++j) z += (p[j] = std::exp(p[j] - max));
      for (index_t j = 0; j < visible; ++j)
        for (index_t d = h * kHeadDim; d < (h + 1) * kHeadDim; ++d) o[i][d] += p[j] / z * v[j][d];
    }
  const Rows y = naive_linear(o, w.out_proj, 0);
  std::vector<double> flat;
  for (const auto& row : y) flat.insert(flat.end(), row.begin(), row.end());
  return flat;
}

// Two float computations of the same sums differ by rounding: at most about one epsilon
// per term added, relative to the size of the terms. The longest chain of sums here is a
// projection (E terms), a score (D), the softmax and the merge (S each) and the output
// projection (H*D = E); the factor 4 leaves room for the rounding of exp and the division.
double tolerance(double magnitude) {
  const double terms = kEmbed + kHeadDim + 2 * kTokens + kEmbed;
  return 4 * terms * std::numeric_limits<float>::epsilon() * std::max(1.0, magnitude);
}

// The larger of two error measures, where NaN counts as infinitely large (std::max would
// drop it, and a NaN result must never pass a check).
double worse(double d, double e) {
  return std::isnan(d) || std::isnan(e) ? std::numeric_limits<double>::infinity() : std::max(d, e);
}

template <class A, class B>
double max_difference(const A& a, const B& b) {
  double d = 0;
  for (std::size_t i = 0; i < a.size(); ++i) d = worse(d, std::abs(double(a[i]) - double(b[i])));
  return d;
}

template <class A>
double max_abs(const A& a) {
  double m = 0;
  for (auto x : a) m = std::max(m, std::abs(double(x)));
  return m;
}

int failures = 0;

void check(bool ok, const std::string& what) {
  std::printf("%s: %s\n", ok ? "ok" : "FAILED", what.c_str());
  if (!ok) ++failures;
}

void check_close(const std::string& what, double difference, double tol) {
  char numbers[96];
  std::snprintf(numbers, sizeof numbers, " (max difference %.2e, tolerance %.2e)", difference, tol);
  check(difference <= tol, what + numbers);
}

// The one-call forms against the step-by-step result r of the same layer.
void check_one_call_forms(const std::vector<float>& x, const Weights& w, bool causal,
                          StepResults& r) {
  attend::AttentionOptions opts;
  opts.causal = causal;

  // Steps 2 to 4 in one call: O from Q, K and V.
  Tensor o{1, kHeads, kTokens, kHeadDim};
  attend::attention(r.q.view(), r.k.view(), r.v.view(), o.view(), opts);
  check_close("attend::attention == steps 2-4", max_difference(o.data, r.o.data),
              tolerance(max_abs(r.o.data)));

  // Steps 1 to 5 in one call; self-attention passes X as query, key and value.
  const attend::MhaWeights<float> mha{w.in(), {}, w.wo(), {}, kHeads, 0};
  const attend::MatrixView<const float> xv(x.data(), kTokens, kEmbed);
  std::vector<float> y(r.y.size());
  attend::multihead_attention(xv, xv, xv, 1, mha,
                              attend::MatrixView<float>(y.data(), kTokens, kEmbed), opts);
  check_close("attend::multihead_attention == steps 1-5", max_difference(y, r.y),
              tolerance(max_abs(r.y)));

  const std::vector<double> reference = naive_layer(x, w, causal);
  check_close("steps 1-5 == plain double-precision loops", max_difference(r.y, reference),
              tolerance(max_abs(reference)));

  double worst_row = 0;
  for (index_t h = 0; h < kHeads; ++h)
    for (index_t i = 0; i < kTokens; ++i) {
      double s = 0;
      for (index_t j = 0; j < kTokens; ++j) s += r.p.view().head(0, h)(i, j);
      worst_row = worse(worst_row, std::abs(s - 1));
    }
  check_close("every row of P sums to 1", worst_row, tolerance(1));
}

}  // namespace

int main() {
  std::mt19937 gen(2017);
  // One embedding per distinct word: both "the" get the same vector, and no position is
  // added, so nothing but the mask can tell them apart.
  const std::array<std::string, 5> vocabulary = {"the", "cat", "sat", "on", "mat"};
  const std::vector<float> embeddings = random_values(gen, 5 * kEmbed, 1.0f);  // [5, E]
  std::vector<float> x;                                                        // X [S, E]
  for (const auto& word : kSentence) {
    const auto id = std::find(vocabulary.begin(), vocabulary.end(), word) - vocabulary.begin();
    x.insert(x.end(), embeddings.begin() + id * kEmbed, embeddings.begin() + (id + 1) * kEmbed);
  }
  // Weights of the size nn.Linear starts from (uniform in +-1/sqrt(E)), doubled so that
  // the attention weights come out clearly uneven.
  const float a = 2.0f / std::sqrt(float(kEmbed));
  const Weights w{random_values(gen, 3 * kEmbed * kEmbed, a),
                  random_values(gen, kEmbed * kEmbed, a)};

  std::printf("attend walkthrough: one self-attention layer, step by step\n\n");
  std::printf("sentence: the cat sat on the mat  (S = 6 tokens)\n");
  print_shape_sum("X: token embeddings", "[6, 8]", x);
  std::printf("          weights WQ, WK, WV, WO [8, 8], y = x W^T; 2 heads of D = 4\n");

  std::printf("\n=== encoder attention: unmasked, every token sees every token ===\n");
  StepResults encoder = attention_step_by_step(x, w, {});

  std::printf("\n=== decoder attention: causal, each token sees itself and earlier tokens ===\n");
  attend::ScoreOptions causal;
  causal.causal = true;
  StepResults decoder = attention_step_by_step(x, w, causal);

  std::printf("\n=== checks ===\n");
  std::printf("encoder:\n");
  check_one_call_forms(x, w, false, encoder);
  std::printf("decoder:\n");
  check_one_call_forms(x, w, true, decoder);
  bool future_is_zero = true;
  for (index_t h = 0; h < kHeads; ++h)
    for (index_t i = 0; i < kTokens; ++i)
      for (index_t j = i + 1; j < kTokens; ++j)
        future_is_zero = future_is_zero && decoder.p.view().head(0, h)(i, j) == 0.0f;
  check(future_is_zero, "causal P is exactly 0 above the diagonal (no token sees the future)");

  // Attention is blind to order: without positions, the two "the" (tokens 0 and 4) get the
  // same encoder output. The causal mask is what tells them apart in the decoder: the
  // first "the" sees only itself, the second sees "the cat sat on the".
  const auto row_difference = [](const std::vector<float>& y) {
    double d = 0;
    for (index_t c = 0; c < kEmbed; ++c)
      d = worse(d, std::abs(double(y[std::size_t(c)]) - y[std::size_t(4 * kEmbed + c)]));
    return d;
  };
  check_close("encoder: both \"the\" get the same output (attention ignores order)",
              row_difference(encoder.y), tolerance(max_abs(encoder.y)));
  // "Different" means far beyond rounding (100 times the tolerance), and not NaN.
  const double decoder_difference = row_difference(decoder.y);
  check(
      std::isfinite(decoder_difference) && decoder_difference > 100 * tolerance(max_abs(decoder.y)),
      "decoder: the two \"the\" get different outputs (they see different prefixes)");

  std::printf("\n%s\n", failures == 0 ? "all checks passed" : "SOME CHECKS FAILED");
  return failures == 0 ? 0 : 1;
}
