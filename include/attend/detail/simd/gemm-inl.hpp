// SIMD matrix product, compiled once per path (see kernels_avx512.hpp). No includes and no
// lambdas here: this file is included inside each path's target region and namespace,
// which provides `Vec`.
//
//   c [M, N] = alpha * a [M, K] * op(b) + bias [N]   (+ c when accumulating)
//
// with op(b) = b^T for b stored [N, K] (b_transposed) or b for b stored [K, N], as
// detail/portable/gemm.hpp defines it. The method is BLIS's (Goto and van de Geijn,
// "Anatomy of high-performance matrix multiplication", TOMS 2008; Van Zee and van de Geijn,
// "BLIS", TOMS 2015): op(b) is copied ("packed") panel by panel, kNR columns wide, into a
// buffer laid out in the order the micro-kernel reads it, and the micro-kernel keeps a
// kMR x kNR tile of c in registers while it runs down k, broadcasting values of a and
// loading vectors of the panel. a is read in place, never packed, and so is a b stored
// [K, N] that few rows reuse: small products (the per-head products of attention) pay
// for little beyond their arithmetic.
//
// Reproducibility. Every element of c is computed as
//   acc = 0;  for k = 0, 1, ..., K-1: acc = fma(a[i, k], op(b)[k, j], acc);
//   c[i, j] = alpha * acc + bias[j] (+ c[i, j])
// one chain of fused multiply-adds in the natural order, whatever the tiling, the packing,
// the split into tasks or the number of threads (between two passes over k the partial sum
// waits in c, stored and reloaded exactly). So every partition of the work gives the same
// bits, a PackedWeight gives the bits of its unpacked weight, and the SIMD paths agree.

