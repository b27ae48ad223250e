// Argument validation shared by every public entry point.
//
// Every public call validates all of its arguments before it writes anything, and reports
// the first problem as std::invalid_argument naming the function, the argument, what was
// expected and what was given, e.g.
//   attend::attention: k: expected shape [2, 4, 17, 64], got [2, 4, 17, 80]
#pragma once

#include "attend/detail/config.hpp"

#include <algorithm>
#include <array>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "attend/context.hpp"
#include "attend/isa.hpp"
#include "attend/view.hpp"

ATTEND_NAMESPACE_BEGIN
namespace detail {

// Marks an extent that may take any value in an expected shape.
inline constexpr index_t any = -1;

template <std::size_t N>
std::string shape_string(const std::array<index_t, N>& dims) {
  std::string s = "[";
  for (std::size_t i = 0; i < N; ++i) {
    if (i) s += ", ";
    s += dims[i] == any ? std::string("*") : std::to_string(dims[i]);
  }
  return s + "]";
}

// The half-open byte range [begin, end) that a view touches; empty when any extent is 0.
struct ByteRange {
  std::uintptr_t begin = 0, end = 0;
  bool intersects(const ByteRange& o) const {
    return begin < end && o.begin < o.end && begin < o.end && o.begin < end;
  }
};

template <class T>
ByteRange byte_range(const MatrixView<T>& m) {
  if (m.rows <= 0 || m.cols <= 0) return {};
  const auto first = reinterpret_cast<std::uintptr_t>(m.data);
  return {first, first + sizeof(T) * static_cast<std::uintptr_t>((m.rows - 1) * m.stride + m.cols)};
}

template <class T>
ByteRange byte_range(const TensorView<T>& t) {
  if (t.batch <= 0 || t.heads <= 0 || t.seq <= 0 || t.dim <= 0) return {};
  const index_t last = (t.batch - 1) * t.batch_stride + (t.heads - 1) * t.head_stride +
                       (t.seq - 1) * t.seq_stride + t.dim;
  const auto first = reinterpret_cast<std::uintptr_t>(t.data);
  return {first, first + sizeof(T) * static_cast<std::uintptr_t>(last)};
}

template <class T>
ByteRange byte_range(const Span<T>& s) {
  if (s.size <= 0) return {};
  const auto first = reinterpret_cast<std::uintptr_t>(s.data);
  return {first, first + sizeof(T) * static_cast<std::uintptr_t>(s.size)};
}

// Is `b` exactly the view `a` (same elements in the same order)? An output may be exactly
// one of its inputs where a call works element by element (in place), never partly.
template <class T>
bool same_view(const TensorView<const T>& a, const TensorView<T>& b) {
  return a.data == b.data && a.batch == b.batch && a.heads == b.heads && a.seq == b.seq &&
         a.dim == b.dim && a.batch_stride == b.batch_stride && a.head_stride == b.head_stride &&
         a.seq_stride == b.seq_stride;
}

// Is an optional view given? Empty means a null pointer AND no extents: a null pointer
// with extents is a mistake the checks report, never a silent "absent".
template <class T>
bool given(const TensorView<T>& t) {
  return t.data != nullptr || t.batch || t.heads || t.seq || t.dim;
}

// Collects the checks of one public call; `fn` names the call in every message.
class Checker {
 public:
  explicit Checker(const char* fn) : fn_(fn) {}

  [[noreturn]] void fail(const std::string& arg, const std::string& what) const {
    throw std::invalid_argument(std::string("attend::") + fn_ + ": " + arg + ": " + what);
  }
  // (Checks on the hot path test first and build their message only on failure.)
  void require(bool ok, const std::string& arg, const std::string& what) const {
    if (!ok) fail(arg, what);
  }
  void expect(index_t actual, index_t expected, const std::string& arg,
              const std::string& why) const {
    if (actual != expected)
      fail(arg, "expected " + std::to_string(expected) + " (" + why + "), got " +
                    std::to_string(actual));
  }

