// SIMD masked softmax of one row, compiled once per path (see kernels_avx512.hpp). No
// includes and no lambdas here: this file is included inside each path's target region
// and namespace, which provides `Vec`.
//
// Placeholder until the vectorised row lands: forwards to the portable row.

inline float softmax_row(const ScoreRule<float>& rule, index_t i, const float* s, index_t n,
                         float* p, float* scratch) {
  return portable::softmax_row<float>(rule, i, s, n, p, scratch);
}
