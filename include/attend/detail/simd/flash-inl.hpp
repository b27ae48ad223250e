// Fused tiled attention, compiled once per path (see kernels_avx512.hpp). No includes and
// no lambdas here: this file is included inside each path's target region and namespace,
// which provides `Vec`.
//
// Placeholder until the flash kernel lands: the unfused composition.

inline void attention(TensorView<const float> q, TensorView<const float> k,
                      TensorView<const float> v, TensorView<float> o, const AttentionOptions& opts,
                      TensorView<float> lse, const Executor& executor) {
  unfused_attention<float>(q, k, v, o, opts, lse, executor);
}