namespace mm {

// ---- Register tile ----------------------------------------------------------------------
//
// The micro-kernel holds kMR rows x kNV vectors of c. Per step of k it loads kNV vectors of
// the panel and broadcasts kMR values of a: kMR * kNV FMAs for kNV + kMR loads.
//   AVX-512 (32 zmm): 6 x 4 vectors = 6 x 64. 24 accumulators + 4 vectors of b + 1
//     broadcast = 29 registers. 24 independent chains: the 2 FMA ports with their 4-cycle
//     latency need 8. 10 loads per 24 FMAs (12 cycles) leave the 2 load ports half idle.
//     Measured as fast as 8 x 48 and 5-10% faster than 12 x 32 and 14 x 32 (6 x 64 reads
//     the most of b per step, but from the panel in L2, which keeps up).
//   AVX2 (16 ymm): 6 x 2 vectors = 6 x 16 (BLIS's Haswell tile). 12 + 2 + 1 = 15
//     registers, 12 chains, 8 loads per 12 FMAs.
//   NEON (32 q registers of 4 lanes): AVX-512's shape, 6 x 4 vectors = 6 x 16, so the
//     tile keys off the register count rather than the width. 24 accumulators + 4 + 1 =
//     29 registers; 24 chains cover the FMA pipes of current cores (Neoverse N1: 2 pipes,
//     V1: 4, 4-cycle latency, so 8 and 16 chains), where AVX2's 6 x 2 tile, 12 chains,
//     would leave V1's pipes a quarter idle. 10 loads (4 vectors, 6 broadcasts, which are
//     ld1r loads) per 24 FMAs. Not timed: no aarch64 machine at hand (tested under qemu).
// Six rows also leave enough general registers to read a in place through six row
// pointers, as fast as from a packed copy (measured), so a is never packed but for a last
// panel of fewer than kMR rows.
constexpr int kMR = 6;
constexpr index_t kMRows = kMR;  // the same, for index arithmetic
constexpr int kNV = Vec::registers == 32 ? 4 : 2;
constexpr index_t kNR = index_t(kNV) * Vec::lanes;

// ---- Cache blocks -----------------------------------------------------------------------
//
// For each task (a block of rows by a block of columns of c) and each pass over k:
//   for each panel of op(b):           pack it (kc x kNR floats, then hot in L2)
//     for each kMR rows of the task:   one micro-kernel call; those rows of a stream in
// kKC, the deepest pass. Between passes the partial sums go to c and come back, and on this
//   CPU (Sapphire Rapids: L1d 48 KiB, L2 2 MiB per core) that traffic costs more than
//   reading the panel from L2 rather than L1. So passes are as deep as a panel that fills
//   half of L2: 4096 x 64 floats, 1 MiB. Measured on AVX-512 (one thread, against OpenBLAS
//   in the same run): K = 8192 in one pass of 2 MiB panels ran at 0.68x, in two passes of
//   4096 at 1.07x, in four of 2048 at 1.05x; 4096^3 at 1.02x with 4096, 1.00x with 2048,
//   0.98x with 1536; passes of 256-512 (panels in L1) cost 5-10% more. AVX2's panels are
//   a quarter as wide; deeper passes measured no faster there. K is cut into equal passes.
// kTaskRows x kTaskCols, the tasks. A task packs each of its panels once per pass, so op(b)
//   is packed once per block of kTaskRows rows; 256 columns make 4 (AVX-512) or 16 (AVX2)
//   panels, small enough to share a product between threads. The sizes are fixed, never
//   derived from the thread count (and, by the rule above, could not change the result).
constexpr index_t kKC = 4096;
constexpr index_t kTaskRows = 1536;
constexpr index_t kTaskCols = 256;
static_assert(kTaskCols % kNR == 0, "tasks start on panel boundaries");
// A b stored [K, N] is read in place, its rows being already vectors of the panel, when
// one tile of kMRows rows is all that reads each panel (packing would only add a copy), or
// when at most kInPlaceRows rows of c reuse each panel and a pass spans at most
// kInPlaceBytes of b (kc rows, b.stride apart), which then stay in L2 from one tile to the
// next (16 x 512 x 512 ran 1.2 times faster in place than packed). A wider span comes from
// memory for every tile, a row per page when rows are 4 KiB apart, and is better packed
// once (16 x 6144 x 2048 ran 1.7 times faster packed).
constexpr index_t kInPlaceRows = 4 * kMRows;
constexpr index_t kInPlaceBytes = index_t(1) << 20;
// Up to kStreamRows rows (a decode step's few) reading b [K, N] in place, with rows of
// kStreamRowBytes or more, would go down a column strip of kNR floats through all of K, a
// new page per row, and read each page again for the next strip. Instead their passes
// are kStreamDepth rows deep and their tasks kStreamTaskCols wide: a pass reads 8 rows of
// b side by side, 4 KiB of each, and the partial sums wait in c (exact, see the top).
// Zen 4 (scratch driver), M x 6144 x 2048, GB/s of W, AVX-512: M = 1, one thread 9.5 ->
// 15.4, two 18 -> 33; M = 4, 9.7 -> 13.5 and 17.6 -> 18.5; AVX2 M = 1 4.8 -> 16.2. 16
// rows a pass ran 10-20% slower than 8, 32 no faster than before; 512-column tasks 11
// GB/s, 2048 as fast as 1024 but too few to share. With 6 rows the sums' round trips
// through c cost more than the pages (18.4 -> 14.2 at two threads). Shorter rows share
// pages, and shallow passes over them traded one case for another (P V of a GQA group,
// 4 x 128 x 2048-4096, attend_bench Merge: from DRAM +22% on AVX2, from L3 -22% on
// AVX-512), so they keep one deep pass.
constexpr index_t kStreamRows = 4;
constexpr index_t kStreamRowBytes = 4096;
constexpr index_t kStreamDepth = 8;
constexpr index_t kStreamTaskCols = 1024;
static_assert(kStreamTaskCols % kNR == 0, "tasks start on panel boundaries");
// A panel that comes from memory (pre-packed, or b read in place) rather than from the
// packing just done is first read by the first tile of rows, which asks for the panel's
// row kStreamSteps steps ahead at every step: a few KiB in flight, which the hardware
// prefetchers alone do not reach (with M = 1 to 16, where reading b is all the time,
// pre-packed weights ran 15% slower than packing on the fly without it, 15% faster with).
// The lines go to L2 (prefetcht1), as decode's rows do (flash-inl.hpp, kPrefetchRows): on
// Zen 4, in a scratch driver, 8 x 4096 x 4096 pre-packed streamed 13.4 GB/s of W that way
// against 12.0 into L1, and one row the same 21 GB/s either way.
constexpr index_t kStreamSteps = 32;

// ---- Micro-kernel -----------------------------------------------------------------------

// What the last pass adds to alpha * acc: bias [N] or nullptr, and c itself if accumulating.
struct Epilogue {
  float alpha;
  const float* bias;
  bool accumulate;
};

// One call of the micro-kernel: c [rows, cols] (+)= a [kMR, kc] . b [kc, NV * lanes].
struct Tile {
  index_t kc;
  const float* a;  // in place: a(r, p) = a[r * lda + p]; packed: a(r, p) = a[p * kMR + r]
  index_t lda;
  const float* b;  // b(p, j) = b[p * ldb + j] for all j < NV * lanes
  index_t ldb;
  float* c;  // the tile's first element; rows <= kMR and cols <= NV * lanes are written
  index_t ldc;
  int rows, cols;
  const float* bias;  // bias of the tile's first column, or nullptr
  bool first;         // acc starts at 0, else at the partial sums c holds
  bool last;          // c receives the epilogue, else the partial sums
};

// Vector v of the tile covers columns [v * lanes, v * lanes + lanes_in(t, v)).
inline int lanes_in(const Tile& t, int v) {
  return std::min(t.cols - v * Vec::lanes, Vec::lanes);
}

// The micro-kernel: a [kMR, kc] (in place or packed) times a panel b [kc, NV * lanes] into
// kMR x NV accumulators, which start from 0 or from c and end in c. kStreamB: b comes from
// memory, so ask for it kStreamSteps ahead.
template <int NV, bool kPackedA, bool kStreamB>
void multiply_tile(const Tile& t, const Epilogue& e) {
  using V = typename Vec::V;
  constexpr int L = Vec::lanes;
  V acc[kMR][NV];
#pragma GCC unroll 16
  for (int r = 0; r < kMR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v)
      acc[r][v] =
          t.first || r >= t.rows ? Vec::zero() : Vec::load(t.c + r * t.ldc + v * L, lanes_in(t, v));

  const float* a = t.a;
  const float* b = t.b;
  for (index_t p = 0; p < t.kc; ++p) {
    V bv[NV];
    if constexpr (kStreamB) {
      if (p + kStreamSteps < t.kc)
        for (int j = 0; j < NV * L; j += 64 / int(sizeof(float)))
          __builtin_prefetch(b + kStreamSteps * t.ldb + j, 0, 2);
    }
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) bv[v] = Vec::load(b + v * L);
#pragma GCC unroll 16
    for (int r = 0; r < kMR; ++r) {
      const V ar = Vec::set1(kPackedA ? a[r] : a[r * t.lda]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] = Vec::fmadd(ar, bv[v], acc[r][v]);
    }
    a += kPackedA ? kMR : 1;
    b += t.ldb;
  }

