// attend::linear, y [M, N] = x [M, K] . W^T with W [N, K] in nn.Linear layout, against one
// Eigen GEMM on the same row-major data. PR1 is the fused QKV projection of a 32-head,
// D = 128 model over 512 tokens: x [512, 2048], W [6144, 2048]. PD1, PD16 and PD64 are that
// projection in a decode step (M = 1, 16 and 64 rows), which streams W from memory.
// GEMM4096 is the square 4096^3 product the peers also run. FLOPS 2 M N K; the decode-step
// shapes also count bytes (W, x and y, once each) as GB/s, to set against the read probe
// (shared/peers `limits bw 0.05`) at W's 50 MB.
//
// Two attend variants: Attend passes W as it is (linear() packs it on every call), Packed
// passes an attend::PackedWeight made once per path before timing, as an engine holding
// its weights would (the peers' "oneDNN pre-packed" figure). A third, InOut, passes the
// same weight stored transposed, W^T [K, N] (WeightLayout::in_out, as GPT-2's Conv1D keeps
// it, and as the peers' sgemm and matmul read it): the same product, checked against the
// same Eigen output.

#include <attend/linear.hpp>
#include <attend/packed.hpp>

#include <map>
#include <memory>

#include "data.hpp"
#include "eigen_baseline.hpp"
#include "harness.hpp"
#include "shapes.hpp"
#include "tolerance.hpp"

namespace attend_bench {
namespace {

void attend_linear_in_out(const GemmShape& g, const LinearData& in, float* y,
                          const attend::Context& ctx) {
  attend::linear<float>(attend::MatrixView<const float>(in.x.data(), g.m, g.k),
                        attend::MatrixView<const float>(in_out_weight(g).data(), g.k, g.n), {},
                        attend::MatrixView<float>(y, g.m, g.n), attend::WeightLayout::in_out, ctx);
}

void attend_linear(const GemmShape& g, const LinearData& in, float* y, const attend::Context& ctx) {
  attend::linear<float>(attend::MatrixView<const float>(in.x.data(), g.m, g.k),
                        attend::MatrixView<const float>(in.w.data(), g.n, g.k), {},
                        attend::MatrixView<float>(y, g.m, g.n), attend::WeightLayout::out_in, ctx);
}

// W packed for the path of `ctx`, once per shape and path, kept for the run.
const attend::PackedWeight& packed_weight(const GemmShape& g, const attend::Context& ctx) {
  static std::map<std::string, std::unique_ptr<attend::PackedWeight>> cache;
  std::unique_ptr<attend::PackedWeight>& packed = cache[g.name + "/" + attend::name(ctx.isa)];
  if (!packed)
    packed = std::make_unique<attend::PackedWeight>(
        attend::MatrixView<const float>(linear_data(g).w.data(), g.n, g.k),
        attend::WeightLayout::out_in, ctx.isa);
  return *packed;
}

void attend_linear_packed(const GemmShape& g, const LinearData& in, float* y,
                          const attend::Context& ctx) {
  attend::linear(attend::MatrixView<const float>(in.x.data(), g.m, g.k), packed_weight(g, ctx), {},
                 attend::MatrixView<float>(y, g.m, g.n), ctx);
}

using LinearRun = void (*)(const GemmShape&, const LinearData&, float*, const attend::Context&);

Agreement check_linear(const GemmShape& g, const Target& path, LinearRun run = attend_linear) {
  const LinearData& in = linear_data(g);
  const std::vector<float>& theirs = baseline_output("Linear/" + g.name, [&] {
    std::vector<float> y(std::size_t(g.m * g.n));
    eigen_baseline::linear(g, in.x.data(), in.w.data(), y.data());
    return y;
  });
  std::vector<float> ours(theirs.size());
  run(g, in, ours.data(), path.context);
  const Magnitude x = magnitude(in.x.data(), in.x.size()), w = magnitude(in.w.data(), in.w.size());
  return compare(ours, theirs, 2 * product_error(g.k, x, w));
}

void linear_attend(benchmark::State& state, const GemmShape& g, const Target& t) {
  if (!validated(state, "Linear/" + g.name, t, [&] { return check_linear(g, t); })) return;
  const LinearData& in = linear_data(g);
  time_kernel(state, std::size_t(g.m * g.n), [&](float* y) { attend_linear(g, in, y, t.context); });
  report(state, t, g.flops(), g.decode ? g.bytes() : 0);
}

void linear_packed(benchmark::State& state, const GemmShape& g, const Target& t) {
  const auto check = [&] { return check_linear(g, t, attend_linear_packed); };
  if (!validated(state, "LinearPacked/" + g.name, t, check)) return;
  const LinearData& in = linear_data(g);
  packed_weight(g, t.context);  // packed before timing
  time_kernel(state, std::size_t(g.m * g.n),
              [&](float* y) { attend_linear_packed(g, in, y, t.context); });
  report(state, t, g.flops(), g.decode ? g.bytes() : 0);
}

void linear_in_out(benchmark::State& state, const GemmShape& g, const Target& t) {
  const auto check = [&] { return check_linear(g, t, attend_linear_in_out); };
  if (!validated(state, "LinearInOut/" + g.name, t, check)) return;
  const LinearData& in = linear_data(g);
  in_out_weight(g);  // transposed before timing
  time_kernel(state, std::size_t(g.m * g.n),
              [&](float* y) { attend_linear_in_out(g, in, y, t.context); });
  report(state, t, g.flops(), g.decode ? g.bytes() : 0);
}

void linear_eigen(benchmark::State& state, const GemmShape& g, const Target& t) {
  const Target best = best_attend_target();
  if (!validated(state, "Linear/" + g.name, best, [&] { return check_linear(g, best); })) return;
  const LinearData& in = linear_data(g);
  time_kernel(state, std::size_t(g.m * g.n),
              [&](float* y) { eigen_baseline::linear(g, in.x.data(), in.w.data(), y); });
  report(state, t, g.flops(), g.decode ? g.bytes() : 0);
}

}  // namespace

void register_linear_benchmarks() {
  for (const GemmShape& g : gemm_shapes()) {
    for (const Target& t : attend_targets())
      register_benchmark("Linear_Attend", g.name, t,
                         [g, t](benchmark::State& st) { linear_attend(st, g, t); });
    for (const Target& t : attend_targets()) {
      // On the portable path a PackedWeight is a plain copy of W: Linear_Attend's loops.
      if (t.context.isa == attend::Isa::portable) continue;
      register_benchmark("Linear_Packed", g.name, t,
                         [g, t](benchmark::State& st) { linear_packed(st, g, t); });
    }
    for (const Target& t : attend_targets())
      register_benchmark("Linear_InOut", g.name, t,
                         [g, t](benchmark::State& st) { linear_in_out(st, g, t); });
    const Target e = eigen_target();
    register_benchmark("Linear_Eigen", g.name, e,
                       [g, e](benchmark::State& st) { linear_eigen(st, g, e); });
  }
}

}  // namespace attend_bench
