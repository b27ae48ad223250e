// attend::attention against the naive Eigen composition, at every attention shape, on
// every path of attend: the portable path runs the unfused composition scores -> masked
// softmax -> merge one head at a time; the AVX2 and AVX-512 paths run the fused
// (FlashAttention-2) kernel.
//
// Attention_Unfused runs the same attention as the three public stage calls a user who
// needs the probabilities would make, scores -> softmax (in place) -> merge_values, one
// head at a time, on the SIMD paths: the composition the issue compares with OpenBLAS's
// (sgemm, softmax, sgemm per head: /work/shared/peers openblas_attn outer).
// Attention_WithProbs runs attention_with_probs, the one call that gives the same
// probabilities [B, Hq, Sq, Sk] (and o), computing only the keys each row block sees.
//
// Counters: FLOPS in the peers' convention (causal prefill counts the lower triangle,
// whatever an implementation computes); decode shapes add the bytes of K and V read per
// call, as they are bound by memory, not arithmetic.

#include <attend/attention.hpp>
#include <attend/merge.hpp>
#include <attend/scores.hpp>
#include <attend/softmax.hpp>

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

// `run` (writing o [B, Hq, Sq, D]) against the Eigen composition, within twice the
// derived error bound of attention.
template <class Run>
Agreement check_attention(const AttentionShape& s, Run run) {
  const AttentionData& in = attention_data(s);
  const std::vector<float>& theirs = baseline_output("Attention/" + s.name, [&] {
    std::vector<float> o(std::size_t(s.q_elems()));
    eigen_baseline::RowMatrix scores;
    eigen_attention(s, in, o.data(), scores);
    return o;
  });
  std::vector<float> ours(theirs.size());
  run(ours.data());
  const AttentionInputs inputs{magnitude(in.q.data(), in.q.size()),
                               magnitude(in.k.data(), in.k.size()),
                               magnitude(in.v.data(), in.v.size())};
  return compare(ours, theirs, 2 * attention_error(s, inputs));
}

Agreement check_attention(const AttentionShape& s, const Target& path) {
  return check_attention(
      s, [&](float* o) { attend_attention(s, attention_data(s), o, path.context); });
}

void attention_attend(benchmark::State& state, const AttentionShape& s, const Target& t) {
  if (!validated(state, "Attention/" + s.name, t, [&] { return check_attention(s, t); })) return;
  const AttentionData& in = attention_data(s);
  time_kernel(state, std::size_t(s.q_elems()),
              [&](float* o) { attend_attention(s, in, o, t.context); });
  report(state, t, s.attention_flops(), bytes_read(s));
}

// Batch b, head h of t, as a tensor of one batch and one head.
template <class T>
attend::TensorView<T> head_of(attend::TensorView<T> t, index_t b, index_t h) {
  return {t.row(b, h, 0), 1, 1, t.seq, t.dim, 0, 0, t.seq_stride};
}

// One (batch, query head) at a time, as OpenBLAS's composition runs, so that the head's
// [Sq, Sk] probabilities stay in cache between the three calls: scores -> softmax in place
// -> merge_values. `probs` holds Sq * Sk floats.
void attend_unfused(const AttentionShape& s, const AttentionData& in, float* o, float* probs,
                    const attend::Context& ctx) {
  const attend::TensorView<const float> q = q_view(s, in.q.data()), k = kv_view(s, in.k.data()),
                                        v = kv_view(s, in.v.data());
  const attend::TensorView<float> out = q_view(s, o);
  const attend::TensorView<float> p =
      attend::TensorView<float>::bhsd(probs, 1, 1, s.q_len, s.kv_len);
  attend::AttentionOptions opts = attention_options(s);
  const attend::Span<const std::int32_t> lengths = opts.key_lengths;
  for (index_t b = 0; b < s.batch; ++b) {
    if (!lengths.empty()) opts.key_lengths = {lengths.data + b, 1};
    for (index_t h = 0; h < s.q_heads; ++h) {
      const index_t g = h / s.group();
      attend::scores<float>(head_of(q, b, h), head_of(k, b, g), s.scale(), p, ctx);
      attend::softmax<float>(p, p, opts, {}, ctx);
      attend::merge_values<float>(p, head_of(v, b, g), head_of(out, b, h), ctx);
    }
  }
}

void unfused_attend(benchmark::State& state, const AttentionShape& s, const Target& t) {
  const AttentionData& in = attention_data(s);
  std::vector<float> probs(std::size_t(s.q_len * s.kv_len));
  const auto run = [&](float* o) { attend_unfused(s, in, o, probs.data(), t.context); };
  if (!validated(state, "Unfused/" + s.name, t, [&] { return check_attention(s, run); })) return;
  time_kernel(state, std::size_t(s.q_elems()), run);
  report(state, t, s.attention_flops(), bytes_read(s));
}

void with_probs_attend(benchmark::State& state, const AttentionShape& s, const Target& t) {
  const AttentionData& in = attention_data(s);
  std::vector<float> probs(std::size_t(s.batch * s.q_heads * s.q_len * s.kv_len));
  const auto run = [&](float* o) {
    attend::attention_with_probs<float>(
        q_view(s, in.q.data()), kv_view(s, in.k.data()), kv_view(s, in.v.data()), q_view(s, o),
        attend::TensorView<float>::bhsd(probs.data(), s.batch, s.q_heads, s.q_len, s.kv_len),
        attention_options(s), {}, t.context);
  };
  if (!validated(state, "WithProbs/" + s.name, t, [&] { return check_attention(s, run); })) return;
  time_kernel(state, std::size_t(s.q_elems()), run);
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
    for (const Target& t : attend_targets()) {
      register_benchmark("Attention_Attend", s.name, t,
                         [s, t](benchmark::State& st) { attention_attend(st, s, t); });
      if (t.context.isa != attend::Isa::portable && !s.is_decode() && s.name != "P2") {
        register_benchmark("Attention_Unfused", s.name, t,
                           [s, t](benchmark::State& st) { unfused_attend(st, s, t); });
        register_benchmark("Attention_WithProbs", s.name, t,
                           [s, t](benchmark::State& st) { with_probs_attend(st, s, t); });
      }
    }
    const Target e = eigen_target();
    register_benchmark("Attention_Eigen", s.name, e,
                       [s, e](benchmark::State& st) { attention_eigen(st, s, e); });
  }
}

}  // namespace attend_bench
