// Non-owning views over the caller's buffers.
//
// attend never allocates or copies the tensors it is given: every kernel reads and writes
// through these views, so a caller can pass a slice of a larger buffer, a head-interleaved
// layout written by a fused QKV projection, or a KV cache with spare capacity, as it is.
//
// Extents and strides are counted in elements, as signed 64-bit integers: a KV cache can
// exceed 2^31 elements, and every offset computed from these fields stays 64-bit.
#pragma once

#include "attend/detail/config.hpp"

#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <vector>

ATTEND_NAMESPACE_BEGIN

using index_t = std::int64_t;

// A pointer and a length: a 1-D array such as a bias, the per-head ALiBi slopes or the
// per-batch key lengths. Converts from std::vector so callers rarely spell it out.
template <class T>
struct Span {
  T* data = nullptr;
  index_t size = 0;

  Span() = default;
  Span(T* data_, index_t size_) : data(data_), size(size_) {}
  template <class U, class = std::enable_if_t<std::is_convertible_v<const U*, T*>>>
  Span(const std::vector<U>& v)  // NOLINT(google-explicit-constructor): a vector is a span
      : data(v.data()), size(static_cast<index_t>(v.size())) {}
  template <class U, class = std::enable_if_t<std::is_convertible_v<U*, T*>>>
  Span(std::vector<U>& v)  // NOLINT(google-explicit-constructor)
      : data(v.data()), size(static_cast<index_t>(v.size())) {}

  bool empty() const { return size == 0; }
  T& operator[](index_t i) const { return data[i]; }
};

// A row-major matrix [rows, cols] whose rows start `stride` elements apart (stride >= cols
// for a matrix that owns its rows; a larger stride selects columns of a wider buffer).
template <class T>
struct MatrixView {
  T* data = nullptr;
  index_t rows = 0;
  index_t cols = 0;
  index_t stride = 0;

  MatrixView() = default;
  MatrixView(T* data_, index_t rows_, index_t cols_, index_t stride_)
      : data(data_), rows(rows_), cols(cols_), stride(stride_) {}
  // A dense matrix: rows packed back to back.
  MatrixView(T* data_, index_t rows_, index_t cols_) : MatrixView(data_, rows_, cols_, cols_) {}

  // A mutable view reads as a const one.
  operator MatrixView<const T>() const {  // NOLINT(google-explicit-constructor)
    return {data, rows, cols, stride};
  }

  T* row(index_t i) const { return data + i * stride; }
  T& operator()(index_t i, index_t j) const { return data[i * stride + j]; }

  // Rows [first, first + count) and columns [first_col, first_col + ncols).
  MatrixView block(index_t first, index_t count, index_t first_col, index_t ncols) const {
    return {data + first * stride + first_col, count, ncols, stride};
  }
};

// An attention tensor [batch, heads, seq, dim]. The last dimension is contiguous; each of
// the other three has its own stride, so both common layouts are views of one type:
//   BHSD (heads outermost):  batch_stride = H*S*D, head_stride = S*D, seq_stride = D
//   BSHD (heads interleaved, as a fused QKV projection writes them):
//                            batch_stride = S*H*D, head_stride = D,   seq_stride = H*D
// A stride of 0 on a dimension of extent 1 is how a bias or mask broadcasts over it.
template <class T>
struct TensorView {
  T* data = nullptr;
  index_t batch = 0;
  index_t heads = 0;
  index_t seq = 0;
  index_t dim = 0;
  index_t batch_stride = 0;
  index_t head_stride = 0;
  index_t seq_stride = 0;

  TensorView() = default;
  TensorView(T* data_, index_t batch_, index_t heads_, index_t seq_, index_t dim_,
             index_t batch_stride_, index_t head_stride_, index_t seq_stride_)
      : data(data_),
        batch(batch_),
        heads(heads_),
        seq(seq_),
        dim(dim_),
        batch_stride(batch_stride_),
        head_stride(head_stride_),
        seq_stride(seq_stride_) {}

  // A dense buffer laid out [batch][heads][seq][dim].
  static TensorView bhsd(T* data, index_t batch, index_t heads, index_t seq, index_t dim) {
    return {data, batch, heads, seq, dim, heads * seq * dim, seq * dim, dim};
  }
  // A dense buffer laid out [batch][seq][heads][dim], viewed as [batch, heads, seq, dim].
  static TensorView bshd(T* data, index_t batch, index_t seq, index_t heads, index_t dim) {
    return {data, batch, heads, seq, dim, seq * heads * dim, dim, heads * dim};
  }

  operator TensorView<const T>() const {  // NOLINT(google-explicit-constructor)
    return {data, batch, heads, seq, dim, batch_stride, head_stride, seq_stride};
  }

  bool empty() const { return data == nullptr; }

  T* row(index_t b, index_t h, index_t s) const {
    return data + b * batch_stride + h * head_stride + s * seq_stride;
  }
  // Positions [first, first + count) of every batch and head: the same strides, fewer rows
  // (one sequence of a packed batch, or the newest tokens of a cache).
  TensorView seq_slice(index_t first, index_t count) const {
    return {
        data + first * seq_stride, batch, heads, count, dim, batch_stride, head_stride, seq_stride};
  }
  // One head of one batch: a [seq, dim] matrix with row stride seq_stride.
  MatrixView<T> head(index_t b, index_t h) const {
    return {data + b * batch_stride + h * head_stride, seq, dim, seq_stride};
  }
};

namespace detail {
template <class T>
struct identity {
  using type = T;
};
}  // namespace detail

// Read-only views as function parameters. The element type of a call is deduced from its
// output view alone, so a MatrixView<float> converts to MatrixIn<float> at the call site.
template <class T>
using MatrixIn = typename detail::identity<MatrixView<const T>>::type;
template <class T>
using TensorIn = typename detail::identity<TensorView<const T>>::type;
template <class T>
using SpanIn = typename detail::identity<Span<const T>>::type;

ATTEND_NAMESPACE_END
