// Element offsets past 2^31: a KV cache or a batch bigger than 8 GiB of floats must not wrap
// an index (every offset in attend is a signed 64-bit index_t, view.hpp).
//
// The views here have strides of 2^31 floats or so, so any offset computed in 32 bits lands
// in the wrong place. They address an arena of two regions of 2^31 + 2^22 floats (16 GiB
// and a bit): inputs straddle the first region, outputs the second, because attend checks
// that an output's address interval misses every input's. The arena is a lazily mapped,
// zero-filled reservation (mmap with MAP_NORESERVE): only the pages the views touch are ever
// backed, a few MiB, so the test is cheap on any 64-bit Linux machine. Elsewhere, where the
// reservation fails, or with ATTEND_SKIP_HUGE=1 set, the tests are skipped.

#include "attend/attend.hpp"

#include <gtest/gtest.h>

#include <cstdint>
#include <cstdlib>
#include <random>
#include <vector>

#include "support/reference.hpp"
#include "support/tolerance.hpp"

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace {

using attend::index_t;
using attend::TensorView;

constexpr index_t kHuge = index_t(1) << 31;
constexpr index_t kRegion = kHuge + (index_t(1) << 22);

// The reservation, shared by every test of the run.
float* arena() {
  static float* base = [] {
    float* p = nullptr;
#if defined(__linux__)
    const char* skip = std::getenv("ATTEND_SKIP_HUGE");
    if (skip && *skip && *skip != '0') return p;
    void* m = mmap(nullptr, std::size_t(2 * kRegion) * sizeof(float), PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m != MAP_FAILED) p = static_cast<float*>(m);
#endif
    return p;
  }();
  return base;
}

#define REQUIRE_ARENA() \
  if (!arena()) GTEST_SKIP() << "no 16 GiB reservation here (or ATTEND_SKIP_HUGE set)"

// Element f of the input region and of the output region.
float* in_region(index_t f) {
  return arena() + f;
}
float* out_region(index_t f) {
  return arena() + kRegion + f;
}

// A [2, heads, seq, dim] view whose batch 1 starts 2^31 floats after batch 0.
TensorView<float> straddling(float* first, index_t heads, index_t seq, index_t dim) {
  return {first, 2, heads, seq, dim, kHuge, seq * dim, dim};
}

void fill(const TensorView<float>& t, std::uint32_t seed) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> dist(-1, 1);
  for (index_t b = 0; b < t.batch; ++b)
    for (index_t h = 0; h < t.heads; ++h)
      for (index_t s = 0; s < t.seq; ++s)
        for (index_t d = 0; d < t.dim; ++d) t.row(b, h, s)[d] = dist(gen);
}

// Where the views start in their region (in floats); each spans < 2^16 floats per batch.
constexpr index_t kQ = 0, kK = 1 << 16, kV = 2 << 16;

TEST(Huge, AttentionBatchPastTwoToThe31) {
  REQUIRE_ARENA();
  const index_t hq = 4, hkv = 2, sq = 5, sk = 77, d = 64;
  const TensorView<float> q = straddling(in_region(kQ), hq, sq, d),
                          k = straddling(in_region(kK), hkv, sk, d),
                          v = straddling(in_region(kV), hkv, sk, d),
                          o = straddling(out_region(kQ), hq, sq, d);
  std::vector<float> lse_storage(std::size_t(2 * hq * sq));  // o and lse may not interleave
  const auto lse = TensorView<float>::bhsd(lse_storage.data(), 2, hq, sq, 1);
  fill(q, 1), fill(k, 2), fill(v, 3);
  attend::AttentionOptions opts;
  opts.causal = true;
  const ref::Attention r =
      ref::attention(ref::load<float>(q), ref::load<float>(k), ref::load<float>(v), opts);
  for (attend::Isa isa : attend::supported_isas()) {
    attend::Context ctx;
    ctx.isa = isa;
    attend::attention<float>(q, k, v, o, opts, lse, ctx);
    EXPECT_TRUE(ref::output_matches<float>(o, r)) << attend::name(isa);
    EXPECT_TRUE(ref::lse_matches<float>(lse, r.rows)) << attend::name(isa);
  }
}

