// Weights packed once, for engines that apply the same projection on every call.
//
// linear() reorders its weight into the layout its matrix product reads (panels of
// columns of W^T, a few vectors wide) on every call; when x has few rows, that costs about
// as much as the product itself. A PackedWeight does it once:
//
//   const attend::PackedWeight wq(w_q, attend::WeightLayout::out_in);   // at load time
//   attend::linear(x, wq, b_q, q);                                      // every step
//
// The packing is specific to an instruction-set path: a PackedWeight is packed for one
// (the process's default path unless told otherwise), and a call whose Context resolves to
// another path throws std::invalid_argument rather than repack on the fly at every call.
// On its path, linear with a PackedWeight gives bit for bit the results of linear with
// the weight it was packed from.
#pragma once

#include "attend/detail/config.hpp"

#include <cstddef>
#include <new>
#include <string>
#include <vector>

#include "attend/context.hpp"
#include "attend/detail/check.hpp"
#include "attend/detail/dispatch.hpp"
#include "attend/isa.hpp"
#include "attend/linear.hpp"
#include "attend/view.hpp"

ATTEND_NAMESPACE_BEGIN

namespace detail {
// Allocates on 64-byte boundaries, so that the packed panels' vector loads never split a
// cache line, in copies too.
template <class T>
struct CacheLineAllocator {
  using value_type = T;
  static constexpr std::align_val_t alignment{64};
  CacheLineAllocator() = default;
  template <class U>
  CacheLineAllocator(const CacheLineAllocator<U>&) {}  // NOLINT(google-explicit-constructor)
  T* allocate(std::size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), alignment)); }
  void deallocate(T* p, std::size_t) { ::operator delete(p, alignment); }
  friend bool operator==(const CacheLineAllocator&, const CacheLineAllocator&) { return true; }
  friend bool operator!=(const CacheLineAllocator&, const CacheLineAllocator&) { return false; }
};
}  // namespace detail

// A float weight of linear(), W [N, K] (out_in) or [K, N] (in_out), packed for one path.
// Owns its copy: the weight it was made from may go away. Copyable and movable.
class PackedWeight {
 public:
  // No weight: in_features() == out_features() == 0.
  PackedWeight() = default;

  // Packs w for `isa` (automatic: the process's default path, see isa.hpp). Throws
  // std::invalid_argument for a malformed view or a path this CPU cannot run.
  explicit PackedWeight(MatrixIn<float> w, WeightLayout layout = WeightLayout::out_in,
                        Isa isa = Isa::automatic) {
    const detail::Checker c("PackedWeight");
    c.matrix("w", w, detail::any, detail::any);
    c.require(supported(isa), "isa", std::string("this CPU cannot run the ") + name(isa) + " path");
    isa_ = resolve(isa);
    layout_ = layout;
    const bool out_in = layout == WeightLayout::out_in;
    in_ = out_in ? w.cols : w.rows;
    out_ = out_in ? w.rows : w.cols;
#if ATTEND_X86_64
    if (isa_ == Isa::avx512) {
      data_.resize(std::size_t(detail::avx512::packed_size(in_, out_)));
      detail::avx512::pack_weight(w, out_in, in_, out_, data_.data());
      return;
    }
    if (isa_ == Isa::avx2) {
      data_.resize(std::size_t(detail::avx2::packed_size(in_, out_)));
      detail::avx2::pack_weight(w, out_in, in_, out_, data_.data());
      return;
    }
#endif
#if ATTEND_AARCH64
    if (isa_ == Isa::neon) {
      data_.resize(std::size_t(detail::neon::packed_size(in_, out_)));
      detail::neon::pack_weight(w, out_in, in_, out_, data_.data());
      return;
    }
#endif
    // The portable path reads W as it is: a dense copy.
    data_.resize(std::size_t(w.rows * w.cols));
    for (index_t i = 0; i < w.rows; ++i)
      for (index_t j = 0; j < w.cols; ++j) data_[std::size_t(i * w.cols + j)] = w(i, j);
  }

  index_t in_features() const {
    return in_;
  }  // K: the columns of x
  index_t out_features() const {
    return out_;
  }  // N: the columns of y
  WeightLayout layout() const {
    return layout_;
  }
  Isa isa() const {
    return isa_;
  }  // the path it is packed for (never automatic)
  // The packed floats, in the path's private layout.
  Span<const float> data() const {
    return {data_.data(), index_t(data_.size())};
  }

 private:
  Isa isa_ = Isa::portable;
  WeightLayout layout_ = WeightLayout::out_in;
  index_t in_ = 0, out_ = 0;
  std::vector<float, detail::CacheLineAllocator<float>> data_;
};

namespace detail {
// y = x . op(W) + bias on the path w is packed for.
inline void linear_packed(const Executor& executor, MatrixView<const float> x,
                          const PackedWeight& w, const float* bias, MatrixView<float> y) {
#if ATTEND_X86_64
  if (w.isa() == Isa::avx512)
    return avx512::gemm_packed(x, w.data().data, 1.0f, bias, false, y, executor);
  if (w.isa() == Isa::avx2)
    return avx2::gemm_packed(x, w.data().data, 1.0f, bias, false, y, executor);
#endif
#if ATTEND_AARCH64
  if (w.isa() == Isa::neon)
    return neon::gemm_packed(x, w.data().data, 1.0f, bias, false, y, executor);
#endif
  (void)executor;  // unused where no SIMD path is compiled
  const bool out_in = w.layout() == WeightLayout::out_in;
  const index_t rows = out_in ? w.out_features() : w.in_features();
  const index_t cols = out_in ? w.in_features() : w.out_features();
  portable::gemm<float>(x, {w.data().data, rows, cols}, out_in, 1.0f, bias, false, y);
}
}  // namespace detail

// y [M, N] = x [M, K] . op(W) + bias [N] or empty, W packed in w: the same results, bit for
// bit, as linear(x, W, bias, y, w.layout(), ctx) on w's path. ctx must resolve to that
// path. y may not overlap x or bias.
inline void linear(MatrixIn<float> x, const PackedWeight& w, SpanIn<float> bias,
                   MatrixView<float> y, const Context& ctx = {}) {
  const detail::Checker c("linear");
  c.matrix("x", x, detail::any, w.in_features());
  c.matrix("y", y, x.rows, w.out_features());
  if (!bias.empty()) c.expect(bias.size, y.cols, "bias.size", "y.cols");
  c.require(bias.empty() || bias.data != nullptr, "bias", "null data");
  c.disjoint("y", y, "x", x);
  c.disjoint("y", y, "w", w.data());
  c.disjoint("y", y, "bias", bias);
  const Isa isa = c.isa(ctx);
  if (isa != w.isa())
    c.fail("w", std::string("packed for the ") + name(w.isa()) + " path, but the call runs the " +
                    name(isa) + " path (pack the weight for that path, or set Context::isa)");
  detail::linear_packed(detail::executor_of(ctx), x, w, bias.empty() ? nullptr : bias.data, y);
}

ATTEND_NAMESPACE_END
