// Small pieces shared by the per-header tests: refused calls, matrices seen as tensors (so
// that tolerance.hpp's comparisons apply to them), and readable names for typed suites.
#pragma once

#include <gtest/gtest.h>

#include <cstring>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "attend/view.hpp"
#include "support/reference.hpp"

namespace testing_support {

// Typed suites print as Suite/float.Test and Suite/double.Test.
struct TypeNames {
  template <class T>
  static std::string GetName(int) {
    return std::is_same_v<T, float> ? "float" : "double";
  }
};
using FloatingTypes = ::testing::Types<float, double>;

// The error a refused call must raise: attend::<function>: <argument>: ...<detail>...
struct Refusal {
  std::string function, argument, detail;
};

template <class T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  // memcmp may not be given the null data() of an empty vector, even for zero bytes.
  return a.size() == b.size() &&
         (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
}

// Two matrices of one shape hold the same bits (so -0 differs from +0 and NaNs compare by
// payload); the failure names the first element that differs.
template <class T>
::testing::AssertionResult same_bits(attend::MatrixView<const T> a, attend::MatrixView<const T> b) {
  if (a.rows != b.rows || a.cols != b.cols) return ::testing::AssertionFailure() << "shapes differ";
  for (attend::index_t i = 0; i < a.rows; ++i)
    for (attend::index_t j = 0; j < a.cols; ++j)
      if (std::memcmp(a.row(i) + j, b.row(i) + j, sizeof(T)) != 0)
        return ::testing::AssertionFailure()
               << "at [" << i << ", " << j << "]: " << a(i, j) << " vs " << b(i, j);
  return ::testing::AssertionSuccess();
}

// Runs `call` and expects it to throw std::invalid_argument naming the function and the
// argument of `expected`, with every storage in `watched` (the outputs, and inputs where an
// output aliases them) bitwise unchanged: attend checks all arguments before writing
// anything (detail/check.hpp).
template <class Call, class... Storage>
::testing::AssertionResult rejects(const Refusal& expected, Call&& call,
                                   const std::vector<Storage>&... watched) {
  const auto before = std::make_tuple(watched...);
  const std::string prefix = "attend::" + expected.function + ": " + expected.argument + ": ";
  std::string message;
  try {
    call();
    return ::testing::AssertionFailure() << "no exception; expected \"" << prefix << "...\"";
  } catch (const std::invalid_argument& e) {
    message = e.what();
  }
  const auto at = message.find(prefix);
  if (at == std::string::npos ||
      message.find(expected.detail, at + prefix.size()) == std::string::npos)
    return ::testing::AssertionFailure() << "message \"" << message << "\" does not name \""
                                         << prefix << "\" and \"" << expected.detail << "\"";
  const bool unchanged = std::apply(
      [&](const auto&... snapshot) { return (same_bits(snapshot, watched) && ...); }, before);
  if (!unchanged)
    return ::testing::AssertionFailure()
           << "refused with \"" << message << "\" but a watched storage changed";
  return ::testing::AssertionSuccess();
}

// A matrix [rows, cols] as the tensor [1, 1, rows, cols].
template <class T>
attend::TensorView<T> as_tensor(attend::MatrixView<T> m) {
  return {m.data, 1, 1, m.rows, m.cols, 0, 0, m.stride};
}
inline ref::Tensor as_tensor(const ref::Matrix& m) {
  ref::Tensor t(1, 1, m.rows, m.cols);
  t.v = m.v;
  return t;
}

}  // namespace testing_support
