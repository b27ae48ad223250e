// The AVX-512 path's vector of floats: 16 lanes in a zmm register, 32 registers.
//
// Every SIMD kernel of attend is written once against the operations below (see
// kernels-inl.hpp) and compiled once per path; avx2.hpp has the same operations on 8
// lanes. Only code reached through the run-time dispatch may call them.
#pragma once

#include "attend/detail/config.hpp"

#include <cstdint>
#include <limits>

#include "attend/detail/simd/avx2.hpp"
#include "attend/detail/simd/target.hpp"

ATTEND_BEGIN_TARGET_AVX512
ATTEND_NAMESPACE_BEGIN
namespace detail::avx512 {

struct Vec {
  using V = __m512;
  static constexpr int lanes = 16;
  static constexpr int registers = 32;
  static constexpr const char* isa = "avx512";

  static V zero() { return _mm512_setzero_ps(); }
  static V set1(float x) { return _mm512_set1_ps(x); }
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, V v) { _mm512_storeu_ps(p, v); }
  // The first n lanes (0 <= n <= lanes); the others read as 0 and are never touched.
  static __mmask16 first(int n) { return __mmask16((1u << n) - 1u); }
  static V load(const float* p, int n) { return _mm512_maskz_loadu_ps(first(n), p); }
  static void store(float* p, V v, int n) { _mm512_mask_storeu_ps(p, first(n), v); }

  static V add(V a, V b) { return _mm512_add_ps(a, b); }
  static V sub(V a, V b) { return _mm512_sub_ps(a, b); }
  static V mul(V a, V b) { return _mm512_mul_ps(a, b); }
  static V fmadd(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }  // a * b + c
  // max/min return the second operand when either is NaN: pass the value that must carry
  // a NaN through second.
  static V max(V a, V b) { return _mm512_max_ps(a, b); }
  static V min(V a, V b) { return _mm512_min_ps(a, b); }
  // Lanes where a == b take if_equal, the others `otherwise`.
  static V select_equal(V a, V b, V if_equal, V otherwise) {
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(a, b, _CMP_EQ_OQ), otherwise, if_equal);
  }
  static V div(V a, V b) { return _mm512_div_ps(a, b); }
  static float reduce_add(V v) { return _mm512_reduce_add_ps(v); }
  // out[0, 4) = c * (the sum of the lanes of x[0], ..., x[3]): four reductions folded into
  // one transpose-and-add tree, 6 shuffles for the 4 sums where reduce_add takes 4 each.
  static void sums4(const V* x, float c, float* out) {
    // Per 128-bit block: [a0 + a2, b0 + b2, a1 + a3, b1 + b3], and the same for c, d.
    const V ab = _mm512_add_ps(_mm512_unpacklo_ps(x[0], x[1]), _mm512_unpackhi_ps(x[0], x[1]));
    const V cd = _mm512_add_ps(_mm512_unpacklo_ps(x[2], x[3]), _mm512_unpackhi_ps(x[2], x[3]));
    // Per block: [a, b, c, d], partial sums of that block's lanes.
    const V abcd = _mm512_add_ps(
        _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(ab), _mm512_castps_pd(cd))),
        _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(ab), _mm512_castps_pd(cd))));
    const __m256 half =
        _mm256_add_ps(_mm512_castps512_ps256(abcd), _mm512_extractf32x8_ps(abcd, 1));
    const __m128 sum = _mm_add_ps(_mm256_castps256_ps128(half), _mm256_extractf128_ps(half, 1));
    _mm_storeu_ps(out, _mm_mul_ps(sum, _mm_set1_ps(c)));
  }
  static float reduce_max(V v) { return _mm512_reduce_max_ps(v); }

  // out[i * out_stride + c] = rows[c][d + i] for i, c < 8: avx2.hpp's 8 x 8 transpose in
  // ymm registers (a subset of this target, so GCC inlines it). A panel is 32 keys wide,
  // and 16 x 16 blocks would take as many shuffles per float.
  static constexpr int transpose_size = avx2::Vec::transpose_size;
  static void transpose(const float* const* rows, std::int64_t d, float* out,
                        std::int64_t out_stride) {
    avx2::Vec::transpose(rows, d, out, out_stride);
  }

  // Lane j holds `base + j` where begin <= base + j < end keeps its value, else `fill`.
  static V keep_range(V v, int base, int begin, int end, float fill) {
    const __m512i j =
        _mm512_add_epi32(_mm512_set1_epi32(base),
                         _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
    const __mmask16 inside = _mm512_cmpge_epi32_mask(j, _mm512_set1_epi32(begin)) &
                             _mm512_cmplt_epi32_mask(j, _mm512_set1_epi32(end));
    return _mm512_mask_blend_ps(inside, _mm512_set1_ps(fill), v);
  }

  // 2^x for every lane: x = n + f with n an integer and |f| <= 1/2; 2^f from a degree-6
  // polynomial (Cephes' exp2f coefficients), times 2^n. Results below 2^-126 flush to 0
  // (so -inf gives exactly 0, and no denormal reaches the products that follow: they
  // would cost microcode assists), x >= 128 gives +inf, and a NaN stays NaN (it is passed
  // to min/max second). Max error 1 ulp on [-126, 0], measured by
  // tests/test_simd_math.cpp (0.952 ulp at x = -0.496 in a sweep of every float in
  // [-1, 0], which covers every f of [-126, 0]).
  static V exp2(V x) {
    const V clamped =
        _mm512_min_ps(_mm512_set1_ps(128.0f), _mm512_max_ps(_mm512_set1_ps(-127.0f), x));
    const V n = _mm512_roundscale_ps(clamped, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const V f = _mm512_sub_ps(clamped, n);
    V p = _mm512_set1_ps(1.535336188319500e-4f);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.339887440266574e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.618437357674640e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.550332471162809e-2f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.402264791363012e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.931472028550421e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
    // scalef: p * 2^n exactly, overflowing to +inf for x >= 128.
    const V r = _mm512_scalef_ps(p, n);
    const __mmask16 tiny = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-126.0f), _CMP_LT_OQ);
    return _mm512_mask_blend_ps(tiny, r, _mm512_setzero_ps());
  }
};

}  // namespace detail::avx512
ATTEND_NAMESPACE_END
ATTEND_END_TARGET