  // A matrix of the expected shape (`any` leaves an extent free), with rows at least
  // `cols` apart, and a non-null pointer whenever it has elements.
  template <class T>
  void matrix(const std::string& arg, const MatrixView<T>& m, index_t rows, index_t cols) const {
    const std::array<index_t, 2> got{m.rows, m.cols}, want{rows, cols};
    if (m.rows < 0 || m.cols < 0) fail(arg, "negative extent in shape " + shape_string(got));
    for (std::size_t i = 0; i < 2; ++i)
      if (want[i] != any && got[i] != want[i])
        fail(arg, "expected shape " + shape_string(want) + ", got " + shape_string(got));
    if (m.rows > 1 && m.stride < m.cols)
      fail(arg, "row stride " + std::to_string(m.stride) + " is smaller than a row of " +
                    std::to_string(m.cols) + " elements");
    if (m.data == nullptr && m.rows > 0 && m.cols > 0)
      fail(arg, "null data for shape " + shape_string(got));
  }

  // A tensor of the expected shape with non-negative strides and rows at least `dim`
  // apart. Batch and head strides may be 0 on inputs (one tensor shared by all).
  template <class T>
  void tensor(const std::string& arg, const TensorView<T>& t,
              const std::array<index_t, 4>& want) const {
    const std::array<index_t, 4> got{t.batch, t.heads, t.seq, t.dim};
    for (index_t e : got)
      if (e < 0) fail(arg, "negative extent in shape " + shape_string(got));
    for (std::size_t i = 0; i < 4; ++i)
      if (want[i] != any && got[i] != want[i])
        fail(arg, "expected shape " + shape_string(want) + ", got " + shape_string(got));
    const bool has_elements = t.batch && t.heads && t.seq && t.dim;
    if (!has_elements) return;  // the strides of an empty view address nothing
    if (t.batch_stride < 0 || t.head_stride < 0 || t.seq_stride < 0) fail(arg, "negative stride");
    if (t.seq > 1 && t.seq_stride < t.dim)
      fail(arg, "seq stride " + std::to_string(t.seq_stride) + " is smaller than a row of " +
                    std::to_string(t.dim) + " elements");
    if (t.data == nullptr) fail(arg, "null data for shape " + shape_string(got));
  }

  // An output must not write any element twice: sorted by stride, each dimension's stride
  // must step past everything the smaller dimensions span.
  template <class T>
  void distinct_elements(const std::string& arg, const TensorView<T>& t) const {
    if (byte_range(t).begin == byte_range(t).end) return;  // no elements, nothing to collide
    std::array<std::array<index_t, 2>, 3> dims{
        {{t.seq_stride, t.seq}, {t.head_stride, t.heads}, {t.batch_stride, t.batch}}};
    std::sort(dims.begin(), dims.end());
    index_t span = t.dim;  // elements covered by the dimensions already placed
    for (const auto& [stride, extent] : dims) {
      if (extent <= 1) continue;
      if (stride < span)
        fail(arg, "strides make elements overlap (an output needs distinct elements)");
      span = stride * (extent - 1) + span;
    }
  }

  // The path the call runs: ctx's, which this CPU must be able to run.
  Isa isa(const Context& ctx) const {
    if (!supported(ctx.isa))
      fail("ctx.isa", std::string("this CPU cannot run the ") + name(ctx.isa) + " path");
    return resolve(ctx.isa);
  }

  // An output may not share memory with an input.
  template <class Out, class In>
  void disjoint(const std::string& out_arg, const Out& out, const std::string& in_arg,
                const In& in) const {
    if (byte_range(out).intersects(byte_range(in)))
      fail(out_arg, "overlaps " + in_arg + " (outputs may not alias inputs)");
  }

 private:
  const char* fn_;
};

}  // namespace detail
ATTEND_NAMESPACE_END
