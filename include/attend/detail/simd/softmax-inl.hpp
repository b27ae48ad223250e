// SIMD masked softmax of one row, compiled once per path (see kernels_avx512.hpp). No
// includes and no lambdas here: this file is included inside each path's target region
// and namespace, which provides `Vec`.
//
// The same contract and results, to rounding, as portable/softmax.hpp's softmax_row. The
// visible keys [begin, end) of the row take three passes, all but the first reading L1
// (a row of 1024 keys is 4 KiB):
//   1. m = the largest logit, the sink's included; NaN logits are skipped here and spoil
//      the sum of pass 2 instead, which makes their row NaN as the reference does;
//   2. e_j = exp(l_j - m) = exp2(l_j log2e - c) with c = fl(m log2e), one fmadd per
//      vector, written to p; z = sum of the e_j and the sink's weight;
//   3. p_j = e_j * (1 / z).
// Shifting by c instead of m log2e multiplies every weight by the same 2^delta, delta =
// m log2e - c (|delta| <= ulp(c) / 2), which cancels in p and is taken out of the lse.
// Rows whose m is not finite (no visible key, every logit -inf, +inf logits sharing the
// mass) need the reference's special cases, and rows with |m| >= 2^20 have a delta no
// longer small (from |m| near 2^31 on, 2^delta alone overflows or underflows): both are
// rare and run the portable row.
//
// Without a per-element rule (ScoreRule::plain) the passes read the scores themselves;
// otherwise rule.logit() fills scratch[begin, end) first, scalar, and the passes read it.

// x[0, n) (n <= lanes) in the first n lanes, `fill` in the others.
inline Vec::V softmax_load_first(const float* x, int n, float fill) {
  return Vec::keep_range(Vec::load(x, n), 0, 0, n, fill);
}

// The largest of l[begin, end), NaNs skipped; -inf for an empty range.
inline float softmax_max(const float* l, index_t begin, index_t end) {
  constexpr float inf = std::numeric_limits<float>::infinity();
  // Two chains of max (4-cycle latency each) take a row of 1024 keys in about 128 cycles
  // (zmm), well under the time it takes to stream in from memory; four measured no faster
  // there. max(x, acc) returns acc when x is NaN.
  Vec::V acc0 = Vec::set1(-inf), acc1 = acc0;
  index_t j = begin;
  for (; j + 2 * Vec::lanes <= end; j += 2 * Vec::lanes) {
    acc0 = Vec::max(Vec::load(l + j), acc0);
    acc1 = Vec::max(Vec::load(l + j + Vec::lanes), acc1);
  }
  for (; j < end; j += Vec::lanes) {
    const int left = int(std::min<index_t>(end - j, Vec::lanes));
    acc0 = Vec::max(softmax_load_first(l + j, left, -inf), acc0);
  }
  return Vec::reduce_max(Vec::max(acc0, acc1));
}

// p[j] = exp2(l[j] log2e - c) for j in [begin, end); returns their sum. l may be p.
inline float softmax_exp(const float* l, index_t begin, index_t end, float c, float* p) {
  constexpr float inf = std::numeric_limits<float>::infinity();
  const Vec::V log2e = Vec::set1(1.44269504088896340736f), minus_c = Vec::set1(-c);
  Vec::V sum = Vec::zero();
  index_t j = begin;
  for (; j + Vec::lanes <= end; j += Vec::lanes) {
    const Vec::V e = Vec::exp2(Vec::fmadd(Vec::load(l + j), log2e, minus_c));
    Vec::store(p + j, e);
    sum = Vec::add(sum, e);
  }
  if (j < end) {  // the lanes past the row read -inf, whose weight is exactly 0
    const int left = int(end - j);
    const Vec::V e = Vec::exp2(Vec::fmadd(softmax_load_first(l + j, left, -inf), log2e, minus_c));
    Vec::store(p + j, e, left);
    sum = Vec::add(sum, e);
  }
  return Vec::reduce_add(sum);
}

// p[j] *= r for j in [begin, end).
inline void softmax_scale(float* p, index_t begin, index_t end, float r) {
  const Vec::V rv = Vec::set1(r);
  index_t j = begin;
  for (; j + Vec::lanes <= end; j += Vec::lanes) Vec::store(p + j, Vec::mul(Vec::load(p + j), rv));
  if (j < end) {
    const int left = int(end - j);
    Vec::store(p + j, Vec::mul(Vec::load(p + j, left), rv), left);
  }
}

// Probabilities p[0, n) of query row i from its scaled scores s[0, n), under `rule`; s may
// be p. scratch holds n floats. Returns the row's log-sum-exp, the sink included.
inline float softmax_row(const ScoreRule<float>& rule, index_t i, const float* s, index_t n,
                         float* p, float* scratch) {
  constexpr float log2e = 1.44269504088896340736f, ln2 = 0.693147180559945309417f;
  // |m| < 2^20: |c| < 2^21, so |delta| <= 1/16, and the largest weight 2^delta is near 1.
  constexpr float max_fast_m = 1048576.0f;
  const KeyRange keys = rule.keys(i);
  const index_t begin = std::min(keys.begin, n), end = std::min(keys.end, n);

  const float* l = s;
  if (!rule.plain()) {
    for (index_t j = begin; j < end; ++j) scratch[j] = rule.logit(i, j, s[j]);
    l = scratch;
  }
  float m = softmax_max(l, begin, end);
  const float sink = rule.has_sink() ? rule.sink() : -std::numeric_limits<float>::infinity();
  if (sink > m) m = sink;
  if (!(std::fabs(m) < max_fast_m)) return portable::softmax_row<float>(rule, i, s, n, p, scratch);

  std::fill(p, p + begin, 0.0f);
  std::fill(p + end, p + n, 0.0f);
  const float c = m * log2e;
  const float z = softmax_exp(l, begin, end, c, p) + std::exp2(std::fma(sink, log2e, -c));
  softmax_scale(p, begin, end, 1.0f / z);
  if (std::isnan(z) && !rule.ranges_only())  // a NaN row: keys the mask hides stay 0
    for (index_t j = begin; j < end; ++j)
      if (rule.hidden(i, j)) p[j] = 0.0f;
  const float delta = std::fma(m, log2e, -c);  // exact: the rounding error of c
  return m + (std::log(z) - delta * ln2);
}
