// eigen_interop: attend's calls on Eigen matrices, checked against plain Eigen.
//
// attend/eigen.hpp takes row-major Eigen matrices, and blocks of them, without copying:
// a head of Q is just the block Q.middleCols(h * D, D) of the [S, E] projection, a view
// with row stride E. Column-major inputs (Eigen's default MatrixXf) work too; they are
// copied into a row-major temporary for the call. Outputs must be row-major.
//
// Each attend call below is compared with the textbook Eigen expression of the same maths:
//   linear     Y = X W^T + b
//   softmax    P = exp(S - rowmax(S)) / rowsum(...)
//   attention  O = softmax(Q K^T / sqrt(D)) V, unmasked and causal
#include <attend/eigen.hpp>

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <random>
#include <string>

namespace {

using attend::eigen::RowMatrix;
using Matrix = RowMatrix<float>;

constexpr Eigen::Index kTokens = 7;  // S: deliberately not a multiple of a vector width
constexpr Eigen::Index kEmbed = 8;   // E
constexpr Eigen::Index kHeads = 2;   // H
constexpr Eigen::Index kHeadDim = kEmbed / kHeads;  // D

// Uniform in [-a, a) from the raw 32-bit Mersenne Twister output, whose sequence the C++
// standard fixes: every platform prints the same numbers.
Matrix random_matrix(std::mt19937& gen, Eigen::Index rows, Eigen::Index cols, float a) {
  Matrix m(rows, cols);
  for (Eigen::Index i = 0; i < m.size(); ++i)
    m.data()[i] = a * (2.0f * static_cast<float>(gen() / 4294967296.0) - 1.0f);
  return m;
}

// The row softmax in plain Eigen.
Matrix eigen_softmax(const Matrix& s) {
  const Eigen::ArrayXXf e = (s.colwise() - s.rowwise().maxCoeff()).array().exp();
  return (e.colwise() / e.rowwise().sum()).matrix();
}

// Attention in plain Eigen: softmax(q k^T scale) v, with the causal mask when asked
// (query i sees keys 0..i: Sq == Sk, so both alignments agree).
Matrix eigen_attention(const Matrix& q, const Matrix& k, const Matrix& v, bool causal) {
  Matrix s = q * k.transpose() / std::sqrt(float(q.cols()));
  if (causal)
    s.triangularView<Eigen::StrictlyUpper>().setConstant(-std::numeric_limits<float>::infinity());
  return eigen_softmax(s) * v;
}

// Max |a - b|, infinite when either holds a NaN, so that NaN never passes.
double max_difference(const Matrix& a, const Matrix& b) {
  const Matrix d = (a - b).cwiseAbs();
  return d.hasNaN() ? std::numeric_limits<double>::infinity() : double(d.maxCoeff());
}

int failures = 0;

// Both sides compute the same sums in different orders: allow about one float epsilon per
// term summed (`terms`), times 4 for exp and the division, relative to the values' size.
void check(const std::string& what, const Matrix& ours, const Matrix& reference, double terms) {
  const double magnitude = std::max(1.0, double(reference.cwiseAbs().maxCoeff()));
  const double tol = 4 * terms * std::numeric_limits<float>::epsilon() * magnitude;
  const double difference = max_difference(ours, reference);
  const bool ok = difference <= tol;
  std::printf("%s: %-46s max difference %.2e (tolerance %.2e)\n", ok ? "ok" : "FAILED",
              what.c_str(), difference, tol);
  if (!ok) ++failures;
}

}  // namespace

int main() {
  std::mt19937 gen(2009);
  const float a = 1.0f / std::sqrt(float(kEmbed));             // nn.Linear's initial range
  const Matrix x = random_matrix(gen, kTokens, kEmbed, 1.0f);  // [S, E]
  const Matrix wq = random_matrix(gen, kEmbed, kEmbed, 2 * a),
               wk = random_matrix(gen, kEmbed, kEmbed, 2 * a),
               wv = random_matrix(gen, kEmbed, kEmbed, 2 * a);  // [E, E], nn.Linear layout
  const Eigen::VectorXf bq = random_matrix(gen, kEmbed, 1, a), no_bias;

  std::printf("attend with Eigen: X [%d, %d], WQ, WK, WV [%d, %d], %d heads of D = %d\n\n",
              int(kTokens), int(kEmbed), int(kEmbed), int(kEmbed), int(kHeads), int(kHeadDim));

  // linear: Q [S, E] = X WQ^T + bq. An empty vector means no bias.
  Matrix q(kTokens, kEmbed), k(kTokens, kEmbed), v(kTokens, kEmbed);
  attend::eigen::linear(x, wq, bq, q);
  attend::eigen::linear(x, wk, no_bias, k);
  attend::eigen::linear(x, wv, no_bias, v);
  const Matrix q_reference = (x * wq.transpose()).rowwise() + bq.transpose();
  check("linear: Q = X WQ^T + bq", q, q_reference, double(kEmbed));
  check("linear: K = X WK^T", k, x * wk.transpose(), double(kEmbed));

  // softmax of head 0's scores, in place in a row-major matrix.
  const auto q0 = q.leftCols(kHeadDim), k0 = k.leftCols(kHeadDim);
  Matrix s = q0 * k0.transpose() / std::sqrt(float(kHeadDim));
  const Matrix s_copy = s;
  attend::eigen::softmax(s, s);
  check("softmax of head 0's scores (in place)", s, eigen_softmax(s_copy), double(kTokens));

  // attention head by head on blocks: O.middleCols(h*D, D) is written in place, and the
  // [S, E] result is the heads side by side, ready for the output projection.
  for (const bool causal : {false, true}) {
    attend::AttentionOptions opts;
    opts.causal = causal;
    Matrix o(kTokens, kEmbed), o_reference(kTokens, kEmbed);
    for (Eigen::Index h = 0; h < kHeads; ++h) {
      const Eigen::Index c = h * kHeadDim;
      attend::eigen::attention(q.middleCols(c, kHeadDim), k.middleCols(c, kHeadDim),
                               v.middleCols(c, kHeadDim), o.middleCols(c, kHeadDim), opts);
      o_reference.middleCols(c, kHeadDim) = eigen_attention(
          q.middleCols(c, kHeadDim), k.middleCols(c, kHeadDim), v.middleCols(c, kHeadDim), causal);
    }
    check(causal ? "attention, causal, per head on blocks"
                 : "attention, unmasked, per head on blocks",
          o, o_reference, double(kHeadDim + 2 * kTokens));
  }

  // A column-major input (Eigen's default) is copied to row-major for the call.
  const Eigen::MatrixXf k_column_major = k.leftCols(kHeadDim);
  Matrix o0(kTokens, kHeadDim);
  attend::eigen::attention(q0, k_column_major, v.leftCols(kHeadDim), o0);
  check("attention with a column-major K", o0,
        eigen_attention(q0, k_column_major, v.leftCols(kHeadDim), false),
        double(kHeadDim + 2 * kTokens));

  std::printf("\n%s\n", failures == 0 ? "all checks passed" : "SOME CHECKS FAILED");
  return failures == 0 ? 0 : 1;
}