  const V alpha = Vec::set1(e.alpha);
#pragma GCC unroll 16
  for (int r = 0; r < kMR; ++r) {
    if (r >= t.rows) break;
    float* cr = t.c + r * t.ldc;
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      const int n = lanes_in(t, v);
      V x = acc[r][v];
      if (t.last) {  // the reference's order: alpha * sum, + bias, + c
        x = Vec::mul(alpha, x);
        if (t.bias) x = Vec::add(x, Vec::load(t.bias + v * L, n));
        if (e.accumulate) x = Vec::add(x, Vec::load(cr + v * L, n));
      }
      if (n == L)
        Vec::store(cr + v * L, x);
      else
        Vec::store(cr + v * L, x, n);
    }
  }
}

// The micro-kernel for a panel of nv vectors (1 <= nv <= kNV).
template <bool kPackedA, int NV = kNV>
void run_tile(int nv, bool stream_b, const Tile& t, const Epilogue& e) {
  if constexpr (NV > 1)
    if (nv < NV) return run_tile<kPackedA, NV - 1>(nv, stream_b, t, e);
  if (stream_b)
    multiply_tile<NV, kPackedA, true>(t, e);
  else
    multiply_tile<NV, kPackedA, false>(t, e);
}

// ---- Packing ----------------------------------------------------------------------------

// The last rows of a, fewer than kMR, from src (row stride ld), k in [0, kc), as one packed
// panel: dst[p * kMR + r] = src[r * ld + p], and 0 for rows <= r < kMR.
inline void pack_a_panel(const float* src, index_t ld, index_t rows, index_t kc, float* dst) {
  for (index_t p = 0; p < kc; ++p)
    for (index_t r = 0; r < kMRows; ++r) dst[p * kMR + r] = r < rows ? src[r * ld + p] : 0.0f;
}

