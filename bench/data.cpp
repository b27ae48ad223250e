#include "data.hpp"

#include <map>
#include <memory>

#include "harness.hpp"

namespace attend_bench {

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

}  // namespace attend_bench
