// The AVX2 path's vector of floats: 8 lanes in a ymm register, 16 registers. The same
// operations as avx512.hpp's, so that every kernel is written once.
#pragma once

#include "attend/detail/config.hpp"

#include <cstdint>
#include <limits>

#include "attend/detail/simd/target.hpp"

ATTEND_BEGIN_TARGET_AVX2
ATTEND_NAMESPACE_BEGIN
namespace detail::avx2 {

struct Vec {
  using V = __m256;
  static constexpr int lanes = 8;
  static constexpr int registers = 16;
  static constexpr const char* isa = "avx2";

  static V zero() { return _mm256_setzero_ps(); }
  static V set1(float x) { return _mm256_set1_ps(x); }
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  static __m256i iota() { return _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7); }
  // Lanes j with begin <= base + j < end, as an all-ones / all-zeros lane mask.
  static __m256i lanes_in(int base, int begin, int end) {
    const __m256i j = _mm256_add_epi32(_mm256_set1_epi32(base), iota());
    return _mm256_and_si256(_mm256_cmpgt_epi32(j, _mm256_set1_epi32(begin - 1)),
                            _mm256_cmpgt_epi32(_mm256_set1_epi32(end), j));
  }
  // The first n lanes (0 <= n <= lanes); the others read as 0 and are never touched.
  static V load(const float* p, int n) { return _mm256_maskload_ps(p, lanes_in(0, 0, n)); }
  static void store(float* p, V v, int n) { _mm256_maskstore_ps(p, lanes_in(0, 0, n), v); }

  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  static V sub(V a, V b) { return _mm256_sub_ps(a, b); }
  static V mul(V a, V b) { return _mm256_mul_ps(a, b); }
  static V fmadd(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }  // a * b + c
  // max/min return the second operand when either is NaN.
  static V max(V a, V b) { return _mm256_max_ps(a, b); }
  static V min(V a, V b) { return _mm256_min_ps(a, b); }
  // Lanes where a == b take if_equal, the others `otherwise`.
  static V select_equal(V a, V b, V if_equal, V otherwise) {
    return _mm256_blendv_ps(otherwise, if_equal, _mm256_cmp_ps(a, b, _CMP_EQ_OQ));
  }
  static V div(V a, V b) { return _mm256_div_ps(a, b); }
  // out[0, 4) = c * (the sum of the lanes of x[0], ..., x[3]), as one transpose-and-add
  // tree (see avx512.hpp).
  static void sums4(const V* x, float c, float* out) {
    const V ab = _mm256_add_ps(_mm256_unpacklo_ps(x[0], x[1]), _mm256_unpackhi_ps(x[0], x[1]));
    const V cd = _mm256_add_ps(_mm256_unpacklo_ps(x[2], x[3]), _mm256_unpackhi_ps(x[2], x[3]));
    const V abcd = _mm256_add_ps(
        _mm256_castpd_ps(_mm256_unpacklo_pd(_mm256_castps_pd(ab), _mm256_castps_pd(cd))),
        _mm256_castpd_ps(_mm256_unpackhi_pd(_mm256_castps_pd(ab), _mm256_castps_pd(cd))));
    const __m128 sum = _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1));
    _mm_storeu_ps(out, _mm_mul_ps(sum, _mm_set1_ps(c)));
  }
  static float reduce_add(V v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
  }
  static float reduce_max(V v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_max_ss(s, _mm_movehdup_ps(s)));
  }

  // out[i * out_stride + c] = rows[c][d + i] for i, c < 8: an 8 x 8 block transposed in
  // registers (two rounds of unpacks and shuffles within 128-bit halves, then a swap of
  // halves), for packing keys into panels (flash-inl.hpp). 24 shuffles and 8 stores per 64
  // floats, where moving each float alone took a store apiece.
  static constexpr int transpose_size = 8;
  static void transpose(const float* const* rows, std::int64_t d, float* out,
                        std::int64_t out_stride) {
    __m256 r[8], t[8];
#pragma GCC unroll 8
    for (int c = 0; c < 8; ++c) r[c] = _mm256_loadu_ps(rows[c] + d);
#pragma GCC unroll 8
    for (int c = 0; c < 8; c += 2) {
      t[c] = _mm256_unpacklo_ps(r[c], r[c + 1]);      // rows c, c+1: dims 0 1 | 4 5
      t[c + 1] = _mm256_unpackhi_ps(r[c], r[c + 1]);  // dims 2 3 | 6 7
    }
#pragma GCC unroll 8
    for (int c = 0; c < 8; c += 4) {  // rows c..c+3 of dims i | i+4
      r[c] = _mm256_shuffle_ps(t[c], t[c + 2], 0x44);
      r[c + 1] = _mm256_shuffle_ps(t[c], t[c + 2], 0xEE);
      r[c + 2] = _mm256_shuffle_ps(t[c + 1], t[c + 3], 0x44);
      r[c + 3] = _mm256_shuffle_ps(t[c + 1], t[c + 3], 0xEE);
    }
#pragma GCC unroll 8
    for (int i = 0; i < 4; ++i) {
      _mm256_storeu_ps(out + i * out_stride, _mm256_permute2f128_ps(r[i], r[i + 4], 0x20));
      _mm256_storeu_ps(out + (i + 4) * out_stride, _mm256_permute2f128_ps(r[i], r[i + 4], 0x31));
    }
  }

  // Lane j keeps its value where begin <= base + j < end, else becomes `fill`.
  static V keep_range(V v, int base, int begin, int end, float fill) {
    return _mm256_blendv_ps(_mm256_set1_ps(fill), v,
                            _mm256_castsi256_ps(lanes_in(base, begin, end)));
  }

  // 2^x, as avx512.hpp's: x = n + f with n an integer and |f| <= 1/2, 2^f from the same
  // polynomial, times 2^n built in the exponent bits. n is rounded by adding 1.5 * 2^23:
  // the sum's last mantissa bits are then n itself (ties to even, as x86's round), so n + 127
  // shifted into the exponent field is 2^n, with no round or convert instruction. For n in
  // [-126, 127] that is a normal float and p * 2^n is exact; n = 128 gives the exponent
  // field of +inf, so x >= 127.5 gives +inf (2^x is within a factor 1.42 of overflowing
  // there; the softmax's arguments are <= 0). Below 2^-126 flushes to 0 (so -inf gives
  // exactly 0, and no denormal reaches the products that follow), a NaN stays NaN. Max
  // error 1 ulp on [-126, 0], measured by tests/test_simd_math.cpp (0.952 ulp, as
  // avx512.hpp's). 16 instructions, where rounding with vroundps and scaling in two halves
  // took 22: a fifth less time in the fused attention's softmax.
  static V exp2(V x) {
    const V clamped =
        _mm256_min_ps(_mm256_set1_ps(128.0f), _mm256_max_ps(_mm256_set1_ps(-126.0f), x));
    const V shifter = _mm256_set1_ps(12582912.0f);  // 1.5 * 2^23
    const V t = _mm256_add_ps(clamped, shifter);
    const V f = _mm256_sub_ps(clamped, _mm256_sub_ps(t, shifter));
    V p = _mm256_set1_ps(1.535336188319500e-4f);
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.339887440266574e-3f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(9.618437357674640e-3f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(5.550332471162809e-2f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(2.402264791363012e-1f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(6.931472028550421e-1f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.0f));
    const __m256i biased = _mm256_add_epi32(_mm256_castps_si256(t), _mm256_set1_epi32(127));
    const V r = _mm256_mul_ps(p, _mm256_castsi256_ps(_mm256_slli_epi32(biased, 23)));
    return _mm256_andnot_ps(_mm256_cmp_ps(x, _mm256_set1_ps(-126.0f), _CMP_LT_OQ), r);
  }
};

}  // namespace detail::avx2
ATTEND_NAMESPACE_END
ATTEND_END_TARGET