// dst[p * ldd + r] = src[r * ld + p] for r, p < 8: the one operation here that no Vec
// provides, written per architecture.
#if ATTEND_AARCH64
// Four 4 x 4 transpositions in q registers: trn1/trn2 pair the lanes of rows 0-1 and 2-3,
// zip1/zip2 of their 64-bit halves then give whole columns.
inline void transpose_8x8(const float* src, index_t ld, float* dst, index_t ldd) {
  for (int r0 = 0; r0 < 8; r0 += 4)
    for (int p0 = 0; p0 < 8; p0 += 4) {
      const float* s = src + r0 * ld + p0;
      const float32x4_t x0 = vld1q_f32(s), x1 = vld1q_f32(s + ld);
      const float32x4_t x2 = vld1q_f32(s + 2 * ld), x3 = vld1q_f32(s + 3 * ld);
      // With rc for src[(r0 + r) * ld + p0 + c]: x0 = 00 01 02 03, ..., t0 = 00 10 02 12,
      // t1 = 01 11 03 13, t2 = 20 30 22 32, t3 = 21 31 23 33; column c = halves of t.
      const float64x2_t t0 = vreinterpretq_f64_f32(vtrn1q_f32(x0, x1));
      const float64x2_t t1 = vreinterpretq_f64_f32(vtrn2q_f32(x0, x1));
      const float64x2_t t2 = vreinterpretq_f64_f32(vtrn1q_f32(x2, x3));
      const float64x2_t t3 = vreinterpretq_f64_f32(vtrn2q_f32(x2, x3));
      float* d = dst + p0 * ldd + r0;
      vst1q_f32(d, vreinterpretq_f32_f64(vzip1q_f64(t0, t2)));
      vst1q_f32(d + ldd, vreinterpretq_f32_f64(vzip1q_f64(t1, t3)));
      vst1q_f32(d + 2 * ldd, vreinterpretq_f32_f64(vzip2q_f64(t0, t2)));
      vst1q_f32(d + 3 * ldd, vreinterpretq_f32_f64(vzip2q_f64(t1, t3)));
    }
}
#else
// In ymm registers, with AVX instructions, which both x86 paths have. Rows r and r + 4
// share a register (a 128-bit half each), so two rounds of in-lane shuffles finish the job.
inline void transpose_8x8(const float* src, index_t ld, float* dst, index_t ldd) {
  for (int half = 0; half < 8; half += 4) {  // columns [half, half + 4) of src
    __m256 t[4];
    for (int r = 0; r < 4; ++r)
      t[r] = _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_loadu_ps(src + r * ld + half)),
                                  _mm_loadu_ps(src + (r + 4) * ld + half), 1);
    const __m256 u0 = _mm256_unpacklo_ps(t[0], t[1]), u1 = _mm256_unpackhi_ps(t[0], t[1]);
    const __m256 u2 = _mm256_unpacklo_ps(t[2], t[3]), u3 = _mm256_unpackhi_ps(t[2], t[3]);
    _mm256_storeu_ps(dst + (half + 0) * ldd, _mm256_shuffle_ps(u0, u2, 0x44));
    _mm256_storeu_ps(dst + (half + 1) * ldd, _mm256_shuffle_ps(u0, u2, 0xee));
    _mm256_storeu_ps(dst + (half + 2) * ldd, _mm256_shuffle_ps(u1, u3, 0x44));
    _mm256_storeu_ps(dst + (half + 3) * ldd, _mm256_shuffle_ps(u1, u3, 0xee));
  }
}
#endif

// The columns of op(b) in the panel that starts at column j, and the floats per row of its
// buffer: kNR, or at the end of b fewer columns, rounded up to whole vectors and padded
// with zeros.
inline index_t panel_cols(index_t n, index_t j) {
  return std::min(kNR, n - j);
}
inline index_t panel_width(index_t cols) {
  return (cols + Vec::lanes - 1) / Vec::lanes * Vec::lanes;
}

// One panel from b stored [N, K]: dst[p * width + j] = b[j, p] for the panel's `cols` rows
// of b and k in [0, kc); width = panel_width(cols). The panel is written 32 steps of k at a
// time, 8 KiB that stay in L1 while every group of 8 rows of b adds its columns: column
// group by column group, each line of the panel would come back from L2 8 times; 8 steps
// at a time, the 64 rows read at once, kc floats apart, could share one set of L1.
//
// Each chunk asks for the rows' chunk kPackAhead steps on, when rows are a page or more
// apart (kStreamRowBytes; closer rows form one stream that the prefetchers follow, and
// attention's per-head products find them in cache). The 64 rows are then 64 streams,
// more than the hardware prefetchers follow, so without it every chunk waited on memory:
// with few rows of a, packing is most of the time (Zen 4, scratch driver, AVX-512, one
// thread, M x 6144 x 2048 with W from DRAM: packing took 49% of M = 32). Measured there,
// GFLOP/s: M = 24 40 -> 62, M = 32 43 -> 64, M = 64 64 -> 81 (a PackedWeight: 90, 87,
// 83-98); 32 to 128 steps ahead ran alike, 256 ~10% slower; asking for 4 or 8 chunks at a
// time instead of one, 15-30% slower.
constexpr index_t kPackAhead = 64;
inline void pack_b_transposed(const float* src, index_t ld, index_t cols, index_t kc, float* dst) {
  constexpr index_t chunk = 32;
  const index_t width = panel_width(cols), cols8 = cols / 8 * 8, kc8 = kc / 8 * 8;
  const bool streams = ld * index_t(sizeof(float)) >= kStreamRowBytes;
  for (index_t p0 = 0; p0 < kc8; p0 += chunk) {
    if (streams && p0 + kPackAhead < kc)
      for (index_t j = 0; j < cols; ++j)
        prefetch_lines(src + j * ld + p0 + kPackAhead,
                       std::min(chunk, kc - p0 - kPackAhead) * index_t(sizeof(float)));
    for (index_t j = 0; j < cols8; j += 8)
      for (index_t p = p0; p < std::min(p0 + chunk, kc8); p += 8)
        transpose_8x8(src + j * ld + p, ld, dst + p * width + j, width);
  }
  for (index_t p = 0; p < kc; ++p) {  // the edges: the last kc % 8 steps, cols % 8 columns
    for (index_t j = p < kc8 ? cols8 : 0; j < cols; ++j) dst[p * width + j] = src[j * ld + p];
    for (index_t j = cols; j < width; ++j) dst[p * width + j] = 0.0f;
  }
}

