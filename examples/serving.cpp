// serving: a small decoder-only model serving several prompts at once, the way an inference
// engine does it: packed prefill, a paged KV cache, grouped-query attention, and batched
// decode steps over sequences of different lengths.
//
// The model (random weights: its words mean nothing, the mechanics are the real ones):
//   x = embedding(token) + position encoding                      [E]
//   per layer:  x += W_O attention(W_Q x, cache K, cache V)       (Hq query heads, Hkv kv heads)
//               x += W_2 relu(W_1 x)                              (the MLP)
//   next token = argmax(lm_head x)                                (greedy)
//
// Serving:
//   1. Prefill. All prompts' tokens are packed back to back, [total, E], with offsets
//      cu_seqlens: one projection for all of them, attention_varlen (each prompt attends to
//      itself only, causally), and append() writes every prompt's K and V rows into the
//      paged cache of each layer.
//   2. Decode. Each step feeds one token per sequence, [B, E]: append() its K and V, then
//      decode_attention() against the cache, whose sequences have different lengths.
//   The cache is paged (PagedKvCache): blocks of kBlockSize tokens from one pool, handed
//   to a sequence when it needs one, as vLLM's PagedAttention does. Here the block allocator
//   is a free list; an engine would also free the blocks of finished sequences.
//
// The check at the end: recomputing one sequence from scratch (prompt and generated tokens
// as one causal prefill, dense, no cache) must give the hidden state the decode steps gave.
#include <attend/attend.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <random>
#include <vector>

namespace {

using attend::index_t;
using attend::MatrixView;
using attend::TensorView;

constexpr index_t kVocab = 512;
constexpr index_t kEmbed = 512;                            // E
constexpr index_t kQHeads = 8, kKvHeads = 2, kDim = 64;    // Hq, Hkv, D: groups of 4
constexpr index_t kQkv = (kQHeads + 2 * kKvHeads) * kDim;  // one projection's outputs
constexpr index_t kHidden = 4 * kEmbed;                    // MLP width
constexpr index_t kLayers = 4;
constexpr index_t kBlockSize = 16;    // tokens per cache block
constexpr index_t kPoolBlocks = 256;  // blocks in each layer's pool (4096 tokens)
constexpr index_t kMaxBlocks = 64;    // block-table columns: up to 1024 tokens a sequence
constexpr index_t kNewTokens = 32;    // tokens generated per sequence

std::vector<float> random_values(std::mt19937& gen, index_t n, float a) {
  std::uniform_real_distribution<float> dist(-a, a);
  std::vector<float> v(static_cast<std::size_t>(n));
  for (float& x : v) x = dist(gen);
  return v;
}

struct Layer {
  attend::PackedWeight wqkv, wo, w1, w2;  // nn.Linear layout [out, in], packed once
};

struct Model {
  std::vector<float> embedding;  // [vocab, E]
  std::vector<Layer> layers;
  attend::PackedWeight lm_head;  // [vocab, E]
};

attend::PackedWeight random_weight(std::mt19937& gen, index_t out, index_t in) {
  const std::vector<float> w = random_values(gen, out * in, 1.0f / std::sqrt(float(in)));
  return attend::PackedWeight({w.data(), out, in});
}

Model make_model() {
  std::mt19937 gen(2024);
  Model m;
  m.embedding = random_values(gen, kVocab * kEmbed, 1.0f);
  for (index_t l = 0; l < kLayers; ++l)
    m.layers.push_back({random_weight(gen, kQkv, kEmbed),
                        random_weight(gen, kEmbed, kQHeads * kDim),
                        random_weight(gen, kHidden, kEmbed), random_weight(gen, kEmbed, kHidden)});
  m.lm_head = random_weight(gen, kVocab, kEmbed);
  return m;
}

// Token `id` at position t: its embedding plus the sinusoidal position encoding (Vaswani et
// al. 2017, section 3.5), written to x[0, E).
void embed(const Model& m, index_t id, index_t t, float* x) {
  for (index_t e = 0; e < kEmbed; ++e) {
    const double angle = double(t) / std::pow(10000.0, double(e - e % 2) / kEmbed);
    x[e] = m.embedding[std::size_t(id * kEmbed + e)] +
           float(e % 2 == 0 ? std::sin(angle) : std::cos(angle));
  }
}

// The Q, K and V heads inside the projection's output [tokens, kQkv]: token-major, so each
// is a [1 or tokens, heads, ...] view with the heads interleaved (BSHD).
struct Heads {
  TensorView<float> q, k, v;
};
Heads split_qkv(float* qkv, index_t batch, index_t seq) {
  const index_t row = kQkv, bs = seq * row;  // a batch holds seq tokens
  return {{qkv, batch, kQHeads, seq, kDim, bs, kDim, row},
          {qkv + kQHeads * kDim, batch, kKvHeads, seq, kDim, bs, kDim, row},
          {qkv + (kQHeads + kKvHeads) * kDim, batch, kKvHeads, seq, kDim, bs, kDim, row}};
}

// One layer's cache: a pool of blocks and the lengths of its sequences. All layers share
// one block table (every layer holds the same tokens, so they need the same blocks).
struct LayerCache {
  std::vector<float> k =
      std::vector<float>(std::size_t(kPoolBlocks * kKvHeads * kBlockSize * kDim));
  std::vector<float> v = k;
  std::vector<std::int32_t> lengths;
  attend::PagedKvCache<float> view(const std::vector<std::int32_t>& table, index_t sequences) {
    return {TensorView<float>::bhsd(k.data(), kPoolBlocks, kKvHeads, kBlockSize, kDim),
            TensorView<float>::bhsd(v.data(), kPoolBlocks, kKvHeads, kBlockSize, kDim),
            {table.data(), sequences, kMaxBlocks},
            lengths};
  }
};

struct Cache {
  std::vector<std::int32_t> table;  // [sequences, kMaxBlocks], -1 = unassigned
  std::vector<std::int32_t> free_blocks;
  std::vector<LayerCache> layers = std::vector<LayerCache>(kLayers);
  index_t sequences;

