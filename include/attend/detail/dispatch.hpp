// The run-time dispatch: each kernel's entry point takes the path a call resolved to and
// runs that path's implementation. Double precision always runs the portable path.
#pragma once

#include "attend/detail/config.hpp"

#include <cstdint>
#include <type_traits>

#include "attend/context.hpp"
#include "attend/detail/portable/gemm.hpp"
#include "attend/detail/portable/softmax.hpp"
#include "attend/detail/unfused.hpp"
#include "attend/isa.hpp"

#if ATTEND_X86_64
#include "attend/detail/simd/kernels_avx2.hpp"
#include "attend/detail/simd/kernels_avx512.hpp"
#endif
#if ATTEND_AARCH64
#include "attend/detail/simd/kernels_neon.hpp"
#endif

ATTEND_NAMESPACE_BEGIN
namespace detail {

// c = alpha * a * op(b) + bias (+ c); see portable/gemm.hpp.
template <class T>
void gemm(Isa isa, const Executor& executor, MatrixView<const T> a, MatrixView<const T> b,
          bool b_transposed, acc_t<T> alpha, const T* bias, bool accumulate, MatrixView<T> c) {
  if constexpr (std::is_same_v<T, float>) {
#if ATTEND_X86_64
    if (isa == Isa::avx512)
      return avx512::gemm(a, b, b_transposed, alpha, bias, accumulate, c, executor);
    if (isa == Isa::avx2)
      return avx2::gemm(a, b, b_transposed, alpha, bias, accumulate, c, executor);
#endif
#if ATTEND_AARCH64
    if (isa == Isa::neon)
      return neon::gemm(a, b, b_transposed, alpha, bias, accumulate, c, executor);
#endif
  }
  (void)isa, (void)executor;
  portable::gemm<T>(a, b, b_transposed, alpha, bias, accumulate, c);
}

// Per-head products with grouped heads: c[b, h] = alpha * a[b, h] * op(b_[b, h / group]) for
// every (batch, head) pair (scores and merge_values). The heads that share a head of b form
// one product, one task, when their rows of a and of c are each one strided matrix (one
// row per head, as in decode, or heads stored back to back): b is then read, and on the
// SIMD paths packed, once per group rather than once per head. Each element of c is the
// same chain of operations either way (see gemm-inl.hpp), so the bits do not change.
template <class T>
void gemm_per_head(const Context& ctx, TensorView<const T> a, TensorView<const T> b,
                   bool b_transposed, acc_t<T> alpha, TensorView<T> c) {
  if (a.heads == 0) return;
  const index_t group = a.heads / b.heads;
  const Isa isa = resolve(ctx.isa);
  const auto stacked = [](index_t seq, index_t head_stride, index_t seq_stride) {
    return seq == 1 || head_stride == seq * seq_stride;
  };
  if (group > 1 && a.seq > 0 && stacked(a.seq, a.head_stride, a.seq_stride) &&
      stacked(c.seq, c.head_stride, c.seq_stride)) {
    // Row r = (h - g * group) * seq + i of a group's matrices is query position i of head h.
    const index_t a_step = a.seq == 1 ? a.head_stride : a.seq_stride;
    const index_t c_step = c.seq == 1 ? c.head_stride : c.seq_stride;
    executor_of(ctx).parallel_for(a.batch * b.heads, [&](index_t task) {
      const index_t n = task / b.heads, g = task % b.heads;
      const MatrixView<const T> ag(a.row(n, g * group, 0), group * a.seq, a.dim, a_step);
      const MatrixView<T> cg(c.row(n, g * group, 0), group * c.seq, c.dim, c_step);
      gemm<T>(isa, SerialExecutor(), ag, b.head(n, g), b_transposed, alpha, nullptr, false, cg);
    });
    return;
  }
  executor_of(ctx).parallel_for(a.batch * a.heads, [&](index_t task) {
    const index_t n = task / a.heads, h = task % a.heads;
    gemm<T>(isa, SerialExecutor(), a.head(n, h), b.head(n, h / group), b_transposed, alpha, nullptr,
            false, c.head(n, h));
  });
}

// One row of the masked softmax; see portable/softmax.hpp.
template <class T>
acc_t<T> softmax_row(Isa isa, const ScoreRule<acc_t<T>>& rule, index_t i, const T* s, index_t n,
                     T* p, acc_t<T>* scratch) {
  if constexpr (std::is_same_v<T, float>) {
#if ATTEND_X86_64
    if (isa == Isa::avx512) return avx512::softmax_row(rule, i, s, n, p, scratch);
    if (isa == Isa::avx2) return avx2::softmax_row(rule, i, s, n, p, scratch);
#endif
#if ATTEND_AARCH64
    if (isa == Isa::neon) return neon::softmax_row(rule, i, s, n, p, scratch);
#endif
  }
  (void)isa;
  return portable::softmax_row<T>(rule, i, s, n, p, scratch);
}

// Attention for every batch and head: the fused kernel on SIMD paths, the unfused
// composition on the portable path.
template <class T>
void attention(Isa isa, const Executor& executor, TensorView<const T> q, TensorView<const T> k,
               TensorView<const T> v, TensorView<T> o, const AttentionOptions& opts,
               TensorView<T> lse) {
  if constexpr (std::is_same_v<T, float>) {
#if ATTEND_X86_64
    if (isa == Isa::avx512) return avx512::attention(q, k, v, o, opts, lse, executor);
    if (isa == Isa::avx2) return avx2::attention(q, k, v, o, opts, lse, executor);
#endif
#if ATTEND_AARCH64
    if (isa == Isa::neon) return neon::attention(q, k, v, o, opts, lse, executor);
#endif
  }
  (void)isa;
  unfused_attention<T>(q, k, v, o, opts, lse, executor);
}

// Decode attention over a KV cache's rows (see decode.hpp): the decode tasks of
// decode-inl.hpp on SIMD paths, the unfused composition on the portable path.
template <class T, class Source>
void decode(Isa isa, const Executor& executor, TensorView<const T> q, const Source& kv,
            index_t kv_heads, index_t dv, const std::int32_t* sequence,
            const AttentionOptions& opts, index_t sk, TensorView<T> o, TensorView<T> lse,
            index_t split_keys) {
  if constexpr (std::is_same_v<T, float>) {
#if ATTEND_X86_64
    if (isa == Isa::avx512)
      return avx512::decode(q, kv, kv_heads, dv, sequence, opts, sk, o, lse, split_keys, executor);
    if (isa == Isa::avx2)
      return avx2::decode(q, kv, kv_heads, dv, sequence, opts, sk, o, lse, split_keys, executor);
#endif
#if ATTEND_AARCH64
    if (isa == Isa::neon)
      return neon::decode(q, kv, kv_heads, dv, sequence, opts, sk, o, lse, split_keys, executor);
#endif
  }
  (void)isa, (void)split_keys;
  unfused_decode<T>(q, kv, kv_heads, dv, sequence, opts, sk, o, lse, executor);
}

}  // namespace detail
ATTEND_NAMESPACE_END