// One panel from b stored [K, N]: dst[p * width + j] = b[p, j] for k in [0, kc). Rows of b
// a page or more apart (a weight [K, N] of 1024 columns or more) each start a new page,
// where the hardware prefetchers stop, so each row asks for the one kPackRowsAhead on
// (Zen 4, AVX-512, one thread, M x 6144 x 2048 from DRAM, GFLOP/s: M = 8 22 -> 27, M = 32
// 55 -> 60, M = 64 71 -> 81; 8 and 32 rows ahead alike). Closer rows (P V's value rows)
// ask for nothing: asking cost `merge_values` on E1 (rows of 256 B, in cache) 5-12% with
// AVX2.
constexpr index_t kPackRowsAhead = 16;
inline void pack_b_rows(const float* src, index_t ld, index_t cols, index_t kc, float* dst) {
  constexpr int L = Vec::lanes;
  const index_t width = panel_width(cols);
  const bool streams = ld * index_t(sizeof(float)) >= kStreamRowBytes;
  for (index_t p = 0; p < kc; ++p) {
    if (streams && p + kPackRowsAhead < kc)
      prefetch_lines(src + (p + kPackRowsAhead) * ld, cols * index_t(sizeof(float)));
    for (index_t j = 0; j < width; j += L) {
      const index_t n = std::min<index_t>(cols - j, L);
      Vec::store(dst + p * width + j,
                 n == L ? Vec::load(src + p * ld + j) : Vec::load(src + p * ld + j, int(n)));
    }
  }
}

// The panel of op(b) [k0, k0 + kc) x [j, j + cols), cols <= kNR.
inline void pack_b_panel(MatrixView<const float> b, bool transposed, index_t k0, index_t kc,
                         index_t j, index_t cols, float* dst) {
  if (transposed)
    pack_b_transposed(b.row(j) + k0, b.stride, cols, kc, dst);
  else
    pack_b_rows(b.row(k0) + j, b.stride, cols, kc, dst);
}

// Per-thread packing buffers, grown as needed and kept for the next call.
struct Scratch {
  std::vector<float> a, b;
};
inline Scratch& scratch() {
  thread_local Scratch s;
  return s;
}
// n floats of v, 64-byte aligned so that no full-vector load splits a cache line.
inline float* grow(std::vector<float>& v, index_t n) {
  constexpr index_t align = 64 / sizeof(float);
  if (v.size() < std::size_t(n + align)) v.resize(std::size_t(n + align));
  const auto address = reinterpret_cast<std::uintptr_t>(v.data());
  return v.data() + (align - index_t(address / sizeof(float) % align)) % align;
}

// ---- The loop nest ----------------------------------------------------------------------

struct Problem {
  MatrixView<const float> a;  // [M, K]
  MatrixView<const float> b;  // [N, K] if b_transposed, else [K, N]
  bool b_transposed;
  // Or op(b) pre-packed (a PackedWeight; b then unused): the panel of columns [j, j + kNR)
  // holds all K steps, at packed_b + j * K (see pack_weight).
  bool prepacked;
  const float* packed_b;
  Epilogue epilogue;
  MatrixView<float> c;  // [M, N]
  index_t depth;        // of one pass over k (see pass_depth)

  // b [K, N] read in place in shallow passes (see kStreamRows), which hold partial sums in
  // c and so cannot accumulate into it.
  bool streams_b_rows() const {
    return !prepacked && !b_transposed && c.rows <= kStreamRows && !epilogue.accumulate &&
           b.stride * index_t(sizeof(float)) >= kStreamRowBytes;
  }
};

