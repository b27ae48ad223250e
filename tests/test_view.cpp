// attend/view.hpp: which element each view addresses, how views convert, and that offsets
// stay 64-bit past 2^31 elements.
#include "attend/view.hpp"

#include <gtest/gtest.h>

#include <cstdint>
#include <type_traits>
#include <utility>
#include <vector>

#include "attend/linear.hpp"
#include "attend/merge.hpp"
#include "attend/scores.hpp"
#include "support/checks.hpp"

#if defined(__unix__)
#include <sys/mman.h>
#include <unistd.h>
#endif

namespace {

using attend::index_t;
using attend::MatrixView;
using attend::Span;
using attend::TensorView;
using testing_support::FloatingTypes;
using testing_support::TypeNames;

// Conversions that must exist, and the ones that must not.
static_assert(std::is_same_v<index_t, std::int64_t>);
static_assert(std::is_convertible_v<MatrixView<float>, MatrixView<const float>>);
static_assert(!std::is_convertible_v<MatrixView<const float>, MatrixView<float>>);
static_assert(std::is_convertible_v<TensorView<double>, TensorView<const double>>);
static_assert(!std::is_convertible_v<TensorView<const double>, TensorView<double>>);
static_assert(std::is_convertible_v<std::vector<float>&, Span<float>>);
static_assert(std::is_convertible_v<std::vector<float>&, Span<const float>>);
static_assert(std::is_convertible_v<const std::vector<float>&, Span<const float>>);
static_assert(!std::is_convertible_v<const std::vector<float>&, Span<float>>);
static_assert(!std::is_convertible_v<std::vector<double>&, Span<const float>>);

// Whether attend::scores accepts these argument types; only the declaration is looked at.
struct CallScores {
  template <class... A>
  auto operator()(A&&... a) const -> decltype(attend::scores(std::forward<A>(a)...)) {}
};
// The element type is deduced from the output alone, so mutable inputs convert to
// MatrixIn / TensorIn at the call site...
static_assert(std::is_invocable_v<CallScores, MatrixView<float>, MatrixView<float>, double,
                                  MatrixView<float>>);
static_assert(std::is_invocable_v<CallScores, MatrixView<const float>, MatrixView<float>, double,
                                  MatrixView<float>>);
static_assert(std::is_invocable_v<CallScores, TensorView<double>, TensorView<const double>, double,
                                  TensorView<double>>);
// ...and inputs of another element type are not silently accepted.
static_assert(!std::is_invocable_v<CallScores, MatrixView<double>, MatrixView<double>, double,
                                   MatrixView<float>>);

template <class T>
class Views : public ::testing::Test {};
TYPED_TEST_SUITE(Views, FloatingTypes, TypeNames);

constexpr index_t kB = 2, kH = 3, kS = 5, kD = 7;

TYPED_TEST(Views, BhsdAddressesHandComputedOffsets) {
  std::vector<TypeParam> buffer(kB * kH * kS * kD);
  const auto t = TensorView<TypeParam>::bhsd(buffer.data(), kB, kH, kS, kD);
  EXPECT_EQ(t.batch_stride, kH * kS * kD);
  EXPECT_EQ(t.head_stride, kS * kD);
  EXPECT_EQ(t.seq_stride, kD);
  for (index_t b = 0; b < kB; ++b)
    for (index_t h = 0; h < kH; ++h)
      for (index_t s = 0; s < kS; ++s)
        for (index_t d = 0; d < kD; ++d) {
          const index_t offset = ((b * kH + h) * kS + s) * kD + d;
          ASSERT_EQ(&t.row(b, h, s)[d], &buffer[offset]);
          ASSERT_EQ(&t.head(b, h)(s, d), &buffer[offset]);
        }
}

TYPED_TEST(Views, BshdAddressesHandComputedOffsets) {
  std::vector<TypeParam> buffer(kB * kS * kH * kD);
  const auto t = TensorView<TypeParam>::bshd(buffer.data(), kB, kS, kH, kD);
  EXPECT_EQ(t.batch, kB);
  EXPECT_EQ(t.heads, kH);
  EXPECT_EQ(t.seq, kS);
  EXPECT_EQ(t.dim, kD);
  for (index_t b = 0; b < kB; ++b)
    for (index_t h = 0; h < kH; ++h)
      for (index_t s = 0; s < kS; ++s)
        for (index_t d = 0; d < kD; ++d) {
          const index_t offset = ((b * kS + s) * kH + h) * kD + d;
          ASSERT_EQ(&t.row(b, h, s)[d], &buffer[offset]);
          ASSERT_EQ(&t.head(b, h)(s, d), &buffer[offset]);
        }
}

TYPED_TEST(Views, HeadIsTheSeqByDimMatrixOfOneHead) {
  std::vector<TypeParam> buffer(kB * kS * kH * kD);
  const auto t = TensorView<TypeParam>::bshd(buffer.data(), kB, kS, kH, kD);
  const MatrixView<TypeParam> m = t.head(1, 2);
  EXPECT_EQ(m.data, t.row(1, 2, 0));
  EXPECT_EQ(m.rows, kS);
  EXPECT_EQ(m.cols, kD);
  EXPECT_EQ(m.stride, kH * kD);
  EXPECT_EQ(m.row(4), t.row(1, 2, 4));
}

TYPED_TEST(Views, BlockSelectsRowsAndColumnsOfTheParent) {
  constexpr index_t rows = 6, cols = 5, stride = 9;
  std::vector<TypeParam> buffer(rows * stride);
  const MatrixView<TypeParam> m(buffer.data(), rows, cols, stride);
  const MatrixView<TypeParam> blk = m.block(2, 3, 1, 4);
  EXPECT_EQ(blk.rows, 3);
  EXPECT_EQ(blk.cols, 4);
  EXPECT_EQ(blk.stride, stride);
  for (index_t i = 0; i < blk.rows; ++i)
    for (index_t j = 0; j < blk.cols; ++j) EXPECT_EQ(&blk(i, j), &buffer[(2 + i) * stride + 1 + j]);
}

TYPED_TEST(Views, DenseMatrixPacksRowsBackToBack) {
  std::vector<TypeParam> buffer(12);
  const MatrixView<TypeParam> m(buffer.data(), 3, 4);
  EXPECT_EQ(m.stride, 4);
  EXPECT_EQ(&m(2, 3), &buffer[11]);
}

TYPED_TEST(Views, ConstConversionKeepsEveryField) {
  std::vector<TypeParam> buffer(64);
  const MatrixView<TypeParam> m(buffer.data() + 1, 3, 4, 6);
  const MatrixView<const TypeParam> cm = m;
  EXPECT_EQ(cm.data, m.data);
  EXPECT_EQ(cm.rows, m.rows);
  EXPECT_EQ(cm.cols, m.cols);
  EXPECT_EQ(cm.stride, m.stride);

  const TensorView<TypeParam> t(buffer.data() + 2, 2, 3, 4, 5, 30, 1, 7);
  const TensorView<const TypeParam> ct = t;
  EXPECT_EQ(ct.data, t.data);
  EXPECT_EQ(ct.batch, 2);
  EXPECT_EQ(ct.heads, 3);
  EXPECT_EQ(ct.seq, 4);
  EXPECT_EQ(ct.dim, 5);
  EXPECT_EQ(ct.batch_stride, 30);
  EXPECT_EQ(ct.head_stride, 1);
  EXPECT_EQ(ct.seq_stride, 7);
}

TYPED_TEST(Views, SpanViewsAVectorInPlace) {
  std::vector<TypeParam> v{1, 2, 3};
  const Span<TypeParam> s = v;
  EXPECT_EQ(s.data, v.data());
  EXPECT_EQ(s.size, 3);
  EXPECT_FALSE(s.empty());
  s[1] = 20;  // a mutable span writes through to the vector
  EXPECT_EQ(v[1], 20);
  const std::vector<TypeParam>& cv = v;
  const Span<const TypeParam> cs = cv;
  EXPECT_EQ(cs.data, v.data());
  EXPECT_EQ(cs[2], 3);
  EXPECT_TRUE(Span<const TypeParam>(std::vector<TypeParam>{}).empty());
  EXPECT_TRUE(Span<const TypeParam>{}.empty());
}

TYPED_TEST(Views, DefaultTensorIsEmpty) {
  EXPECT_TRUE(TensorView<const TypeParam>{}.empty());
  TypeParam x = 0;
  EXPECT_FALSE(TensorView<TypeParam>::bhsd(&x, 1, 1, 1, 1).empty());
}

// Calls with mutable views of T where the signatures take MatrixIn<T>, TensorIn<T> and
// SpanIn<T>: they compile and compute.
TYPED_TEST(Views, MutableViewsAndVectorsBindToInputParameters) {
  using T = TypeParam;
  std::vector<T> q{1, 2, 3, 4}, k{5, 6, 7, 8}, s(4), bias{10, 20};
  const MatrixView<T> qm(q.data(), 2, 2), km(k.data(), 2, 2), sm(s.data(), 2, 2);
  attend::scores(qm, km, 0.5, sm);
  EXPECT_EQ(s, (std::vector<T>{8.5, 11.5, 19.5, 26.5}));  // 0.5 * [[17, 23], [39, 53]]

  attend::scores(TensorView<T>::bhsd(q.data(), 1, 1, 2, 2),
                 TensorView<T>::bhsd(k.data(), 1, 1, 2, 2), 1.0,
                 TensorView<T>::bhsd(s.data(), 1, 1, 2, 2));
  EXPECT_EQ(s, (std::vector<T>{17, 23, 39, 53}));

  attend::linear(qm, km, bias, sm);  // q k^T + bias
  EXPECT_EQ(s, (std::vector<T>{27, 43, 49, 73}));

  attend::merge_values(qm, km, sm);  // q k
  EXPECT_EQ(s, (std::vector<T>{19, 22, 43, 50}));
}

TEST(LargeViews, FactoryStridesStay64BitPast2To31) {
  float x = 0;  // never addressed: only the strides are compared
  const auto t = TensorView<float>::bhsd(&x, 2, 3, 40000, 20000);
  EXPECT_EQ(t.batch_stride, std::int64_t{2'400'000'000});
  EXPECT_EQ(t.head_stride, std::int64_t{800'000'000});
  const auto u = TensorView<float>::bshd(&x, 2, 40000, 3, 20000);
  EXPECT_EQ(u.batch_stride, std::int64_t{2'400'000'000});
  EXPECT_EQ(u.seq_stride, std::int64_t{60'000});
}

#if defined(__unix__)
// An address range of `bytes` reserved without memory behind it (PROT_NONE, no swap
// reserved), so that views of more than 2^31 elements point into one real mapping and
// their addresses can be formed and compared without undefined behaviour. Pages are made
// accessible one at a time, only where the test writes.
class Reservation {
 public:
  explicit Reservation(std::size_t bytes) : bytes_(bytes) {
    void* p = mmap(nullptr, bytes, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    base_ = p == MAP_FAILED ? nullptr : static_cast<float*>(p);
  }
  ~Reservation() {
    if (base_) munmap(base_, bytes_);
  }
  Reservation(const Reservation&) = delete;
  Reservation& operator=(const Reservation&) = delete;

  float* base() const { return base_; }
  // Makes the page holding element `offset` readable and writable.
  bool touchable(std::int64_t offset) const {
    const auto page = static_cast<std::uintptr_t>(sysconf(_SC_PAGESIZE));
    const auto at = reinterpret_cast<std::uintptr_t>(base_ + offset) & ~(page - 1);
    return mprotect(reinterpret_cast<void*>(at), page, PROT_READ | PROT_WRITE) == 0;
  }

 private:
  std::size_t bytes_;
  float* base_ = nullptr;
};

// A value written through the view lands at the hand-computed 64-bit offset.
::testing::AssertionResult addresses(const Reservation& r, float* through_view,
                                     std::int64_t expected_offset) {
  if (through_view - r.base() != expected_offset)
    return ::testing::AssertionFailure()
           << "offset " << (through_view - r.base()) << ", expected " << expected_offset;
  if (!r.touchable(expected_offset)) return ::testing::AssertionFailure() << "mprotect failed";
  *through_view = 42.5f;
  if (r.base()[expected_offset] != 42.5f) return ::testing::AssertionFailure() << "not written";
  return ::testing::AssertionSuccess();
}

TEST(LargeViews, OffsetsPast2To32ElementsAddressTheRightElement) {
  // [2, 3, 40000, 20000] floats: 4.8e9 elements, offsets beyond both 2^31 and 2^32.
  constexpr std::int64_t B = 2, H = 3, S = 40000, D = 20000, count = B * H * S * D;
  const Reservation r(std::size_t(count) * sizeof(float));
  if (!r.base()) GTEST_SKIP() << "cannot reserve " << count * 4 << " bytes of address space";

  const auto bhsd = TensorView<float>::bhsd(r.base(), B, H, S, D);
  EXPECT_TRUE(addresses(r, bhsd.row(1, 2, S - 1) + (D - 1), count - 1));
  EXPECT_TRUE(addresses(r, bhsd.row(1, 0, 17) + 5, (3 * S + 17) * D + 5));
  EXPECT_TRUE(addresses(r, &bhsd.head(1, 1)(S - 2, 3), ((4 * S) + S - 2) * D + 3));

  const auto bshd = TensorView<float>::bshd(r.base(), B, S, H, D);
  EXPECT_TRUE(addresses(r, bshd.row(1, 1, S - 1) + 9, ((S + S - 1) * H + 1) * D + 9));
  EXPECT_TRUE(addresses(r, &bshd.head(1, 2)(30000, 0), ((S + 30000) * H + 2) * D));

  // A matrix whose row stride alone exceeds 2^31.
  constexpr std::int64_t stride = (std::int64_t{1} << 31) + 11;
  const MatrixView<float> m(r.base(), 3, 5, stride);
  EXPECT_TRUE(addresses(r, m.row(2) + 4, 2 * stride + 4));
  EXPECT_TRUE(addresses(r, &m.block(1, 2, 1, 3)(0, 2), stride + 3));
}
#endif

}  // namespace
