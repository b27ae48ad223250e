// Portable matrix product, the one loop nest behind projections, scores and the V merge.
//
//   c [M, N] = alpha * a [M, K] * op(b) + bias [N]   (+ c when accumulating)
//
// with op(b) = b^T for b stored [N, K] (b_transposed: rows of b are columns of the
// product, as in nn.Linear weights and in K for Q K^T) or op(b) = b for b stored [K, N].
// Sums run in acc_t<T> in the natural order k = 0, 1, ..., K-1. Written for clarity: the
// SIMD paths replace it, and the tests hold them to the same answers.
#pragma once

#include "attend/detail/config.hpp"

#include <algorithm>
#include <vector>

#include "attend/detail/types.hpp"
#include "attend/view.hpp"

ATTEND_NAMESPACE_BEGIN
namespace detail::portable {

template <class T>
void gemm(MatrixView<const T> a, MatrixView<const T> b, bool b_transposed, acc_t<T> alpha,
          const T* bias, bool accumulate, MatrixView<T> c) {
  using Acc = acc_t<T>;
  const index_t m = c.rows, n = c.cols, k = a.cols;
  std::vector<Acc> row(static_cast<std::size_t>(n));
  for (index_t i = 0; i < m; ++i) {
    const T* ai = a.row(i);
    if (b_transposed) {
      // Each entry is a dot product of two contiguous rows.
      for (index_t j = 0; j < n; ++j) {
        const T* bj = b.row(j);
        Acc sum = 0;
        for (index_t p = 0; p < k; ++p) sum += Acc(ai[p]) * Acc(bj[p]);
        row[j] = sum;
      }
    } else {
      // Row i of c is a combination of the rows of b, read contiguously.
      std::fill(row.begin(), row.end(), Acc(0));
      for (index_t p = 0; p < k; ++p) {
        const Acc aip = Acc(ai[p]);
        const T* bp = b.row(p);
        for (index_t j = 0; j < n; ++j) row[j] += aip * Acc(bp[j]);
      }
    }
    T* ci = c.row(i);
    for (index_t j = 0; j < n; ++j) {
      Acc v = alpha * row[j];
      if (bias) v += Acc(bias[j]);
      if (accumulate) v += Acc(ci[j]);
      ci[j] = static_cast<T>(v);
    }
  }
}

}  // namespace detail::portable
ATTEND_NAMESPACE_END