// ---- A few rows against b stored [N, K] ------------------------------------------------
//
// A decode step's projections multiply a few rows (M = the batch) by a weight in nn.Linear
// layout, b [N, K], which they read once from memory and use for only 2 M FLOPs per float:
// reading b is all the time. Packed into panels (above), b would cross the caches twice,
// kNR rows of it (64 on AVX-512) read side by side, and the tiles would run kMR rows of
// FMAs for the M real ones. Instead each block of 2 vectors' worth of rows of b (the
// columns of two vectors of c) is transposed kDirectSteps steps at a time into a buffer
// that stays in L1 and multiplied at once, by exactly the rows of c there are, whose sums
// stay in registers over all of K: the same FMA chain per element as the tiles, so the same
// bits.
//
// kDirectRows rows of c share one pass over b's block (their sums, two vectors each, fit
// the registers); up to kDirectMaxRows take this path, a second group reading the block
// from L2 again. Measured on Zen 4 (scratch driver), one thread, W [6144, 2048] (50 MB,
// from DRAM), GB/s of W, packed on the fly -> here: AVX-512 M = 1 3.5 -> 17, M = 8 4.2 ->
// 11.7, M = 16 3.8 -> 6.1, M = 32 2.9 -> 3.1; AVX2 M = 1 6.6 -> 16, M = 4 8.5 -> 14.7, M =
// 8 6.9 -> 7.7, but M = 12 7.0 -> 5.3: past two groups, a panel packed once serves enough
// tiles. Each row of b is asked for kDirectAhead floats ahead (1 KiB; 128 to 256 measured
// best, 512 and more up to 25% slower); chunks of 16 steps ran 35% slower than 32, 64 no
// faster.
constexpr int kDirectRows = Vec::registers == 32 ? 8 : 4;
constexpr index_t kDirectMaxRows = index_t(2) * kDirectRows;
constexpr index_t kDirectSteps = 32;
constexpr index_t kDirectAhead = 256;
static_assert(kTaskCols % (2 * Vec::lanes) == 0, "tasks hold whole blocks of two vectors");

// panel[p * W + r] = rows[r][k0 + p] for p < steps, r < W, asking for the rows' first
// `cols` kDirectAhead floats ahead.
template <int W>
void transpose_chunk(const float* const* rows, index_t cols, index_t k, index_t k0, float* panel) {
  constexpr int T = Vec::transpose_size;
  const index_t steps = std::min(kDirectSteps, k - k0), whole = steps / T * T;
  const index_t ahead = k0 + kDirectAhead;
  if (kDirectAhead > 0 && ahead < k)
    for (index_t r = 0; r < cols; ++r)
      prefetch_lines(rows[r] + ahead, std::min(kDirectSteps, k - ahead) * index_t(sizeof(float)));
  for (int r0 = 0; r0 < W; r0 += T)
    for (index_t d = 0; d < whole; d += T) Vec::transpose(rows + r0, k0 + d, panel + d * W + r0, W);
  for (index_t p = whole; p < steps; ++p)
    for (int r = 0; r < W; ++r) panel[p * W + r] = rows[r][k0 + p];
}

// c rows [i, i + MR) x columns [j, j + NV * lanes) (fewer at the end of c). NV = 2 vectors
// give one row two chains of FMAs, which one row's latency-bound chain needs. Two chunk
// buffers: a chunk is transposed one chunk ahead of its FMAs, so that they do not load a
// vector right after its halves were stored (AVX-512's transposes store ymm halves of each
// zmm row: a load spanning two recent stores waits for both to reach L1).
template <int MR, int NV>
void multiply_direct(const Problem& pr, index_t i, index_t j) {
  using V = typename Vec::V;
  constexpr int L = Vec::lanes, W = NV * L;
  const index_t k = pr.a.cols, cols = std::min<index_t>(W, pr.c.cols - j);
  // Rows past the end of b repeat its last: their columns of c are never stored.
  const float* rows[W];
  for (index_t r = 0; r < W; ++r) rows[r] = pr.b.row(j + std::min(r, cols - 1));
  alignas(64) float panels[2][kDirectSteps * W];
  V acc[MR][NV];
#pragma GCC unroll 8
  for (int m = 0; m < MR; ++m)
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) acc[m][v] = Vec::zero();
  transpose_chunk<W>(&rows[0], cols, k, 0, &panels[0][0]);
  for (index_t k0 = 0, n = 0; k0 < k; k0 += kDirectSteps, n ^= 1) {
    if (k0 + kDirectSteps < k)
      transpose_chunk<W>(&rows[0], cols, k, k0 + kDirectSteps, &panels[n ^ 1][0]);
    const float* panel = &panels[n][0];
    const float* a = pr.a.row(i) + k0;
    const index_t steps = std::min(kDirectSteps, k - k0);
    for (index_t p = 0; p < steps; ++p) {
      V bv[NV];
#pragma GCC unroll 2
      for (int v = 0; v < NV; ++v) bv[v] = Vec::load(panel + p * W + v * L);
#pragma GCC unroll 8
      for (int m = 0; m < MR; ++m) {
        const V am = Vec::set1(a[m * pr.a.stride + p]);
#pragma GCC unroll 2
        for (int v = 0; v < NV; ++v) acc[m][v] = Vec::fmadd(am, bv[v], acc[m][v]);
      }
    }
  }
  const Epilogue& e = pr.epilogue;
  const V alpha = Vec::set1(e.alpha);