// Decode reads sequence 1 of a contiguous cache past 2^31, and block rows of a paged pool
// past 2^31; append writes there first. Keys in the input region, values in the output
// region (append checks that they do not overlap).
TEST(Huge, CachesPastTwoToThe31) {
  REQUIRE_ARENA();
  const index_t hq = 8, hkv = 2, d = 64, tokens = 40, bs = 16;
  const TensorView<float> ck = straddling(in_region(kK), hkv, 64, d),
                          cv = straddling(out_region(kK), hkv, 64, d);
  std::vector<std::int32_t> lengths = {0, 0};
  const attend::KvCache<float> cache{ck, cv, lengths};
  // Paged: pools of blocks [blocks, hkv, bs, d] filling each region; the table uses blocks
  // near 0 and blocks past 2^31.
  const index_t block = hkv * bs * d, blocks = kRegion / block;
  const TensorView<float> pk = TensorView<float>::bhsd(in_region(0), blocks, hkv, bs, d);
  const TensorView<float> pv = TensorView<float>::bhsd(out_region(0), blocks, hkv, bs, d);
  const std::int32_t far = std::int32_t(blocks - 1);
  std::vector<std::int32_t> table = {8, far, far - 2, far - 1, far - 3, 9};  // [2, 3]
  std::vector<std::int32_t> paged_lengths = {0, 0};
  const attend::PagedKvCache<float> paged{pk, pv, {table.data(), 2, 3}, paged_lengths};

  std::vector<float> knew(std::size_t(2 * hkv * tokens * d)), vnew(knew.size());
  const auto k_new = TensorView<float>::bhsd(knew.data(), 2, hkv, tokens, d);
  const auto v_new = TensorView<float>::bhsd(vnew.data(), 2, hkv, tokens, d);
  fill(k_new, 4), fill(v_new, 5);
  attend::append(cache, k_new, v_new);
  attend::append(paged, k_new, v_new);
  ASSERT_EQ(lengths, (std::vector<std::int32_t>{tokens, tokens}));
  ASSERT_EQ(paged_lengths, lengths);
  ASSERT_EQ(ck.row(1, 1, tokens - 1)[d - 1], k_new.row(1, 1, tokens - 1)[d - 1]);

  std::vector<float> qbuf(std::size_t(2 * hq * d)), obuf(qbuf.size()), pobuf(qbuf.size());
  const auto q = TensorView<float>::bhsd(qbuf.data(), 2, hq, 1, d);
  const auto o = TensorView<float>::bhsd(obuf.data(), 2, hq, 1, d);
  const auto po = TensorView<float>::bhsd(pobuf.data(), 2, hq, 1, d);
  fill(q, 6);
  attend::AttentionOptions opts;
  opts.causal = true;
  const ref::Attention r =
      ref::attention(ref::load<float>(q), ref::load<float>(k_new), ref::load<float>(v_new), opts);
  for (attend::Isa isa : attend::supported_isas()) {
    attend::Context ctx;
    ctx.isa = isa;
    attend::decode_attention<float>(q, cache, o, {}, {}, ctx);
    EXPECT_TRUE(ref::output_matches<float>(o, r)) << "contiguous, " << attend::name(isa);
    attend::decode_attention<float>(q, paged, po, {}, {}, ctx);
    EXPECT_TRUE(ref::output_matches<float>(po, r)) << "paged, " << attend::name(isa);
  }
}

// linear over rows 2^31 floats apart: x and y row strides past 2^31 / rows.
TEST(Huge, LinearRowsPastTwoToThe31) {
  REQUIRE_ARENA();
  const index_t rows = 3, in = 96, out = 80, stride = kHuge / 2 + 64;
  const attend::MatrixView<float> x(in_region(kQ), rows, in, stride),
      y(out_region(kQ), rows, out, stride);
  std::vector<float> w(std::size_t(out * in));
  std::mt19937 gen(7);
  std::uniform_real_distribution<float> dist(-1, 1);
  for (index_t i = 0; i < rows; ++i)
    for (index_t j = 0; j < in; ++j) x(i, j) = dist(gen);
  for (float& e : w) e = dist(gen);
  const ref::Product r =
      ref::linear(ref::load<float>(attend::MatrixView<const float>(x)),
                  ref::load<float>(attend::MatrixView<const float>(w.data(), out, in)), {});
  for (attend::Isa isa : attend::supported_isas()) {
    attend::Context ctx;
    ctx.isa = isa;
    attend::linear<float>(x, {w.data(), out, in}, {}, y, attend::WeightLayout::out_in, ctx);
    for (index_t i = 0; i < rows; ++i)
      for (index_t j = 0; j < out; ++j)
        ASSERT_NEAR(
            y(i, j), double(r.y.v[std::size_t(i * out + j)]),
            2 * double(r.slack.v[std::size_t(i * out + j)]) * double(ref::unit_roundoff<float>()))
            << attend::name(isa) << " at (" << i << ", " << j << ")";
  }
}

}  // namespace
