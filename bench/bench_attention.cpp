// attend::attention against the naive Eigen composition, at every attention shape, on
// every path of attend: the portable path runs the unfused composition scores -> masked
// softmax -> merge one head at a time; the AVX2 and AVX-512 paths run the fused
// (FlashAttention-2) kernel.
//
// Counters: FLOPS in the peers' convention (causal prefill counts the lower triangle,
// whatever an implementation computes); decode shapes add the bytes of K and V read per
// call, as they are bound by memory, not arithmetic.

#include <attend/attention.hpp>

#include "data.hpp"
#include "eigen_baseline.hpp"
#include "harness.hpp"
#include "tolerance.hpp"

namespace attend_bench {
namespace {

double bytes_read(const AttentionShape& s) {
  return s.is_decode() ? s.kv_bytes() : 0.0;
}

void attend_attention(const AttentionShape& s, const AttentionData& in, float* o,
                      const attend::Context& ctx) {
  attend::attention<float>(q_view(s, in.q.data()), kv_view(s, in.k.data()), kv_view(s, in.v.data()),
                           q_view(s, o), attention_options(s), {}, ctx);
}

void eigen_attention(const AttentionShape& s, const AttentionData& in, float* o,
                     eigen_baseline::RowMatrix& scores) {
  eigen_baseline::attention(s, in.q.data(), in.k.data(), in.v.data(), o, scores);
}

Agreement check_attention(const AttentionShape& s, const Target& path) {
  const AttentionData& in = attention_data(s);
  const std::vector<float>& theirs = baseline_output("Attention/" + s.name, [&] {
    std::vector<float> o(std::size_t(s.q_elems()));
    eigen_baseline::RowMatrix scores;
    eigen_attention(s, in, o.data(), scores);
    return o;
  });
  std::vector<float> ours(theirs.size());
  attend_attention(s, in, ours.data(), path.context);
  const AttentionInputs inputs{magnitude(in.q.data(), in.q.size()),
                               magnitude(in.k.data(), in.k.size()),
                               magnitude(in.v.data(), in.v.size())};
  return compare(ours, theirs, 2 * attention_error(s, inputs));
}

void attention_attend(benchmark::State& state, const AttentionShape& s, const Target& t) {
  if (!validated(state, "Attention/" + s.name, t, [&] { return check_attention(s, t); })) return;
  const AttentionData& in = attention_data(s);
  time_kernel(state, std::size_t(s.q_elems()),
              [&](float* o) { attend_attention(s, in, o, t.context); });
  report(state, t, s.attention_flops(), bytes_read(s));
}

void attention_eigen(benchmark::State& state, const AttentionShape& s, const Target& t) {
  const Target best = best_attend_target();
  if (!validated(state, "Attention/" + s.name, best, [&] { return check_attention(s, best); }))
    return;
  const AttentionData& in = attention_data(s);
  eigen_baseline::RowMatrix scores;
  time_kernel(state, std::size_t(s.q_elems()),
              [&](float* o) { eigen_attention(s, in, o, scores); });
  report(state, t, s.attention_flops(), bytes_read(s));
}

}  // namespace

void register_attention_benchmarks() {
  for (const AttentionShape& s : attention_shapes()) {
    for (const Target& t : attend_targets())
      register_benchmark("Attention_Attend", s.name, t,
                         [s, t](benchmark::State& st) { attention_attend(st, s, t); });
    const Target e = eigen_target();
    register_benchmark("Attention_Eigen", s.name, e,
                       [s, e](benchmark::State& st) { attention_eigen(st, s, e); });
  }
}

}  // namespace attend_bench