#pragma GCC unroll 8
  for (int m = 0; m < MR; ++m)
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) {  // the tiles' epilogue: alpha * sum, + bias, + c
      const int n = int(std::min<index_t>(L, cols - v * L));
      if (n <= 0) break;
      float* cm = pr.c.row(i + m) + j + v * L;
      V x = Vec::mul(alpha, acc[m][v]);
      if (e.bias) x = Vec::add(x, Vec::load(e.bias + j + v * L, n));
      if (e.accumulate) x = Vec::add(x, Vec::load(cm, n));
      Vec::store(cm, x, n);
    }
}

// multiply_direct for mr rows, 1 <= mr <= kDirectRows, and nv (1 or 2) vectors of columns.
template <int MR = kDirectRows>
void run_direct(int mr, int nv, const Problem& pr, index_t i, index_t j) {
  if constexpr (MR > 1)
    if (mr < MR) return run_direct<MR - 1>(mr, nv, pr, i, j);
  if (nv == 2)
    multiply_direct<MR, 2>(pr, i, j);
  else
    multiply_direct<MR, 1>(pr, i, j);
}

// One task: c [i0, i1) x [j0, j1), j0 a multiple of kNR.
inline void run_task(const Problem& pr, index_t i0, index_t i1, index_t j0, index_t j1) {
  const index_t k = pr.a.cols, n = pr.c.cols, rows = i1 - i0;
  if (!pr.prepacked && pr.b_transposed && pr.c.rows <= kDirectMaxRows && k > 0) {
    for (index_t j = j0; j < j1; j += 2 * Vec::lanes) {
      const int nv = j1 - j > Vec::lanes ? 2 : 1;
      for (index_t i = i0; i < i1; i += kDirectRows)
        run_direct(int(std::min<index_t>(kDirectRows, i1 - i)), nv, pr, i, j);
    }
    return;
  }
  const index_t full_rows = rows / kMRows * kMRows;
  const bool in_place_b =
      !pr.prepacked && !pr.b_transposed &&
      (rows <= kMRows ||
       (rows <= kInPlaceRows &&
        std::min(k, pr.depth) * pr.b.stride * index_t(sizeof(float)) <= kInPlaceBytes));
  Scratch& s = scratch();

  for (index_t k0 = 0;; k0 += pr.depth) {
    const index_t kc = std::min(pr.depth, k - k0);
    const bool first = k0 == 0, last = k0 + kc >= k;
    // With K = 0 the tiles read neither a nor b (which may then have no data at all).
    float* a_tail = grow(s.a, kMRows * kc);
    if (full_rows < rows && kc > 0)
      pack_a_panel(pr.a.row(i0 + full_rows) + k0, pr.a.stride, rows - full_rows, kc, a_tail);
    float* panel = grow(s.b, kc * kNR);

    for (index_t j = j0; j < j1; j += kNR) {
      const index_t cols = panel_cols(n, j), width = panel_width(cols);
      Tile t{};
      t.kc = kc;
      bool stream_b = pr.prepacked;  // b comes from memory rather than from a fresh panel
      if (kc == 0) {
        t.b = nullptr;
      } else if (pr.prepacked) {
        t.b = pr.packed_b + j * k + k0 * width, t.ldb = width;
      } else if (in_place_b && cols == width) {
        t.b = pr.b.row(k0) + j, t.ldb = pr.b.stride;
        stream_b = true;
      } else {  // packed here, and so a panel read in place never ends inside a vector
        pack_b_panel(pr.b, pr.b_transposed, k0, kc, j, cols, panel);
        t.b = panel, t.ldb = width;
      }
      t.ldc = pr.c.stride;
      t.cols = int(cols);
      t.bias = pr.epilogue.bias ? pr.epilogue.bias + j : nullptr;
      t.first = first;
      t.last = last;
      const int nv = int(width / Vec::lanes);

      for (index_t r = 0; r < rows; r += kMRows) {
        t.c = pr.c.row(i0 + r) + j;
        if (r < full_rows) {
          t.rows = kMR;
          t.a = kc > 0 ? pr.a.row(i0 + r) + k0 : nullptr;
          t.lda = pr.a.stride;
          run_tile<false>(nv, stream_b && r == 0, t, pr.epilogue);
        } else {
          t.rows = int(rows - r);
          t.a = a_tail;
          run_tile<true>(nv, stream_b && r == 0, t, pr.epilogue);
        }
      }
    }
    if (last) break;
  }
}

