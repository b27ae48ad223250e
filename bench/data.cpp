#include "data.hpp"

#include <algorithm>
#include <map>
#include <memory>
#include <numeric>
#include <random>

#include "decode_data.hpp"

namespace attend_bench {

std::vector<float> uniform(std::size_t n, std::uint32_t seed, float scale) {
  std::mt19937 generator(seed);
  std::uniform_real_distribution<float> distribution(-scale, scale);
  std::vector<float> values(n);
  for (float& x : values) x = distribution(generator);
  return values;
}

AttentionData& attention_data(const AttentionShape& shape) {
  static std::map<std::string, std::unique_ptr<AttentionData>> cache;
  std::unique_ptr<AttentionData>& data = cache[shape.name];
  if (!data) {
    data = std::make_unique<AttentionData>();
    data->q = uniform(std::size_t(shape.q_elems()), 1234);
    data->k = uniform(std::size_t(shape.kv_elems()), 5678);
    data->v = uniform(std::size_t(shape.kv_elems()), 9012);
  }
  return *data;
}

const std::vector<float>& score_data(const AttentionShape& shape) {
  AttentionData& data = attention_data(shape);
  if (data.scores.empty()) data.scores = uniform(std::size_t(shape.score_elems()), 3456);
  return data.scores;
}

namespace {
LinearData& mutable_linear_data(const GemmShape& g) {
  static std::map<std::string, std::unique_ptr<LinearData>> cache;
  std::unique_ptr<LinearData>& data = cache[g.name];
  if (!data)
    data.reset(new LinearData{
        uniform(std::size_t(g.m * g.k), 2468), uniform(std::size_t(g.n * g.k), 1357), {}});
  return *data;
}
}  // namespace

const LinearData& linear_data(const GemmShape& g) {
  return mutable_linear_data(g);
}

const std::vector<float>& in_out_weight(const GemmShape& g) {
  LinearData& data = mutable_linear_data(g);
  if (data.w_t.empty()) {
    data.w_t.resize(data.w.size());
    for (index_t n = 0; n < g.n; ++n)
      for (index_t k = 0; k < g.k; ++k)
        data.w_t[std::size_t(k * g.n + n)] = data.w[std::size_t(n * g.k + k)];
  }
  return data.w_t;
}

const DecodeData& decode_data(const DecodeShape& s) {
  static std::map<std::string, DecodeData> all;
  auto [it, fresh] = all.try_emplace(s.name);
  DecodeData& d = it->second;
  if (!fresh) return d;
  const index_t row = s.head_dim, per_seq = s.kv_heads * s.capacity * row;
  d.q = uniform(std::size_t(s.batch * s.q_heads * row), 1);
  d.k = uniform(std::size_t(s.batch * per_seq), 2);
  d.v = uniform(std::size_t(s.batch * per_seq), 3);
  d.lengths = s.lengths;
  const index_t per_table = s.capacity / kBlockSize, blocks = s.batch * per_table;
  std::vector<std::int32_t> order(static_cast<std::size_t>(blocks));
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), std::mt19937(4));
  d.table = order;
  d.k_pool.resize(d.k.size()), d.v_pool.resize(d.v.size());
  d.k_tokens.resize(d.k.size()), d.v_tokens.resize(d.v.size());
  const auto contiguous = contiguous_cache(s, d);
  const auto paged = paged_cache(s, d);
  const auto tokens = token_major_cache(s, d);
  const attend::detail::PagedRows<const float> rows{paged.k, paged.v, paged.block_table};
  for (index_t b = 0; b < s.batch; ++b)
    for (index_t g = 0; g < s.kv_heads; ++g)
      for (index_t j = 0; j < s.capacity; ++j) {
        const index_t at = rows.k_row(b, g, j) - d.k_pool.data();
        std::copy_n(contiguous.k.row(b, g, j), row, d.k_pool.data() + at);
        std::copy_n(contiguous.v.row(b, g, j), row, d.v_pool.data() + at);
        const index_t token = tokens.k.row(b, g, j) - d.k_tokens.data();
        std::copy_n(contiguous.k.row(b, g, j), row, d.k_tokens.data() + token);
        std::copy_n(contiguous.v.row(b, g, j), row, d.v_tokens.data() + token);
      }
  return d;
}

}  // namespace attend_bench
