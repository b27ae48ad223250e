// The three stages of unfused attention, each on its own, for all heads of a shape:
//
//   scores        s [B, Hq, Sq, Sk] = scale * q k^T          FLOPS 2 B Hq Sq Sk D
//   softmax       p = masked row softmax of s (the shape's   bytes: s read, p written
//                 causal mask or key padding)
//   merge_values  o [B, Hq, Sq, D] = p v                     FLOPS 2 B Hq Sq Sk D
//
// each against the same stage of the Eigen baseline. Decode shapes add the bytes of K
// (scores) or V (merge) read. softmax and merge read uniform(-1, 1) score-shaped data, not
// real probabilities: their cost does not depend on the values.
//
// P2 is left out here: its stages are P1's at four times the size, and the portable path
// would spend about a minute on them; attention() covers P2 whole.

#include <attend/merge.hpp>
#include <attend/scores.hpp>
#include <attend/softmax.hpp>

#include "data.hpp"
#include "eigen_baseline.hpp"
#include "harness.hpp"
#include "tolerance.hpp"

namespace attend_bench {
namespace {

Magnitude magnitude_of(const std::vector<float>& x) {
  return magnitude(x.data(), x.size());
}

// scores: out [B, Hq, Sq, Sk].
void scores_attend(const AttentionShape& s, float* out, const attend::Context& ctx) {
  const AttentionData& in = attention_data(s);
  attend::scores<float>(q_view(s, in.q.data()), kv_view(s, in.k.data()), s.scale(),
                        score_view(s, out), ctx);
}
void scores_eigen(const AttentionShape& s, float* out) {
  const AttentionData& in = attention_data(s);
  eigen_baseline::scores(s, in.q.data(), in.k.data(), out);
}
double scores_tolerance(const AttentionShape& s) {
  const AttentionData& in = attention_data(s);
  return 2 * s.scale() * product_error(s.head_dim, magnitude_of(in.q), magnitude_of(in.k));
}

// softmax: out [B, Hq, Sq, Sk], out of place.
void softmax_attend(const AttentionShape& s, float* out, const attend::Context& ctx) {
  attend::softmax<float>(score_view(s, score_data(s).data()), score_view(s, out),
                         attention_options(s), {}, ctx);
}
void softmax_eigen(const AttentionShape& s, float* out) {
  eigen_baseline::masked_softmax(s, score_data(s).data(), out);
}
double softmax_tolerance(const AttentionShape& s) {
  return 2 * softmax_relative_error(s.kv_len);  // probabilities are at most 1
}

// merge_values: out [B, Hq, Sq, D].
void merge_attend(const AttentionShape& s, float* out, const attend::Context& ctx) {
  attend::merge_values<float>(score_view(s, score_data(s).data()),
                              kv_view(s, attention_data(s).v.data()), q_view(s, out), ctx);
}
void merge_eigen(const AttentionShape& s, float* out) {
  eigen_baseline::merge(s, score_data(s).data(), attention_data(s).v.data(), out);
}
double merge_tolerance(const AttentionShape& s) {
  return 2 *
         product_error(s.kv_len, magnitude_of(score_data(s)), magnitude_of(attention_data(s).v));
}

double score_elems(const AttentionShape& s) {
  return double(s.score_elems());
}
double output_elems(const AttentionShape& s) {
  return double(s.q_elems());
}
double product_flops(const AttentionShape& s) {
  return s.product_flops();
}
double no_flops(const AttentionShape&) {
  return 0.0;
}
// A decode step reads half the cache: K for the scores, V for the merge.
double half_cache_bytes(const AttentionShape& s) {
  return s.is_decode() ? s.kv_bytes() / 2 : 0.0;
}
double softmax_bytes(const AttentionShape& s) {
  return 2.0 * s.score_elems() * sizeof(float);
}

using AttendRun = void (*)(const AttentionShape&, float* out, const attend::Context&);
using EigenRun = void (*)(const AttentionShape&, float* out);
using Measure = double (*)(const AttentionShape&);

// One stage: attend's call and the baseline's, the size of their output, the work
// counted per call, and the tolerance on the difference of their outputs.
struct Stage {
  const char* kernel;
  AttendRun attend;
  EigenRun eigen;
  Measure out_elems, flops, bytes, tolerance;
};

const Stage stages[] = {
    {"Scores", scores_attend, scores_eigen, score_elems, product_flops, half_cache_bytes,
     scores_tolerance},
    {"Softmax", softmax_attend, softmax_eigen, score_elems, no_flops, softmax_bytes,
     softmax_tolerance},
    {"Merge", merge_attend, merge_eigen, output_elems, product_flops, half_cache_bytes,
     merge_tolerance},
};

std::string key_of(const Stage& stage, const AttentionShape& s) {
  return std::string(stage.kernel) + "/" + s.name;
}

Agreement check(const Stage& stage, const AttentionShape& s, const Target& path) {
  const std::vector<float>& theirs = baseline_output(key_of(stage, s), [&] {
    std::vector<float> out(std::size_t(stage.out_elems(s)));
    stage.eigen(s, out.data());
    return out;
  });
  std::vector<float> ours(theirs.size());
  stage.attend(s, ours.data(), path.context);
  return compare(ours, theirs, stage.tolerance(s));
}

void stage_attend(benchmark::State& state, const Stage& stage, const AttentionShape& s,
                  const Target& t) {
  if (!validated(state, key_of(stage, s), t, [&] { return check(stage, s, t); })) return;
  time_kernel(state, std::size_t(stage.out_elems(s)),
              [&](float* out) { stage.attend(s, out, t.context); });
  report(state, t, stage.flops(s), stage.bytes(s));
}

void stage_eigen(benchmark::State& state, const Stage& stage, const AttentionShape& s,
                 const Target& t) {
  const Target best = best_attend_target();
  if (!validated(state, key_of(stage, s), best, [&] { return check(stage, s, best); })) return;
  time_kernel(state, std::size_t(stage.out_elems(s)), [&](float* out) { stage.eigen(s, out); });
  report(state, t, stage.flops(s), stage.bytes(s));
}

}  // namespace

void register_kernel_benchmarks() {
  for (const Stage& stage : stages)
    for (const AttentionShape& s : attention_shapes()) {
      if (s.name == "P2") continue;
      const std::string kernel = stage.kernel;
      const Stage* st = &stage;
      for (const Target& t : attend_targets())
        register_benchmark(kernel + "_Attend", s.name, t,
                           [st, s, t](benchmark::State& state) { stage_attend(state, *st, s, t); });
      const Target e = eigen_target();
      register_benchmark(kernel + "_Eigen", s.name, e,
                         [st, s, e](benchmark::State& state) { stage_eigen(state, *st, s, e); });
    }
}

}  // namespace attend_bench
