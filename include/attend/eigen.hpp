// Optional Eigen adapter: attend's calls on Eigen matrices. Include it only where Eigen is
// available; nothing else in attend depends on Eigen.
//
// attend works on row-major data, so the adapter takes row-major matrices and blocks of
// them (RowMatrix<T>, Eigen::Map of one, .block() of either) without copying. Inputs in
// Eigen's default column-major order are accepted too and copied into a row-major
// temporary for the duration of the call; outputs must be row-major.
#pragma once

#include "attend/detail/config.hpp"

#include <Eigen/Core>
#include <type_traits>
#include <utility>

#include "attend/attention.hpp"
#include "attend/linear.hpp"
#include "attend/softmax.hpp"
#include "attend/view.hpp"

ATTEND_NAMESPACE_BEGIN
namespace eigen {

template <class T>
using RowMatrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
// A read-only row-major argument: binds row-major matrices and blocks without a copy.
template <class T>
using ConstRef = Eigen::Ref<const RowMatrix<T>, 0, Eigen::OuterStride<>>;
// A writable row-major argument: a row-major matrix, Map or block (never a copy).
template <class T>
using Ref = Eigen::Ref<RowMatrix<T>, 0, Eigen::OuterStride<>>;
// A vector argument (a bias): any contiguous vector.
template <class T>
using ConstVectorRef = Eigen::Ref<const Eigen::Matrix<T, Eigen::Dynamic, 1>>;

// A view of row-major Eigen storage (a RowMatrix, a Map of one, a block of either, a Ref);
// const storage gives a read-only view. The view lives as long as the storage it views.
template <class M>
auto view(M&& m) {
  using Xpr = std::decay_t<M>;
  static_assert(Xpr::IsRowMajor, "attend views row-major Eigen storage: use RowMatrix<T>");
  static_assert(bool(Xpr::Flags & Eigen::DirectAccessBit),
                "attend views Eigen storage, not expressions");
  using Element = std::remove_pointer_t<decltype(m.data())>;
  return MatrixView<Element>{m.data(), index_t(m.rows()), index_t(m.cols()),
                             index_t(m.outerStride())};
}

// The calls below take any Eigen expressions of one scalar type T (float or double); a
// read-only argument that is not row-major storage is copied for the call, an output must
// be writable row-major storage (RowMatrix<T>, a Map or a block of one).

// y = x . W^T + bias (W in nn.Linear layout [out, in]); pass an empty vector for no bias.
template <class X, class W, class B, class Y>
void linear(const Eigen::MatrixBase<X>& x, const Eigen::MatrixBase<W>& w,
            const Eigen::MatrixBase<B>& bias, Y&& y) {
  using T = typename X::Scalar;
  const ConstRef<T> xr(x), wr(w);
  const ConstVectorRef<T> br(bias);
  attend::linear<T>(view(xr), view(wr), {br.data(), br.size()}, view(Ref<T>(std::forward<Y>(y))));
}

// Row softmax of x into y (y may be x itself).
template <class X, class Y>
void softmax(const Eigen::MatrixBase<X>& x, Y&& y) {
  using T = typename X::Scalar;
  const ConstRef<T> xr(x);
  attend::softmax<T>(view(xr), view(Ref<T>(std::forward<Y>(y))));
}

// Single-head attention: o [Sq, Dv] from q [Sq, Dk], k [Sk, Dk] and v [Sk, Dv], with every
// option of attend::attention (per-batch and per-head arrays in the options have 1 entry).
template <class Q, class K, class V, class O>
void attention(const Eigen::MatrixBase<Q>& q, const Eigen::MatrixBase<K>& k,
               const Eigen::MatrixBase<V>& v, O&& o, const AttentionOptions& opts = {}) {
  using T = typename Q::Scalar;
  const ConstRef<T> qr(q), kr(k), vr(v);
  auto as_tensor = [](auto m) {
    using E = std::remove_pointer_t<decltype(m.data)>;
    return TensorView<E>{m.data, 1, 1, m.rows, m.cols, 0, 0, m.stride};
  };
  attend::attention<T>(as_tensor(view(qr)), as_tensor(view(kr)), as_tensor(view(vr)),
                       as_tensor(view(Ref<T>(std::forward<O>(o)))), opts);
}

}  // namespace eigen
ATTEND_NAMESPACE_END
