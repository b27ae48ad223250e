// fuzz_linear: attend::linear, y [M, N] = x [M, K] . op(W) + bias, on every path this CPU
// runs, with both weight layouts (out_in: W [N, K]; in_out: W [K, N]), with and without
// bias, on padded rows, in float and double; and, for float, through a PackedWeight.
// Checked against the oracle ref::linear (tests/support/reference.hpp) within 2 slack u
// (test_linear.cpp's bound), and against the promises of packed.hpp and
// detail/simd/gemm-inl.hpp: a PackedWeight gives the bits of its unpacked weight, the two
// SIMD paths give the same bits, and so do three threads. One case in eight is made
// invalid on purpose: the call must throw std::invalid_argument naming the broken argument
// and leave every buffer as it was.
#include "attend/linear.hpp"
#include "attend/packed.hpp"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "fuzz_support.hpp"

namespace {

using attend::index_t;
using attend::Isa;
using attend::MatrixView;
using attend::WeightLayout;
using fuzz::Case;
using fuzz::same_bits;
using testing_support::MatrixBuffer;

// y against the oracle within 2 slack u (see test_linear.cpp), plus (K + 2) subnormal
// steps: each of the K + 2 roundings of an entry whose value falls below T's normal range
// is off by up to half a subnormal step rather than a relative u.
template <class T>
::testing::AssertionResult product_matches(MatrixView<const T> y, const ref::Product& r,
                                           index_t K) {
  const ref::real u = ref::unit_roundoff<T>();
  const ref::real underflow = ref::real(K + 2) * std::numeric_limits<T>::denorm_min();
  const ref::Tensor slack = testing_support::as_tensor(r.slack);
  return ref::all_close<T>(testing_support::as_tensor(y), testing_support::as_tensor(r.y),
                           [&](index_t, index_t, index_t i, index_t j) {
                             return 2 * slack(0, 0, i, j) * u + underflow;
                           });
}

// T follows the long double oracle unless a finite part of an entry, sum_k |x w| + |b|,
// could overflow T (infinite and NaN terms combine the same way in any order).
bool representable(const ref::Matrix& x, const ref::Matrix& w_out_in,
                   const std::vector<ref::real>& bias, ref::real limit) {
  for (index_t i = 0; i < x.rows; ++i)
    for (index_t j = 0; j < w_out_in.rows; ++j) {
      ref::real sum = bias.empty() ? 0 : fuzz::finite_abs(bias[std::size_t(j)]);
      for (index_t k = 0; k < x.cols; ++k) sum += fuzz::finite_abs(x(i, k) * w_out_in(j, k));
      if (sum >= limit) return false;
    }
  return true;
}

template <class T>
void run(Case& c) {
  attend::Context ctx;
  ctx.isa = c.isa();
  fuzz::Values values(c);
  index_t M = c.extent("M", 17, 70), K = c.extent("K", 33, 200), N = c.extent("N", 33, 150);
  c.fit(200000, {{"M", &M}, {"K", &K}, {"N", &N}}, [&] { return M * N * (K + 1); });
  const WeightLayout layout = c.choose<WeightLayout>(
      "layout", {{WeightLayout::out_in, "out_in"}, {WeightLayout::in_out, "in_out"}});
  const bool out_in = layout == WeightLayout::out_in;
  const bool with_bias = c.flag("bias"), threads = c.flag("threads");
  const bool packed = std::is_same_v<T, float> && c.flag("packed");
  const int broken = c.one_in(8, "invalid") ? c.pick<int>("break", 0, 11) : -1;
  // Row padding; at least 1 on an empty row (MatrixBuffer divides by the row stride).
  auto pad = [&](const char* name, index_t cols) { return c.pick<index_t>(name, cols == 0, 5); };
  MatrixBuffer<T> x(M, K, pad("x.pad", K));
  MatrixBuffer<T> w(out_in ? N : K, out_in ? K : N, pad("w.pad", out_in ? K : N));
  MatrixBuffer<T> y(M, N, pad("y.pad", N));
  values.take_pool(c);
  for (MatrixBuffer<T>* m : {&x, &w})
    for (index_t i = 0; i < m->view.rows; ++i)
      for (index_t j = 0; j < m->view.cols; ++j) m->view(i, j) = values.next<T>();
  std::vector<T> bias = with_bias ? values.vector<T>(N) : std::vector<T>{};

  MatrixView<const T> xv = x.in(), wv = w.in();
  MatrixView<T> yv = y.view;
  attend::Span<const T> bv = bias;
  // The weight packed for the call's path (float only).
  std::unique_ptr<attend::PackedWeight> pw;
  if constexpr (std::is_same_v<T, float>)
    if (packed && broken != 11) pw = std::make_unique<attend::PackedWeight>(wv, layout, ctx.isa);
  auto call = [&](const attend::Context& on) {
    if constexpr (std::is_same_v<T, float>)
      if (pw) return attend::linear(xv, *pw, bv, yv, on);
    attend::linear<T>(xv, wv, bv, yv, layout, on);
  };

  if (broken >= 0) {
    std::string arg, function = "linear";
    const bool x_elements = M * K > 0, y_elements = M * N > 0;
    switch (broken) {
      case 0:
        yv.rows += 1, arg = "y";
        break;
      case 1:
        (pw ? xv.cols : wv.rows) += 1, arg = pw ? "x" : "w";
        break;
      case 2:
        bias.assign(std::size_t(N + 1), T(0)), bv = bias, arg = "bias.size";
        break;
      case 3:
        if (x_elements && y_elements) yv.data = x.view.data, arg = "y";
        break;
      case 4:
        if (!pw && y_elements && K * N > 0) yv.data = w.view.data, arg = "y";
        break;
      case 5:
        if (M > 1 && K > 0) xv.stride = K - 1, arg = "x";
        break;
      case 6:
        xv.cols = -1, arg = "x";
        break;
      case 7:
        if (N > 0) bv = {nullptr, N}, arg = "bias";
        break;
      case 8:
        if (with_bias && y_elements) yv.data = bias.data(), arg = "y";
        break;
      case 9: {  // a weight packed for another path than the call's
        const std::vector<Isa> isas = attend::supported_isas();
        if (pw && isas.size() > 1) ctx.isa = ctx.isa == isas[0] ? isas[1] : isas[0], arg = "w";
        break;
      }
      case 11:
        if constexpr (std::is_same_v<T, float>) {
          if (packed && wv.rows > 1 && wv.cols > 0) {
            wv.stride = wv.cols - 1;
            c.rejected(
                "PackedWeight", "w", [&] { (void)attend::PackedWeight(wv, layout, ctx.isa); },
                w.storage);
            return;
          }
        }
        break;
      default:
        break;
    }
    if (arg.empty()) xv.rows = -1, arg = "x";
    c.rejected(
        function.c_str(), arg, [&] { call(ctx); }, x.storage, w.storage, y.storage, bias);
    return;
  }

  const ref::Matrix xr = ref::load<T>(xv),
                    wr = out_in ? ref::load<T>(wv) : ref::transpose(ref::load<T>(wv));
  const std::vector<ref::real> br(bias.begin(), bias.end());
  const ref::Product r = ref::linear(xr, wr, br);
  const std::vector<T> x_before = x.storage, w_before = w.storage;
  c.valid("linear", [&] { call(ctx); });
  c.check(y.canaries_intact(), "y written outside its view");
  c.check(same_bits(x.storage, x_before) && same_bits(w.storage, w_before), "an input changed");
  if (representable(xr, wr, br, fuzz::finite_limit<T>()))
    c.check(product_matches<T>(y.in(), r, K), "y against the oracle");

  const std::vector<T> first = y.storage;
  auto same_as_first = [&](const char* what, const attend::Context& on, bool unpacked) {
    std::fill(y.storage.begin(), y.storage.end(), testing_support::canary<T>());
    c.valid(what, [&] {
      if (unpacked)
        attend::linear<T>(xv, wv, bv, yv, layout, on);
      else
        call(on);
    });
    c.check(fuzz::same_results(y.storage, first), std::string(what) + ": not the same bits");
  };
  if (pw) same_as_first("linear with the unpacked weight", ctx, true);
  if (threads) {
    attend::Context on = ctx;
    on.executor = &fuzz::pool();
    same_as_first("linear on three threads", on, false);
  }
  // The SIMD paths compute every entry as the same chain of FMAs (gemm-inl.hpp).
  if (std::is_same_v<T, float> && (ctx.isa == Isa::avx2 || ctx.isa == Isa::avx512) &&
      attend::supported(Isa::avx512)) {
    attend::Context other = ctx;
    other.isa = ctx.isa == Isa::avx2 ? Isa::avx512 : Isa::avx2;
    same_as_first("linear on the other SIMD path", other, true);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  Case c("fuzz_linear", data, size);
  if (c.flag("double"))
    run<double>(c);
  else
    run<float>(c);
  return 0;
}
