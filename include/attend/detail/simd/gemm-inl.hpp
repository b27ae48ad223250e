// SIMD matrix product, compiled once per path (see kernels_avx512.hpp). No includes and no
// lambdas here: this file is included inside each path's target region and namespace,
// which provides `Vec`.
//
// Placeholder until the packed micro-kernel lands: forwards to the portable loops.

inline void gemm(MatrixView<const float> a, MatrixView<const float> b, bool b_transposed,
                 float alpha, const float* bias, bool accumulate, MatrixView<float> c,
                 const Executor& executor) {
  (void)executor;
  portable::gemm<float>(a, b, b_transposed, alpha, bias, accumulate, c);
}
