// attend::multihead_attention, a whole self-attention block (QKV projection, attention,
// output projection, with biases), against the same block composed with Eigen. The E1
// block is BERT-base: 8 sequences of 384 tokens, E = 768, 12 heads of 64, key padding.
//
// Tokens are uniform(-1, 1); weights and biases uniform(-1/sqrt(in), 1/sqrt(in)), the
// initialisation of torch.nn.Linear, so that activations keep unit scale through the block
// (uniform(-1, 1) weights would saturate the softmax). FLOPS: both projections plus the
// attention core in the peers' convention.

#include <attend/mha.hpp>

#include <cmath>
#include <map>
#include <memory>

#include "data.hpp"
#include "eigen_baseline.hpp"
#include "harness.hpp"
#include "shapes.hpp"
#include "tolerance.hpp"

namespace attend_bench {
namespace {

using eigen_baseline::ConstMap;
using eigen_baseline::RowMatrix;

struct MhaData {
  std::vector<float> x;  // [B * S, E]
  std::vector<float> in_proj, in_bias, out_proj, out_bias;
  eigen_baseline::MhaWeights eigen;  // copies of the same weights
};

const MhaData& mha_data(const MhaShape& m) {
  static std::map<std::string, std::unique_ptr<MhaData>> cache;
  std::unique_ptr<MhaData>& data = cache[m.attention.name];
  if (!data) {
    const AttentionShape& s = m.attention;
    const index_t e = m.embed(), qkv = (s.q_heads + 2 * s.kv_heads) * s.head_dim;
    const float in_scale = float(1 / std::sqrt(double(e)));
    data = std::make_unique<MhaData>();
    data->x = uniform(std::size_t(m.tokens() * e), 1111);
    data->in_proj = uniform(std::size_t(qkv * e), 2222, in_scale);
    data->in_bias = uniform(std::size_t(qkv), 3333, in_scale);
    data->out_proj = uniform(std::size_t(e * e), 4444, in_scale);  // [E, Hq D], Hq D = E
    data->out_bias = uniform(std::size_t(e), 5555, in_scale);
    data->eigen.in_proj = ConstMap(data->in_proj.data(), qkv, e);
    data->eigen.in_bias = Eigen::Map<const Eigen::RowVectorXf>(data->in_bias.data(), qkv);
    data->eigen.out_proj = ConstMap(data->out_proj.data(), e, e);
    data->eigen.out_bias = Eigen::Map<const Eigen::RowVectorXf>(data->out_bias.data(), e);
  }
  return *data;
}

void attend_mha(const MhaShape& m, const MhaData& in, float* y, const attend::Context& ctx) {
  const AttentionShape& s = m.attention;
  const index_t e = m.embed(), qkv = (s.q_heads + 2 * s.kv_heads) * s.head_dim;
  attend::MhaWeights<float> w;
  w.in_proj_weight = {in.in_proj.data(), qkv, e};
  w.in_proj_bias = in.in_bias;
  w.out_proj_weight = {in.out_proj.data(), e, e};
  w.out_proj_bias = in.out_bias;
  w.num_heads = s.q_heads;
  w.num_kv_heads = s.kv_heads;
  const attend::MatrixView<const float> x(in.x.data(), m.tokens(), e);
  attend::multihead_attention<float>(x, x, x, s.batch, w, {y, m.tokens(), e}, attention_options(s),
                                     ctx);
}

Magnitude magnitude_of(const RowMatrix& a) {
  return magnitude(a.data(), std::size_t(a.size()));
}
Magnitude magnitude_of(const std::vector<float>& a) {
  return magnitude(a.data(), a.size());
}

// One side's error, stage by stage, with the magnitudes of the baseline's intermediates.
double mha_error(const MhaShape& m, const MhaData& in, const eigen_baseline::MhaWork& work,
                 const std::vector<float>& y) {
  const Magnitude x = magnitude_of(in.x), w_in = magnitude_of(in.in_proj);
  const Magnitude w_out = magnitude_of(in.out_proj), o = magnitude_of(work.o);
  AttentionInputs qkv{magnitude_of(work.q), magnitude_of(work.k), magnitude_of(work.v)};
  // Each projection: an E-term product and one rounding for the bias.
  const double projection = product_error(m.embed(), x, w_in);
  qkv.q_error = projection + unit_roundoff * qkv.q.max_abs;
  qkv.k_error = projection + unit_roundoff * qkv.k.max_abs;
  qkv.v_error = projection + unit_roundoff * qkv.v.max_abs;
  const double attention = attention_error(m.attention, qkv);
  const index_t width = m.attention.q_heads * m.attention.head_dim;
  return product_error(width, o, w_out) + propagated_error(width, attention, w_out) +
         unit_roundoff * magnitude_of(y).max_abs;
}

// The baseline's output and the tolerance derived from its intermediates, once per shape.
struct MhaBaseline {
  std::vector<float> y;
  double tolerance;
};

const MhaBaseline& mha_baseline(const MhaShape& m) {
  static std::map<std::string, MhaBaseline> cache;
  auto found = cache.find(m.attention.name);
  if (found == cache.end()) {
    const MhaData& in = mha_data(m);
    std::vector<float> y(std::size_t(m.tokens() * m.embed()));
    eigen_baseline::MhaWork work;
    eigen_baseline::mha(m, in.x.data(), in.eigen, work, y.data());
    const double tolerance = 2 * mha_error(m, in, work, y);
    found = cache.emplace(m.attention.name, MhaBaseline{std::move(y), tolerance}).first;
  }
  return found->second;
}

Agreement check_mha(const MhaShape& m, const Target& path) {
  const MhaBaseline& theirs = mha_baseline(m);
  std::vector<float> ours(theirs.y.size());
  attend_mha(m, mha_data(m), ours.data(), path.context);
  return compare(ours, theirs.y, theirs.tolerance);
}

void mha_attend(benchmark::State& state, const MhaShape& m, const Target& t) {
  if (!validated(state, "MHA/" + m.attention.name, t, [&] { return check_mha(m, t); })) return;
  const MhaData& in = mha_data(m);
  time_kernel(state, std::size_t(m.tokens() * m.embed()),
              [&](float* y) { attend_mha(m, in, y, t.context); });
  report(state, t, m.flops(), 0);
}

void mha_eigen(benchmark::State& state, const MhaShape& m, const Target& t) {
  const Target best = best_attend_target();
  if (!validated(state, "MHA/" + m.attention.name, best, [&] { return check_mha(m, best); }))
    return;
  const MhaData& in = mha_data(m);
  eigen_baseline::MhaWork work;
  time_kernel(state, std::size_t(m.tokens() * m.embed()),
              [&](float* y) { eigen_baseline::mha(m, in.x.data(), in.eigen, work, y); });
  report(state, t, m.flops(), 0);
}

}  // namespace

void register_mha_benchmarks() {
  for (const MhaShape& m : mha_shapes()) {
    for (const Target& t : attend_targets())
      register_benchmark("MHA_Attend", m.attention.name, t,
                         [m, t](benchmark::State& st) { mha_attend(st, m, t); });
    const Target e = eigen_target();
    register_benchmark("MHA_Eigen", m.attention.name, e,
                       [m, e](benchmark::State& st) { mha_eigen(st, m, e); });
  }
}

}  // namespace attend_bench
