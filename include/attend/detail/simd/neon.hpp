// The NEON path's vector of floats: 4 lanes in a q register, 32 registers (AArch64's
// Advanced SIMD). The same operations, with the same meaning, as avx512.hpp's and
// avx2.hpp's, so that every kernel is written once. Advanced SIMD is part of the AArch64
// baseline: these functions need no target region, and every aarch64 CPU runs them.
//
// Where NEON's instructions differ from x86's, the x86 behaviour is the contract (the
// kernels were written against it): max/min are a compare and a select rather than
// fmax/fmin, and the masked loads and stores, which NEON lacks, move whole lanes that
// never reach past the n-th.
#pragma once

#include "attend/detail/config.hpp"

#if !defined(__aarch64__)
#error "attend/detail/simd/neon.hpp is for aarch64 targets"
#endif

#include <arm_neon.h>

#include <cstdint>

ATTEND_NAMESPACE_BEGIN
namespace detail::neon {

struct Vec {
  using V = float32x4_t;
  static constexpr int lanes = 4;
  static constexpr int registers = 32;
  static constexpr const char* isa = "neon";

  static V zero() { return vdupq_n_f32(0.0f); }
  static V set1(float x) { return vdupq_n_f32(x); }
  static V load(const float* p) { return vld1q_f32(p); }
  static void store(float* p, V v) { vst1q_f32(p, v); }
  // The first n lanes (0 <= n <= lanes); the others read as 0 and are never touched: no
  // byte at or past p + n is read or written (it may lie past the end of a buffer).
  static V load(const float* p, int n) {
    const float32x2_t z = vdup_n_f32(0.0f);
    switch (n) {
      case 0:
        return zero();
      case 1:
        return vcombine_f32(vld1_lane_f32(p, z, 0), z);
      case 2:
        return vcombine_f32(vld1_f32(p), z);
      case 3:
        return vcombine_f32(vld1_f32(p), vld1_lane_f32(p + 2, z, 0));
      default:
        return vld1q_f32(p);
    }
  }
  static void store(float* p, V v, int n) {
    switch (n) {
      case 0:
        return;
      case 1:
        return vst1q_lane_f32(p, v, 0);
      case 2:
        return vst1_f32(p, vget_low_f32(v));
      case 3:
        vst1_f32(p, vget_low_f32(v));
        return vst1q_lane_f32(p + 2, v, 2);
      default:
        return vst1q_f32(p, v);
    }
  }

  static V add(V a, V b) { return vaddq_f32(a, b); }
  static V sub(V a, V b) { return vsubq_f32(a, b); }
  static V mul(V a, V b) { return vmulq_f32(a, b); }
  static V fmadd(V a, V b, V c) { return vfmaq_f32(c, a, b); }  // a * b + c, one rounding
  // max/min return the second operand when either is NaN (and for a pair of zeros), as
  // x86's maxps/minps do: pass the value that must carry a NaN through second. NEON's
  // fmax would return the NaN whichever side it is on, fmaxnm the number.
  static V max(V a, V b) { return vbslq_f32(vcgtq_f32(a, b), a, b); }
  static V min(V a, V b) { return vbslq_f32(vcltq_f32(a, b), a, b); }
  // Lanes where a == b take if_equal, the others `otherwise` (a NaN equals nothing).
  static V select_equal(V a, V b, V if_equal, V otherwise) {
    return vbslq_f32(vceqq_f32(a, b), if_equal, otherwise);
  }
  static V div(V a, V b) { return vdivq_f32(a, b); }
  static float reduce_add(V v) { return vaddvq_f32(v); }
  // out[0, 4) = c * (the sum of the lanes of x[0], ..., x[3]): pairwise adds.
  static void sums4(const V* x, float c, float* out) {
    const V sum = vpaddq_f32(vpaddq_f32(x[0], x[1]), vpaddq_f32(x[2], x[3]));
    vst1q_f32(out, vmulq_n_f32(sum, c));
  }
  // NaN lanes are skipped unless every lane is NaN (fmaxnmv). On x86 a NaN lane wins or
  // loses depending on where it sits; the kernels accept either (see online_softmax_row).
  static float reduce_max(V v) { return vmaxnmvq_f32(v); }