  explicit Cache(index_t n) : table(std::size_t(n * kMaxBlocks), -1), sequences(n) {
    for (index_t b = kPoolBlocks - 1; b >= 0; --b) free_blocks.push_back(std::int32_t(b));
    for (LayerCache& l : layers) l.lengths.assign(std::size_t(n), 0);
  }
  // Hands sequence s the blocks it needs to hold `tokens` tokens.
  void reserve(index_t s, index_t tokens) {
    for (index_t i = 0; i * kBlockSize < tokens; ++i) {
      std::int32_t& entry = table[std::size_t(s * kMaxBlocks + i)];
      if (entry >= 0) continue;
      if (free_blocks.empty()) throw std::runtime_error("KV cache pool exhausted");
      entry = free_blocks.back();
      free_blocks.pop_back();
    }
  }
  attend::PagedKvCache<float> layer(index_t l) {
    return layers[std::size_t(l)].view(table, sequences);
  }
};

// x [tokens, E] += the MLP of x, and the attention output projection before it: the parts
// of a layer that treat every token alike.
void add_projection(const attend::PackedWeight& w, MatrixView<const float> in, MatrixView<float> x,
                    const attend::Context& ctx) {
  std::vector<float> y(std::size_t(x.rows * x.cols));
  attend::linear(in, w, {}, MatrixView<float>(y.data(), x.rows, x.cols), ctx);
  for (index_t i = 0; i < x.rows; ++i)
    for (index_t e = 0; e < x.cols; ++e) x(i, e) += y[std::size_t(i * x.cols + e)];
}
void add_mlp(const Layer& layer, MatrixView<float> x, const attend::Context& ctx) {
  std::vector<float> h(std::size_t(x.rows * kHidden));
  attend::linear(x, layer.w1, {}, MatrixView<float>(h.data(), x.rows, kHidden), ctx);
  for (float& value : h) value = std::max(value, 0.0f);
  add_projection(layer.w2, {h.data(), x.rows, kHidden}, x, ctx);
}

// Prefill of packed prompts x [total, E] (offsets cu), filling the cache; x becomes the
// last layer's hidden states.
void prefill(const Model& m, Cache& cache, const std::vector<std::int32_t>& cu,
             std::vector<float>& x, const attend::Context& ctx) {
  const index_t total = cu.back();
  std::vector<float> qkv(std::size_t(total * kQkv)), o(std::size_t(total * kQHeads * kDim));
  const MatrixView<float> xv(x.data(), total, kEmbed);
  attend::AttentionOptions causal;
  causal.causal = true;
  for (index_t l = 0; l < kLayers; ++l) {
    const Layer& layer = m.layers[std::size_t(l)];
    attend::linear(xv, layer.wqkv, {}, MatrixView<float>(qkv.data(), total, kQkv), ctx);
    const Heads h = split_qkv(qkv.data(), 1, total);
    const auto ov = TensorView<float>::bshd(o.data(), 1, total, kQHeads, kDim);
    attend::attention_varlen(h.q, h.k, h.v, cu, cu, ov, causal, {}, ctx);
    for (index_t s = 0; s + 1 < index_t(cu.size()); ++s) {  // sequence s's rows into its blocks
      const std::int32_t seq[] = {std::int32_t(s)};
      const index_t first = cu[std::size_t(s)], n = cu[std::size_t(s + 1)] - first;
      attend::append(cache.layer(l), h.k.seq_slice(first, n), h.v.seq_slice(first, n), {seq, 1},
                     ctx);
    }
    add_projection(layer.wo, {o.data(), total, kQHeads * kDim}, xv, ctx);
    add_mlp(layer, xv, ctx);
  }
}

// One decode step: x [B, E] holds one token per sequence, already in the caches' blocks'
// reach; x becomes the last layer's hidden states.
void decode_step(const Model& m, Cache& cache, std::vector<float>& x, const attend::Context& ctx) {
  const index_t batch = cache.sequences;
  std::vector<float> qkv(std::size_t(batch * kQkv)), o(std::size_t(batch * kQHeads * kDim));
  const MatrixView<float> xv(x.data(), batch, kEmbed);
  for (index_t l = 0; l < kLayers; ++l) {
    const Layer& layer = m.layers[std::size_t(l)];
    attend::linear(xv, layer.wqkv, {}, MatrixView<float>(qkv.data(), batch, kQkv), ctx);
    const Heads h = split_qkv(qkv.data(), batch, 1);
    attend::append(cache.layer(l), h.k, h.v, {}, ctx);
    attend::decode_attention(h.q, cache.layer(l),
                             TensorView<float>::bshd(o.data(), batch, 1, kQHeads, kDim), {}, {},
                             ctx);
    add_projection(layer.wo, {o.data(), batch, kQHeads * kDim}, xv, ctx);
    add_mlp(layer, xv, ctx);
  }
}

// Greedy choice from hidden state x [E].
index_t next_token(const Model& m, const float* x, const attend::Context& ctx) {
  std::vector<float> logits(static_cast<std::size_t>(kVocab));
  attend::linear(MatrixView<const float>(x, 1, kEmbed), m.lm_head, {},
                 MatrixView<float>(logits.data(), 1, kVocab), ctx);
  return std::max_element(logits.begin(), logits.end()) - logits.begin();
}

// The hidden state of the last token of `tokens`, from scratch: one dense causal prefill.
std::vector<float> recompute_last(const Model& m, const std::vector<index_t>& tokens,
                                  const attend::Context& ctx) {
  const index_t n = index_t(tokens.size());
  std::vector<float> x(std::size_t(n * kEmbed));
  for (index_t t = 0; t < n; ++t) embed(m, tokens[std::size_t(t)], t, x.data() + t * kEmbed);
  Cache scratch(1);
  scratch.reserve(0, n);
  prefill(m, scratch, {0, std::int32_t(n)}, x, ctx);
  return {x.end() - kEmbed, x.end()};
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

int main() {
  attend::ThreadPool pool;
  attend::Context ctx;
  ctx.executor = &pool;
  const Model m = make_model();
  const std::vector<index_t> prompt_lengths = {37, 5, 200, 64, 1, 120};
  const index_t batch = index_t(prompt_lengths.size());
  std::printf(
      "attend serving: %lld layers, E = %lld, %lld query heads sharing %lld kv heads of %lld,\n"
      "paged cache of %lld-token blocks, %lld threads, path %s\n\n",
      (long long)kLayers, (long long)kEmbed, (long long)kQHeads, (long long)kKvHeads,
      (long long)kDim, (long long)kBlockSize, (long long)pool.concurrency(),
      attend::name(attend::default_isa()));

  // Prompts of random words, packed back to back.
  std::mt19937 gen(7);
  std::vector<std::vector<index_t>> tokens(static_cast<std::size_t>(batch));
  std::vector<std::int32_t> cu = {0};
  for (index_t s = 0; s < batch; ++s) {
    for (index_t t = 0; t < prompt_lengths[std::size_t(s)]; ++t)
      tokens[std::size_t(s)].push_back(index_t(gen() % kVocab));
    cu.push_back(cu.back() + std::int32_t(prompt_lengths[std::size_t(s)]));
  }
  Cache cache(batch);
  std::vector<float> x(std::size_t(cu.back() * kEmbed));
  for (index_t s = 0; s < batch; ++s) {
    cache.reserve(s, prompt_lengths[std::size_t(s)]);
    for (index_t t = 0; t < prompt_lengths[std::size_t(s)]; ++t)
      embed(m, tokens[std::size_t(s)][std::size_t(t)], t,
            x.data() + (cu[std::size_t(s)] + t) * kEmbed);
  }
  auto start = std::chrono::steady_clock::now();
  prefill(m, cache, cu, x, ctx);
  const double prefill_s = seconds_since(start);
  std::printf("prefill: %lld prompts, %d tokens packed (no padding) in %.1f ms: %.0f tokens/s\n",
              (long long)batch, cu.back(), 1e3 * prefill_s, cu.back() / prefill_s);

  // Decode: the first new token of each sequence comes from its prompt's last hidden state.
  std::vector<float> step(std::size_t(batch * kEmbed)), last(step.size());
  for (index_t s = 0; s < batch; ++s)
    std::copy_n(x.data() + (cu[std::size_t(s) + 1] - 1) * kEmbed, kEmbed, last.data() + s * kEmbed);
  start = std::chrono::steady_clock::now();
  for (index_t t = 0; t < kNewTokens; ++t) {
    for (index_t s = 0; s < batch; ++s) {
      std::vector<index_t>& seq = tokens[std::size_t(s)];
      seq.push_back(next_token(m, last.data() + s * kEmbed, ctx));
      const index_t position = index_t(seq.size()) - 1;
      cache.reserve(s, position + 1);
      embed(m, seq.back(), position, step.data() + s * kEmbed);
    }
    decode_step(m, cache, step, ctx);
    last = step;
  }
  const double decode_s = seconds_since(start);
  std::printf("decode:  %lld steps x %lld sequences in %.1f ms: %.0f tokens/s\n",
              (long long)kNewTokens, (long long)batch, 1e3 * decode_s,
              double(kNewTokens * batch) / decode_s);
  std::printf("cache:   %zu of %lld blocks in use; sequence lengths",
              kPoolBlocks - cache.free_blocks.size(), (long long)kPoolBlocks);
  for (std::int32_t length : cache.layers[0].lengths) std::printf(" %d", length);
  std::printf("\n\n");

  // Sequence 2 (the longest prompt) recomputed from scratch: every token it holds was fed,
  // the last one by the last decode step.
  const std::vector<float> fresh = recompute_last(m, tokens[2], ctx);
  double difference = 0, magnitude = 0;
  for (index_t e = 0; e < kEmbed; ++e) {
    difference = std::max(
        difference, double(std::abs(fresh[std::size_t(e)] - last[std::size_t(2 * kEmbed + e)])));
    magnitude = std::max(magnitude, double(std::abs(fresh[std::size_t(e)])));
  }
  // Each layer's sums (projections of E and 4E terms, attention over up to 232 keys) are
  // grouped differently in one prefill than in many steps: allow a float epsilon per term
  // of the longest chain per layer, relative to the state's size.
  const double tolerance = kLayers * double(kEmbed + kHidden + 2 * 232) *
                           std::numeric_limits<float>::epsilon() * magnitude;
  const bool ok = difference <= tolerance;
  std::printf(
      "%s: decode steps == a fresh prefill of sequence 2 (max difference %.2e, "
      "tolerance %.2e)\n",
      ok ? "ok" : "FAILED", difference, tolerance);
  return ok ? 0 : 1;
}
