// The benchmark shapes, shared by every kernel, and the FLOP and byte conventions of the
// peer baselines (/work/shared/peers/README.md), so that a GFLOP/s figure here and one
// printed by a peer count the same work.
//
// Layout everywhere: fp32, BHSD, q [B, Hq, Sq, D], k and v [B, Hkv, Sk, D], dense.
// Query head h reads key/value head h / (Hq / Hkv).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "attend/view.hpp"

namespace attend_bench {

using attend::index_t;

struct AttentionShape {
  std::string name;
  index_t batch, q_heads, kv_heads, q_len, kv_len, head_dim;
  bool causal;
  std::vector<std::int32_t> key_lengths;  // [batch]; empty: every key is valid

  index_t group() const { return q_heads / kv_heads; }
  double scale() const { return 1.0 / std::sqrt(double(head_dim)); }
  bool is_decode() const { return q_len == 1; }
  index_t q_elems() const { return batch * q_heads * q_len * head_dim; }
  index_t kv_elems() const { return batch * kv_heads * kv_len * head_dim; }
  index_t score_elems() const { return batch * q_heads * q_len * kv_len; }
  index_t valid_keys(index_t b) const { return key_lengths.empty() ? kv_len : key_lengths[b]; }

  // Keys [0, limit) are visible to query row i of batch b, as attend's default
  // (bottom-right) alignment defines it: the last query sees the last valid key.
  index_t row_limit(index_t b, index_t i) const {
    const index_t keys = valid_keys(b);
    return causal ? std::clamp<index_t>(i + keys - q_len + 1, 0, keys) : keys;
  }

  // The peers' convention: causal with Sq == Sk counts the lower triangle,
  // 2 B Hq S (S + 1) D; everything else 4 B Hq Sq Sk D, key padding included.
  double attention_flops() const {
    const double heads = double(batch * q_heads);
    if (causal && q_len == kv_len) return 2.0 * heads * q_len * (q_len + 1.0) * head_dim;
    return 4.0 * heads * q_len * kv_len * head_dim;
  }
  // One product over all keys: scores (Q K^T) or the merge (P V), 2 B Hq Sq Sk D.
  double product_flops() const { return 2.0 * batch * q_heads * q_len * kv_len * head_dim; }
  // Decode is bound by reading the cache: bytes of K and V.
  double kv_bytes() const { return 2.0 * kv_elems() * sizeof(float); }
};

// A whole multi-head attention block (attend::multihead_attention): self-attention over
// [batch * seq, E] tokens with E = heads * head_dim.
struct MhaShape {
  AttentionShape attention;  // the core, whose name the block carries

  index_t embed() const { return attention.q_heads * attention.head_dim; }
  index_t tokens() const { return attention.batch * attention.q_len; }
  // Q, K, V projections, the attention core (peers' convention) and the output projection.
  double flops() const {
    const AttentionShape& a = attention;
    const double qkv_width = double(a.q_heads + 2 * a.kv_heads) * a.head_dim;
    return 2.0 * tokens() * embed() * qkv_width + a.attention_flops() +
           2.0 * tokens() * embed() * embed();
  }
};

// y [M, N] = x [M, K] . W^T with W [N, K] (nn.Linear layout).
struct GemmShape {
  std::string name;
  index_t m, n, k;
  bool decode = false;  // a decode step: few rows, bound by reading W from memory
  double flops() const { return 2.0 * m * n * k; }
  // What a decode-step product must read and write at least: W, x and y once each.
  double bytes() const { return double(n * k + m * k + m * n) * sizeof(float); }
};

// P1, P2: causal prefill (P2 with grouped-query attention); E1: encoder with key padding;
// D1, D2: one-token decode against a KV cache (D2 is batched and exceeds the caches).
inline std::vector<AttentionShape> attention_shapes() {
  return {
      {"P1", 1, 32, 32, 1024, 1024, 128, true, {}},
      {"P2", 1, 32, 8, 2048, 2048, 128, true, {}},
      {"E1", 8, 12, 12, 384, 384, 64, false, {384, 300, 256, 200, 384, 128, 64, 350}},
      {"D1", 1, 32, 8, 1, 4096, 128, false, {}},
      {"D2", 16, 32, 8, 1, 2048, 128, false, {}},
  };
}

inline AttentionShape attention_shape(const std::string& name) {
  for (const AttentionShape& s : attention_shapes())
    if (s.name == name) return s;
  return {};
}

// The encoder shape E1 as a BERT-base block: E = 768, 12 heads of 64.
inline std::vector<MhaShape> mha_shapes() {
  return {{attention_shape("E1")}};
}

// PR1: the fused QKV projection of a 32-head, D = 128 model over 512 tokens.
// PD1, PD16, PD64: the same projection in one decode step, for one sequence, for D2's
// batch of 16 and for a server's batch of 64. W (50 MB) outgrows the caches, so each call
// streams it from DRAM: at M = 1 and 2 FLOP per 4-byte weight the product is bound by
// bandwidth; M = 16 does 8 FLOP per byte, near one core's balance (Zen 4: 116 GFLOP/s
// against ~17 GB/s), and M = 64 is bound by its arithmetic.
// GEMM4096: the square 4096^3 product of issue 3's target ("within 5% of OpenBLAS"), the
// peers' `gemm4096`; each operand (64 MB) outgrows the caches, so only the blocking keeps
// the product compute-bound.
inline std::vector<GemmShape> gemm_shapes() {
  return {{"PR1", 512, 6144, 2048},
          {"GEMM4096", 4096, 4096, 4096},
          {"PD1", 1, 6144, 2048, true},
          {"PD16", 16, 6144, 2048, true},
          {"PD64", 64, 6144, 2048, true}};
}

}  // namespace attend_bench