  // out[i * out_stride + c] = rows[c][d + i] for i, c < 4: a 4 x 4 block transposed with
  // two rounds of trn1/trn2 (on pairs of floats, then on pairs of pairs), for packing keys
  // into panels (flash-inl.hpp).
  static constexpr int transpose_size = 4;
  static void transpose(const float* const* rows, std::int64_t d, float* out,
                        std::int64_t out_stride) {
    const V r0 = vld1q_f32(rows[0] + d), r1 = vld1q_f32(rows[1] + d);
    const V r2 = vld1q_f32(rows[2] + d), r3 = vld1q_f32(rows[3] + d);
    const float64x2_t t0 = vreinterpretq_f64_f32(vtrn1q_f32(r0, r1));  // dims 0, 2 of rows 0-1
    const float64x2_t t1 = vreinterpretq_f64_f32(vtrn2q_f32(r0, r1));  // dims 1, 3
    const float64x2_t t2 = vreinterpretq_f64_f32(vtrn1q_f32(r2, r3));
    const float64x2_t t3 = vreinterpretq_f64_f32(vtrn2q_f32(r2, r3));
    vst1q_f32(out, vreinterpretq_f32_f64(vtrn1q_f64(t0, t2)));
    vst1q_f32(out + out_stride, vreinterpretq_f32_f64(vtrn1q_f64(t1, t3)));
    vst1q_f32(out + 2 * out_stride, vreinterpretq_f32_f64(vtrn2q_f64(t0, t2)));
    vst1q_f32(out + 3 * out_stride, vreinterpretq_f32_f64(vtrn2q_f64(t1, t3)));
  }

  // Lane j keeps its value where begin <= base + j < end, else becomes `fill`.
  static V keep_range(V v, int base, int begin, int end, float fill) {
    static constexpr std::int32_t iota[lanes] = {0, 1, 2, 3};
    const int32x4_t j = vaddq_s32(vdupq_n_s32(base), vld1q_s32(iota));
    const uint32x4_t inside =
        vandq_u32(vcgeq_s32(j, vdupq_n_s32(begin)), vcltq_s32(j, vdupq_n_s32(end)));
    return vbslq_f32(inside, v, vdupq_n_f32(fill));
  }

  // 2^e for integer lanes e in [-126, 127]: e + 127 in the exponent field.
  static V pow2(int32x4_t e) {
    return vreinterpretq_f32_s32(vshlq_n_s32(vaddq_s32(e, vdupq_n_s32(127)), 23));
  }

  // 2^x, with avx2.hpp's results below 127.5: x = n + f with n an integer and |f| <= 1/2,
  // 2^f from the same degree-6 polynomial (Cephes' exp2f coefficients), times 2^n built in
  // the exponent bits in two halves (2^(n/2) and 2^(n - n/2), each a normal float for
  // |n| <= 128, so both products are exact, and results up to 128 stay finite). Below 2^-126
  // flushes to 0 (so -inf gives exactly 0), x >= 128 gives +inf, a NaN stays NaN (max/min pass it
  // through, and every step after keeps it). Max error 1 ulp on [-126, 0], measured by
  // tests/test_simd_math.cpp.
  static V exp2(V x) {
    const V clamped = min(set1(128.0f), max(set1(-126.0f), x));
    const V n = vrndnq_f32(clamped);  // to nearest, ties to even, as x86's round
    const V f = vsubq_f32(clamped, n);
    V p = set1(1.535336188319500e-4f);
    p = vfmaq_f32(set1(1.339887440266574e-3f), p, f);
    p = vfmaq_f32(set1(9.618437357674640e-3f), p, f);
    p = vfmaq_f32(set1(5.550332471162809e-2f), p, f);
    p = vfmaq_f32(set1(2.402264791363012e-1f), p, f);
    p = vfmaq_f32(set1(6.931472028550421e-1f), p, f);
    p = vfmaq_f32(set1(1.0f), p, f);
    const int32x4_t ni = vcvtq_s32_f32(n), half = vshrq_n_s32(ni, 1);
    const V r = vmulq_f32(vmulq_f32(p, pow2(half)), pow2(vsubq_s32(ni, half)));
    return vbslq_f32(vcltq_f32(x, set1(-126.0f)), zero(), r);
  }
};

}  // namespace detail::neon
ATTEND_NAMESPACE_END