// c cut into tasks of kTaskRows x kTaskCols (kStreamTaskCols when streaming b's rows).
class Tasks {
 public:
  explicit Tasks(const Problem& pr)
      : pr_(pr),
        row_blocks_((pr.c.rows + kTaskRows - 1) / kTaskRows),
        cols_(pr.streams_b_rows() ? kStreamTaskCols : kTaskCols),
        col_blocks_((pr.c.cols + cols_ - 1) / cols_) {}
  index_t count() const { return row_blocks_ * col_blocks_; }
  void operator()(index_t task) const {
    const index_t i0 = task / col_blocks_ * kTaskRows, j0 = task % col_blocks_ * cols_;
    run_task(pr_, i0, std::min(i0 + kTaskRows, pr_.c.rows), j0, std::min(j0 + cols_, pr_.c.cols));
  }

 private:
  Problem pr_;
  index_t row_blocks_, cols_, col_blocks_;  // cols_: columns per task
};

inline void run(const Problem& pr, const Executor& executor) {
  if (pr.c.rows == 0 || pr.c.cols == 0) return;
  const Tasks tasks(pr);
  if (tasks.count() == 1 || executor.concurrency() == 1)
    for (index_t t = 0; t < tasks.count(); ++t) tasks(t);
  else
    executor.parallel_for(tasks.count(), std::cref(tasks));
}

// The depth of each pass over k: K in equal passes of at most kKC steps, or all of K in
// one pass when accumulating (c then holds the addend until the epilogue, so it cannot
// hold partial sums; the accumulating products, project_output's per-head sums, are
// shallow).
inline index_t pass_depth(index_t k, bool accumulate) {
  if (k == 0) return 1;
  if (accumulate) return k;
  const index_t passes = (k + kKC - 1) / kKC;
  return (k + passes - 1) / passes;
}

}  // namespace mm

// c = alpha * a * op(b) + bias (+ c); see the top of this file.
inline void gemm(MatrixView<const float> a, MatrixView<const float> b, bool b_transposed,
                 float alpha, const float* bias, bool accumulate, MatrixView<float> c,
                 const Executor& executor) {
  mm::Problem pr{};
  pr.a = a, pr.b = b, pr.b_transposed = b_transposed;
  pr.epilogue = {alpha, bias, accumulate};
  pr.c = c, pr.depth = mm::pass_depth(a.cols, accumulate);
  if (pr.streams_b_rows()) pr.depth = std::min(pr.depth, mm::kStreamDepth);
  mm::run(pr, executor);
}

// ---- Pre-packed op(b) (attend/packed.hpp) -----------------------------------------------

// Floats in the packed form of op(b) [K, N].
inline index_t packed_size(index_t k, index_t n) {
  const index_t full = n / mm::kNR;
  return k * (full * mm::kNR + mm::panel_width(n - full * mm::kNR));
}

// Packs op(b) [K, N] (b stored [N, K] if transposed, else [K, N]) into dst, packed_size
// floats: panel after panel of kNR columns, each holding all K steps.
inline void pack_weight(MatrixView<const float> b, bool transposed, index_t k, index_t n,
                        float* dst) {
  if (k == 0) return;  // nothing to pack (and b may have no data)
  for (index_t j = 0; j < n; j += mm::kNR)
    mm::pack_b_panel(b, transposed, 0, k, j, mm::panel_cols(n, j), dst + j * k);
}

// gemm with op(b) [K, N] given by pack_weight; a [M, K], c [M, N].
inline void gemm_packed(MatrixView<const float> a, const float* packed_b, float alpha,
                        const float* bias, bool accumulate, MatrixView<float> c,
                        const Executor& executor) {
  mm::Problem pr{};
  pr.a = a, pr.prepacked = true, pr.packed_b = packed_b;
  pr.epilogue = {alpha, bias, accumulate};
  pr.c = c, pr.depth = mm::pass_depth(a.cols, accumulate);
  mm::run(pr, executor);
}
