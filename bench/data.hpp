// The inputs of the attention-shaped benchmarks and attend's views of them.
//
// Each shape's inputs are filled once (fixed seeds, uniform(-1, 1)) and shared by attend
// and the Eigen baseline, by every kernel and every repetition: they stay allocated for
// the whole run (well under 1 GB for the shape table).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "attend/options.hpp"
#include "attend/view.hpp"
#include "shapes.hpp"

namespace attend_bench {

// n values uniform in (-scale, scale) from a fixed seed: every run sees the same data.
std::vector<float> uniform(std::size_t n, std::uint32_t seed, float scale = 1);

struct AttentionData {
  std::vector<float> q;       // [B, Hq, Sq, D]
  std::vector<float> k, v;    // [B, Hkv, Sk, D]
  std::vector<float> scores;  // [B, Hq, Sq, Sk]: input of the softmax and merge kernels;
                              // filled on first use, as it is the largest buffer
};

// The inputs of `shape` (by name), created on first use.
AttentionData& attention_data(const AttentionShape& shape);
const std::vector<float>& score_data(const AttentionShape& shape);

struct LinearData {
  std::vector<float> x;    // [M, K]
  std::vector<float> w;    // [N, K], nn.Linear layout
  std::vector<float> w_t;  // [K, N], the same weight transposed; filled on first use
};

// The inputs of `shape` (by name), created on first use; in_out_weight(shape) fills and
// returns its w_t.
const LinearData& linear_data(const GemmShape& shape);
const std::vector<float>& in_out_weight(const GemmShape& shape);

// What follows makes attend's types, so it lives in attend's ABI namespace
// (detail/config.hpp), as attend does: bench/ab builds it against two revisions of attend
// into one program, in which both read the same AttentionData.
inline namespace ATTEND_ABI {

// Dense BHSD views of buffers of `shape`.
template <class T>
attend::TensorView<T> q_view(const AttentionShape& s, T* data) {
  return attend::TensorView<T>::bhsd(data, s.batch, s.q_heads, s.q_len, s.head_dim);
}
template <class T>
attend::TensorView<T> kv_view(const AttentionShape& s, T* data) {
  return attend::TensorView<T>::bhsd(data, s.batch, s.kv_heads, s.kv_len, s.head_dim);
}
template <class T>
attend::TensorView<T> score_view(const AttentionShape& s, T* data) {
  return attend::TensorView<T>::bhsd(data, s.batch, s.q_heads, s.q_len, s.kv_len);
}

// The shape's masks as attend options: causal, key padding. They refer to the shape's
// key_lengths, so `s` must outlive them.
inline attend::AttentionOptions attention_options(const AttentionShape& s) {
  attend::AttentionOptions opts;
  opts.causal = s.causal;
  opts.key_lengths = s.key_lengths;
  return opts;
}

}  // namespace ATTEND_ABI

}  // namespace attend_bench
