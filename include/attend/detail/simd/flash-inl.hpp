// Fused tiled attention: FlashAttention-2's online softmax (Dao 2023), on one CPU core per
// task. Compiled once per path (see kernels_avx512.hpp): no includes and no lambdas here;
// the enclosing namespace provides `Vec`.
//
// For a block of query rows and a tile of keys, S = Q K^T is formed in registers, turned
// into probabilities against the running row maximum m, and merged into the output rows
// O += P V, after rescaling O and the running sum l by exp(m_old - m_new). The [Sq, Sk]
// scores never exist in memory; at the end O / l is the attention output and m + log l
// the log-sum-exp. Logits are kept in base 2 (scale * log2(e) folded in), so each
// probability costs one exp2.
//
// Work: the keys of each (batch, kv head) are packed once, then one task per (batch, kv
// head, chunk of query rows) computes the rows of every query head of the group
// (grouped-query attention), all reading the same packed keys. Tasks never share outputs,
// and their boundaries do not depend on the thread count: results are bit-identical for any
// executor. Calls with fewer query rows per kv head than a register tile (decode) run the
// tasks of decode-inl.hpp instead, which reuse this file's micro-tiles.
//
// Tiles. S[kRows x kPanel] is one register tile: kRows broadcasts of q times kPanelVecs
// vector loads of packed K per step of the head dimension; O += P V uses the same shape
// with value vectors in place of keys. AVX-512: 12 x 2 = 24 zmm accumulators + 2 loads + 1
// broadcast of 32 registers; 24 independent FMAs cover the 4-cycle latency of 2 FMA ports
// three times over. 12 rows rather than 6 x 4 vectors halve the K and V bytes per FMA:
// with the keys in L2 (a long sequence), Q K^T alone ran at 172 GFLOP/s against 160 for
// 6 x 4 (both 175 from L1), and whole P1 attention ~5% faster. AVX2: 6 x 2 = 12 ymm + 2 + 1
// of 16. Tile widths of 32 to 256 keys and blocks of 1 to 8 micro-tiles sharing a tile
// measured the same to within noise (L1 reuse buys nothing once K streams from L2 at this
// intensity), so a block is one micro-tile, which keeps the causal diagonal's waste small.
constexpr int kRows = Vec::lanes == 16 ? 12 : 6;
constexpr int kPanelVecs = 2;
constexpr int kPanel = kPanelVecs * Vec::lanes;    // keys per packed K panel: 32 / 16
constexpr int kValueVecs = kPanelVecs;             // value columns per PV register tile
constexpr index_t kTileKeys = 128;                 // keys per tile (a multiple of kPanel)
constexpr index_t kBlockRows = kRows;              // rows that share one tile
constexpr index_t kTaskRows = 8 * index_t(kRows);  // rows per task (per query head)
// P V takes a tile's value rows in chunks of kValueChunk: the passes over a chunk's column
// groups (two for 4 decode rows and Dv = 128, eight for 12 rows) then read its rows (16 KB
// at Dv = 128) from L1, where passes over the whole tile read them back from L2. Decode D1
// at 1 thread: +10%; prefill P1 within noise.
constexpr index_t kValueChunk = 32;

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// Asks for every line of `bytes` bytes from `row`, into L2 (prefetcht1; not L1: see
// kPrefetchRows). A row that does not start on a line boundary (a cache in a plain
// std::vector starts 16 bytes past one) spans one line more than its size. The empty
// volatile asm keeps the loop: GCC deletes a loop whose body only prefetches (a prefetch is
// no side effect, and C++ loops may be assumed to end), which silently removed every decode
// prefetch until this was measured.
inline void prefetch_lines(const float* row, index_t bytes) {
  const auto begin = reinterpret_cast<std::uintptr_t>(row);
  for (std::uintptr_t line = begin & ~std::uintptr_t(63); line < begin + std::uintptr_t(bytes);
       line += 64) {
    // An address only to prefetch, never dereferenced; an integer because the line may
    // start before the row's allocation.
    // NOLINTNEXTLINE(performance-no-int-to-ptr)
    __builtin_prefetch(reinterpret_cast<const void*>(line), 0, 2);
    asm volatile("");
  }
}

// Rows [0, n) of a key or value matrix, wherever they live. A MatrixView has row(j); these
// are rows gathered one pointer each, e.g. from the blocks of a paged KV cache, for decode,
// which streams them once from memory: prefetch(j) asks for row j ahead of its use (rows
// [0, known) have pointers, a few past the tile's end included).
//
// The key rows of a tile also carry the tile's value rows (`values`), which prefetch(j)
// asks for with key row j. Q K^T reads a whole key row per step and so moves through a
// tile slowly, while P V's first pass over a tile touches only the first columns of each
// value row and is over before rows asked for there arrive: with the values asked for
// alongside the keys, P V finds them in L2. (Zen 4, D1 and D2 at one thread: AVX2 decode
// 11 -> 15-19 GB/s, AVX-512 +0-5%.) P V's first pass still asks for its rows too: without
// it, the same runs were 10-25% slower, for reasons not pinned down.
struct GatheredRows {
  const float* const* rows;
  index_t known;
  index_t bytes;                         // bytes per row
  const float* const* values = nullptr;  // [known], or null
  index_t value_bytes = 0;
  const float* row(index_t j) const { return rows[j]; }
  void prefetch(index_t j) const {
    if (j >= known) return;
    prefetch_lines(rows[j], bytes);
    if (values) prefetch_lines(values[j], value_bytes);
  }
};
// Rows [j, n) of a row set, as rows [0, n - j).
inline GatheredRows drop_rows(const GatheredRows& r, index_t j) {
  return {r.rows + j, r.known - j, r.bytes, r.values ? r.values + j : nullptr, r.value_bytes};
}
inline MatrixView<const float> drop_rows(const MatrixView<const float>& m, index_t j) {
  return m.block(j, m.rows - j, 0, m.cols);
}
// Prefill reads rows that the tiles reuse from cache: no prefetching.
inline void prefetch_row(const MatrixView<const float>&, index_t) {}
inline void prefetch_row(const GatheredRows& rows, index_t j) {
  rows.prefetch(j);
}
// How far ahead decode asks for rows: 16 rows of 512 B, 8 KiB, ~500 ns at 15 GB/s, a few
// times the latency of DRAM, and past the end of a 16-token page of a paged cache. The
// rows go to L2: on Zen 4 (AVX-512, one thread, DRAM-bound D2 and L3-sized D1), asking
// for them 8 rows ahead into L1 (prefetcht0) streamed 8-9 GB/s, asking for nothing 11,
// and 16 rows ahead into L2 15-17; the L1's own prefetcher brings them on from L2.
constexpr index_t kPrefetchRows = 16;

// Keys [0, n) of `k` (dk wide), packed into panels of kPanel keys: panel p holds key
// p * kPanel + c at [p][d][c] for c < kPanel, zeros past n. Blocks of transpose_size keys
// by as many dimensions are transposed in registers (Vec::transpose): moving one float at
// a time, a store each, packing took 4% of P1's time at AVX-512. Decode's gathered rows are
// asked for kPrefetchRows ahead, their values with them (16 query rows per kv head, Zen 4:
// 5 -> 7 GB/s).
template <class Rows>
inline void pack_keys(const Rows& k, index_t n, index_t dk, float* out) {
  constexpr int T = Vec::transpose_size;
  static_assert(kPanel % T == 0, "a panel holds whole blocks of keys");
  for (index_t j0 = 0; j0 < n; j0 += kPanel, out += dk * kPanel) {
    const index_t m = std::min<index_t>(kPanel, n - j0);
    index_t c = 0;
    for (; c + T <= m; c += T) {
      const float* rows[T];
      for (int t = 0; t < T; ++t) rows[t] = k.row(j0 + c + t);
      for (int t = 0; t < T; ++t) prefetch_row(k, j0 + c + t + kPrefetchRows);
      index_t d = 0;
      for (; d + T <= dk; d += T) Vec::transpose(&rows[0], d, out + d * kPanel + c, kPanel);
      for (; d < dk; ++d)
        for (int t = 0; t < T; ++t) out[d * kPanel + c + t] = rows[t][d];
    }
    for (; c < m; ++c) {
      const float* row = k.row(j0 + c);
      for (index_t d = 0; d < dk; ++d) out[d * kPanel + c] = row[d];
    }
    for (c = m; c < kPanel; ++c)
      for (index_t d = 0; d < dk; ++d) out[d * kPanel + c] = 0.0f;
  }
}

// s[r][0, kPanel) = c * (q_r . panel) for the R rows of q (q_stride apart) into s (s_stride
// apart).
template <int R>
inline void qk_panel(const float* q, index_t q_stride, index_t dk, const float* panel, float c,
                     float* s, index_t s_stride) {
  typename Vec::V acc[R][kPanelVecs];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
    for (int v = 0; v < kPanelVecs; ++v) acc[r][v] = Vec::zero();
  for (index_t d = 0; d < dk; ++d, panel += kPanel) {
    typename Vec::V kv[kPanelVecs];
#pragma GCC unroll 16
    for (int v = 0; v < kPanelVecs; ++v) kv[v] = Vec::load(panel + v * Vec::lanes);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const typename Vec::V qr = Vec::set1(q[r * q_stride + d]);
#pragma GCC unroll 16
      for (int v = 0; v < kPanelVecs; ++v) acc[r][v] = Vec::fmadd(qr, kv[v], acc[r][v]);
    }
  }
  const typename Vec::V cv = Vec::set1(c);
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
    for (int v = 0; v < kPanelVecs; ++v)
      Vec::store(s + r * s_stride + v * Vec::lanes, Vec::mul(acc[r][v], cv));
}

// o[r][c0, c0 + U * lanes) = o[r] * corr[r] + sum over keys j < n of p[r][j] * v[j][...]
// (corr null: o[r] + the sum), p's rows kTileKeys apart (a tile's probabilities).
// With Partial, the last of the U vectors holds only `last` lanes. R, U and Partial are
// compile-time constants so that the R x U accumulators stay in registers: GCC 12 spills
// them on every step if the loop holds a masked load, hence the separate Partial kernel
// for the columns past the last full vector, and the zero start (O * corr is added at
// the end, which the loop then does not depend on). The stride of p is a constant so that
// the R broadcasts of a step address off one register: with a stride in a register, GCC
// kept R row pointers, spilled them to vector registers and the stack, and P V ran ~15%
// slower than Q K^T on 12 rows.
template <int R, int U, bool Partial, class Rows>
inline void pv_columns(const float* p, index_t n, const Rows& v, index_t c0, int last,
                       const float* corr, float* o, index_t o_stride) {
  typename Vec::V acc[R][U];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
    for (int u = 0; u < U; ++u) acc[r][u] = Vec::zero();
  for (index_t j = 0; j < n; ++j) {
    if (c0 == 0) prefetch_row(v, j + kPrefetchRows);
    const float* vj = v.row(j) + c0;
    typename Vec::V vv[U];
#pragma GCC unroll 16
    for (int u = 0; u < U; ++u)
      vv[u] = Partial && u == U - 1 ? Vec::load(vj + u * Vec::lanes, last)
                                    : Vec::load(vj + u * Vec::lanes);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const typename Vec::V pr = Vec::set1(p[r * kTileKeys + j]);
#pragma GCC unroll 16
      for (int u = 0; u < U; ++u) acc[r][u] = Vec::fmadd(pr, vv[u], acc[r][u]);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
    // No corr: o += acc (1 * o + acc rounds the same).
    const typename Vec::V c = Vec::set1(corr ? corr[r] : 1.0f);
    float* orow = o + r * o_stride + c0;
#pragma GCC unroll 16
    for (int u = 0; u < U; ++u) {
      float* dst = orow + u * Vec::lanes;
      if (Partial && u == U - 1)
        Vec::store(dst, Vec::fmadd(Vec::load(dst, last), c, acc[r][u]), last);
      else
        Vec::store(dst, Vec::fmadd(Vec::load(dst), c, acc[r][u]));
    }
  }
}

// All dv value columns of value rows [0, n): full groups of U vectors, then the full
// vectors left, then the last partial vector. A register tile of R rows takes U =
// kValueVecs vectors, or more for the few rows of decode (up to half the registers in
// accumulators), so that a tile reads each value row in as few passes as possible.
template <int R, class Rows>
inline void pv_tile(const float* p, index_t n, const Rows& v, index_t dv, const float* corr,
                    float* o, index_t o_stride) {
  constexpr int U = std::clamp(Vec::registers / 2 / R, kValueVecs, 8);
  constexpr int step = U * Vec::lanes;
  index_t c0 = 0;
  for (; c0 + step <= dv; c0 += step) pv_columns<R, U, false>(p, n, v, c0, 0, corr, o, o_stride);
  if constexpr (U > kValueVecs)
    for (; c0 + kValueVecs * Vec::lanes <= dv; c0 += kValueVecs * Vec::lanes)
      pv_columns<R, kValueVecs, false>(p, n, v, c0, 0, corr, o, o_stride);
  for (; c0 + Vec::lanes <= dv; c0 += Vec::lanes)
    pv_columns<R, 1, false>(p, n, v, c0, 0, corr, o, o_stride);
  if (c0 < dv) pv_columns<R, 1, true>(p, n, v, c0, int(dv - c0), corr, o, o_stride);
}

// Row-count dispatch for the register tiles: a tile of `rows` <= R rows runs the kernel
// instantiated for exactly that many, so that its loops unroll.
template <int R>
inline void qk_panel_rows(int rows, const float* q, index_t q_stride, index_t dk,
                          const float* panel, float c, float* s, index_t s_stride) {
  if constexpr (R > 1)
    if (rows < R) return qk_panel_rows<R - 1>(rows, q, q_stride, dk, panel, c, s, s_stride);
  qk_panel<R>(q, q_stride, dk, panel, c, s, s_stride);
}
// s[r][jj] = c * (the lanes of acc[r][jj] summed), for R rows s_stride apart. Four sums
// at a time share one transpose-and-add tree (Vec::sums4): a row's 4 keys, or 2 keys of
// 2 rows.
template <int R, int J>
inline void store_dots(const typename Vec::V (&acc)[R][J], float c, float* s, index_t s_stride) {
  if constexpr (J == 4) {
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) Vec::sums4(&acc[r][0], c, s + r * s_stride);
  } else if constexpr (J == 2 && R % 2 == 0) {
#pragma GCC unroll 16
    for (int r = 0; r < R; r += 2) {
      const typename Vec::V x[4] = {acc[r][0], acc[r][1], acc[r + 1][0], acc[r + 1][1]};
      float sums[4];
      Vec::sums4(&x[0], c, &sums[0]);
      s[r * s_stride] = sums[0], s[r * s_stride + 1] = sums[1];
      s[(r + 1) * s_stride] = sums[2], s[(r + 1) * s_stride + 1] = sums[3];
    }
  } else {
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
      for (int jj = 0; jj < J; ++jj) s[r * s_stride + jj] = c * Vec::reduce_add(acc[r][jj]);
  }
}

// Few rows (decode): s[r][j] = c * (q_r . k_j) for J keys j0 .. j0 + J - 1 and the R rows
// of q, straight from the key rows: packing would read and write every key once more than
// these few rows use it. One dot product alone is a chain of dk / lanes dependent FMAs (4
// cycles each); R * J independent chains keep both FMA ports busy.
template <int R, int J, class Rows>
inline void qk_direct_block(const float* q, index_t q_stride, const Rows& k, index_t j0, index_t dk,
                            float c, float* s, index_t s_stride) {
  typename Vec::V acc[R][J];
  const float* kr[J];
#pragma GCC unroll 16
  for (int jj = 0; jj < J; ++jj) kr[jj] = k.row(j0 + jj);
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
    for (int jj = 0; jj < J; ++jj) acc[r][jj] = Vec::zero();
  index_t d = 0;
  for (; d + Vec::lanes <= dk; d += Vec::lanes) {
    typename Vec::V kv[J];
#pragma GCC unroll 16
    for (int jj = 0; jj < J; ++jj) kv[jj] = Vec::load(kr[jj] + d);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const typename Vec::V qv = Vec::load(q + r * q_stride + d);
#pragma GCC unroll 16
      for (int jj = 0; jj < J; ++jj) acc[r][jj] = Vec::fmadd(qv, kv[jj], acc[r][jj]);
    }
  }
  if (d < dk) {
    const int rest = int(dk - d);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const typename Vec::V qv = Vec::load(q + r * q_stride + d, rest);
#pragma GCC unroll 16
      for (int jj = 0; jj < J; ++jj)
        acc[r][jj] = Vec::fmadd(qv, Vec::load(kr[jj] + d, rest), acc[r][jj]);
    }
  }
  store_dots<R, J>(acc, c, s + j0, s_stride);
}

// Rows of up to kDirectRows, then the next rows: each key row of a block is loaded from
// memory by the first group and from L1 by the others, and every group keeps the
// accumulators and loads of one block in registers.
constexpr int kDirectRows = 4;
template <int R, int J, class Rows>
inline void qk_direct_groups(const float* q, index_t q_stride, const Rows& k, index_t j0,
                             index_t dk, float c, float* s, index_t s_stride) {
  if constexpr (R > kDirectRows) {
    qk_direct_block<kDirectRows, J>(q, q_stride, k, j0, dk, c, s, s_stride);
    qk_direct_groups<R - kDirectRows, J>(q + kDirectRows * q_stride, q_stride, k, j0, dk, c,
                                         s + kDirectRows * s_stride, s_stride);
  } else {
    qk_direct_block<R, J>(q, q_stride, k, j0, dk, c, s, s_stride);
  }
}

// Keys [0, n) for R rows: blocks of J keys, J chosen so that a group's accumulators fill
// half the vector registers (the other half holds the key and query loads). Measured with
// D = 128, keys in L2 (AVX-512): 8 rows as two groups of 4 x 4 took 23 ns per key
// where one block of 8 rows x 2 keys took 45.
template <int R, class Rows>
inline void qk_direct(const float* q, index_t q_stride, const Rows& k, index_t n, index_t dk,
                      float c, float* s, index_t s_stride) {
  constexpr int J = std::clamp(Vec::registers / 2 / std::min(R, kDirectRows), 1, 4);
  index_t j = 0;
  for (; j + J <= n; j += J) {
    for (int jj = 0; jj < J; ++jj) prefetch_row(k, j + kPrefetchRows + jj);
    qk_direct_groups<R, J>(q, q_stride, k, j, dk, c, s, s_stride);
  }
  for (; j < n; ++j) qk_direct_groups<R, 1>(q, q_stride, k, j, dk, c, s, s_stride);
}

template <int R, class Rows>
inline void qk_direct_rows(int rows, const float* q, index_t q_stride, const Rows& k, index_t n,
                           index_t dk, float c, float* s, index_t s_stride) {
  if constexpr (R > 1)
    if (rows < R) return qk_direct_rows<R - 1>(rows, q, q_stride, k, n, dk, c, s, s_stride);
  qk_direct<R>(q, q_stride, k, n, dk, c, s, s_stride);
}

template <int R, class Rows>
inline void pv_tile_rows(int rows, const float* p, index_t n, const Rows& v, index_t dv,
                         const float* corr, float* o, index_t o_stride) {
  if constexpr (R > 1)
    if (rows < R) return pv_tile_rows<R - 1>(rows, p, n, v, dv, corr, o, o_stride);
  pv_tile<R>(p, n, v, dv, corr, o, o_stride);
}

// A row's output O / l and log-sum-exp m + log2(l) (in natural units), from its state. A row
// that saw nothing (l == 0) gives zeros and -inf; a row that saw a NaN logit (l NaN) or has
// a NaN sink (m NaN, even with no key seen) gives NaN.
inline void finish_row(const float* acc, float m, float l, index_t dv, float* out, float* lse) {
  const float inf = std::numeric_limits<float>::infinity();
  if (std::isnan(l) || std::isnan(m)) {
    std::fill(out, out + dv, std::numeric_limits<float>::quiet_NaN());
    if (lse) *lse = std::numeric_limits<float>::quiet_NaN();
    return;
  }
  if (l > 0) {
    const typename Vec::V lv = Vec::set1(l);
    index_t d = 0;
    for (; d + Vec::lanes <= dv; d += Vec::lanes)
      Vec::store(out + d, Vec::div(Vec::load(acc + d), lv));
    if (d < dv) Vec::store(out + d, Vec::div(Vec::load(acc + d, int(dv - d)), lv), int(dv - d));
  } else {
    std::fill(out, out + dv, 0.0f);
  }
  if (lse) *lse = l > 0 ? (m + std::log2(l)) * kLn2 : -inf;
}

// Online-softmax state of the rows of one block, and the scratch its tiles use.
struct FlashBlock {
  std::vector<float> s;     // [kBlockRows][kTileKeys]: base-2 logits, then probabilities
  std::vector<float> o;     // [kBlockRows][Dv]: unnormalised output rows
  std::vector<float> m, l;  // [kBlockRows]: running maximum (base 2) and sum
  std::vector<float> corr;  // [kRows]: rescale factors of one micro-tile
};

// Turns a row's base-2 logits s[0, n) (-inf where hidden) into probabilities against the
// new running maximum, updating m and l and returning the factor corr = exp2(m_old - m_new)
// that rescales what the row accumulated so far.
inline float online_softmax_row(float* s, index_t n, float& m, float& l) {
  constexpr float inf = std::numeric_limits<float>::infinity();
  typename Vec::V mv = Vec::set1(-inf);
  index_t j = 0;
  for (; j + Vec::lanes <= n; j += Vec::lanes) mv = Vec::max(mv, Vec::load(s + j));
  float tile_max = Vec::reduce_max(mv);
  for (; j < n; ++j) tile_max = std::max(tile_max, s[j]);
  // A NaN logit may be skipped by max(), but it makes its probability and so l NaN below.
  const float m_new = std::max(m, tile_max);
  if (m_new == -inf) {  // nothing visible yet
    bool nan = false;
    for (j = 0; j < n; ++j) nan = nan || std::isnan(s[j]), s[j] = 0.0f;
    if (nan) l = std::numeric_limits<float>::quiet_NaN();
    return 1.0f;
  }
  float total = 0;
  if (m_new == inf) {
    // A huge scale overflowed some logits: keys at +inf share the mass equally (each
    // weighs exp2(inf - inf), read as 1), everything else weighs 0.
    for (j = 0; j < n; ++j) total += s[j] = s[j] == inf ? 1.0f : (std::isnan(s[j]) ? s[j] : 0.0f);
  } else {
    const typename Vec::V mn = Vec::set1(m_new);
    typename Vec::V sum = Vec::zero();
    for (j = 0; j + Vec::lanes <= n; j += Vec::lanes) {
      const typename Vec::V p = Vec::exp2(Vec::sub(Vec::load(s + j), mn));
      Vec::store(s + j, p);
      sum = Vec::add(sum, p);
    }
    total = Vec::reduce_add(sum);
    for (; j < n; ++j) total += s[j] = std::exp2(s[j] - m_new);
  }
  const float corr = m == m_new ? 1.0f : std::exp2(m - m_new);
  l = l * corr + total;
  m = m_new;
  return corr;
}

// Do the value rows [0, n) (dv wide) hold only finite numbers? x - x is 0 exactly when x
// is finite and NaN otherwise, and a sum that met a NaN stays NaN: the rows are finite when
// the sum of every x - x is 0. Four sums, so that the adds (4-cycle latency) overlap: one
// chain per row ran at a quarter of the speed, 2% of P1's time.
template <class Rows>
inline bool rows_finite(const Rows& v, index_t n, index_t dv) {
  typename Vec::V acc[4] = {Vec::zero(), Vec::zero(), Vec::zero(), Vec::zero()};
  float spoiled = 0;
  for (index_t j = 0; j < n; ++j) {
    const float* row = v.row(j);
    index_t d = 0;
    for (; d + 4 * Vec::lanes <= dv; d += 4 * Vec::lanes)
#pragma GCC unroll 4
      for (int u = 0; u < 4; ++u) {
        const typename Vec::V x = Vec::load(row + d + u * Vec::lanes);
        acc[u] = Vec::add(acc[u], Vec::sub(x, x));
      }
    for (; d + Vec::lanes <= dv; d += Vec::lanes) {
      const typename Vec::V x = Vec::load(row + d);
      acc[0] = Vec::add(acc[0], Vec::sub(x, x));
    }
    for (; d < dv; ++d) spoiled += row[d] - row[d];
  }
  spoiled += Vec::reduce_add(Vec::add(Vec::add(acc[0], acc[1]), Vec::add(acc[2], acc[3])));
  return spoiled == 0.0f;
}

// Are the value rows [0, n) all finite? From the flags of their panels when given (see
// flash_micro_tile), else from the rows.
template <class Rows>
inline bool values_finite(const unsigned char* panel_flags, const Rows& v, index_t n, index_t dv) {
  if (!panel_flags) return rows_finite(v, n, dv);
  for (index_t p = 0; p * kPanel < n; ++p)
    if (!panel_flags[p]) return false;
  return true;
}

// The query rows of a micro-tile and the rule each obeys. Row r is query position pos(r)
// under rule(r): rows of one head for prefill (HeadRows), or the rows of every query head
// sharing one kv head for decode (GroupRows, grouped-query packing).
struct HeadRows {
  const ScoreRule<float>* one;
  index_t i0;  // position of row 0
  const ScoreRule<float>& rule(int) const { return *one; }
  index_t pos(int r) const { return i0 + r; }
  bool plain() const { return one->plain(); }
  bool ranges_only() const { return one->ranges_only(); }
};

struct GroupRows {
  const ScoreRule<float>* rules;  // one per query head of the group
  index_t sq;                     // positions per head: row r0 + r is head (r0 + r) / sq
  index_t r0;
  bool all_plain, all_ranges_only;
  const ScoreRule<float>& rule(int r) const { return rules[(r0 + r) / sq]; }
  index_t pos(int r) const { return (r0 + r) % sq; }
  bool plain() const { return all_plain; }
  bool ranges_only() const { return all_ranges_only; }
};

// Rows of `rs` against the keys [j0, j1) of one tile: from packed panels (key j0 in column
// 0), or straight from the key rows when panels is null. q holds the rows' queries,
// q_stride apart; k and v are tile-relative (row 0 is key j0). finite_values, when given,
// holds one flag per panel of kPanel keys from key j0: whether those value rows are all
// finite (see PackedKeys); null, the rows are checked here when it matters. Updates the
// block state at row offset rb.
template <class RowSet, class KRows, class VRows>
inline void flash_micro_tile(const RowSet& rs, int rows, const float* q, index_t q_stride,
                             index_t dk, const float* panels, const KRows& k, index_t j0,
                             index_t j1, const VRows& v, index_t dv,
                             const unsigned char* finite_values, float scale, FlashBlock& blk,
                             index_t rb) {
  const index_t width = j1 - j0;
  const float inf = std::numeric_limits<float>::infinity();
  float* s = blk.s.data() + rb * kTileKeys;
  // Base-2 logits of plain rules straight from the product; the others get their
  // modifications from the rule in natural units first.
  const bool plain = rs.plain();
  const float c = plain ? scale * kLog2e : scale;
  if (panels)
    for (index_t p = 0; p * kPanel < width; ++p)
      qk_panel_rows<kRows>(rows, q, q_stride, dk, panels + p * dk * kPanel, c, s + p * kPanel,
                           kTileKeys);
  else
    qk_direct_rows<kRows>(rows, q, q_stride, k, width, dk, c, s, kTileKeys);
  // Does every row see every key of the tile? Then nothing needs masking, and P V may
  // multiply whatever V holds.
  bool all_visible = rs.ranges_only();
  for (int r = 0; r < rows && all_visible; ++r) {
    const KeyRange keys = rs.rule(r).keys(rs.pos(r));
    all_visible = keys.begin <= j0 && keys.end >= j1;
  }
  for (int r = 0; r < rows; ++r) {
    float* sr = s + r * kTileKeys;
    const ScoreRule<float>& rule = rs.rule(r);
    const index_t i = rs.pos(r);
    const KeyRange keys = rule.keys(i);
    if (plain) {
      if (!all_visible) {
        // The row's visible keys, relative to the tile (small numbers: int lanes suffice).
        const int begin = int(std::clamp<index_t>(keys.begin - j0, 0, width));
        const int end = int(std::clamp<index_t>(keys.end - j0, 0, width));
        for (index_t j = 0; j < width; j += Vec::lanes)
          Vec::store(sr + j, Vec::keep_range(Vec::load(sr + j), int(j), begin, end, -inf));
      }
    } else {
      for (index_t j = 0; j < width; ++j) {
        const index_t key = j0 + j;
        sr[j] = key >= keys.begin && key < keys.end ? rule.logit(i, key, sr[j]) * kLog2e : -inf;
      }
    }
    blk.corr[r] = online_softmax_row(sr, width, blk.m[rb + r], blk.l[rb + r]);
  }
  float* o = blk.o.data() + rb * dv;
  if (all_visible || values_finite(finite_values, v, width, dv)) {
    // Hidden keys have probability exactly 0, and 0 * v adds nothing to a finite row.
    for (index_t j = 0; j < width; j += kValueChunk)
      pv_tile_rows<kRows>(rows, s + j, std::min(kValueChunk, width - j), drop_rows(v, j), dv,
                          j == 0 ? blk.corr.data() : nullptr, o, dv);
    return;
  }
  // A non-finite value row in a partly hidden tile: skip hidden keys one by one, so that
  // whatever they hold never reaches a row that cannot see them.
  for (int r = 0; r < rows; ++r) {
    float* orow = o + r * dv;
    const float* pr = s + r * kTileKeys;
    const ScoreRule<float>& rule = rs.rule(r);
    const index_t i = rs.pos(r);
    const KeyRange keys = rule.keys(i);
    for (index_t d = 0; d < dv; ++d) orow[d] *= blk.corr[r];
    for (index_t j = std::max(j0, keys.begin); j < std::min(j1, keys.end); ++j) {
      if (rule.hidden(i, j)) continue;
      const float* vj = v.row(j - j0);
      for (index_t d = 0; d < dv; ++d) orow[d] += pr[j - j0] * vj[d];
    }
  }
}

// The keys of one (batch, kv head), packed once and read by every task of its group, and
// whether each panel's value rows are finite. A micro-tile on a mask's edge (the causal
// diagonal) may let P V multiply hidden keys' values by their zero probabilities only when
// those values are finite; the flags answer that once per pair, where checking the tile's
// rows each time re-read them for every block of rows (2% of P1's time).
struct PackedKeys {
  std::vector<float> panels;                 // keys [0, length) in panels of kPanel (see pack_keys)
  std::vector<unsigned char> finite_values;  // [panels]: 1 when the panel's value rows are finite
};

// The keys of (batch b, kv head g), packed into out.
inline void pack_pair(TensorView<const float> k, TensorView<const float> v,
                      const AttentionOptions& opts, index_t b, index_t g, PackedKeys& out) {
  const index_t length = opts.key_lengths.empty() ? k.seq : opts.key_lengths[b];
  const index_t panels = (length + kPanel - 1) / kPanel;
  out.panels.resize(std::size_t(panels * kPanel * k.dim));
  pack_keys(k.head(b, g), length, k.dim, out.panels.data());
  out.finite_values.resize(std::size_t(panels));
  const MatrixView<const float> vh = v.head(b, g);
  for (index_t p = 0; p < panels; ++p) {
    const index_t j0 = p * kPanel, n = std::min<index_t>(kPanel, length - j0);
    out.finite_values[std::size_t(p)] = rows_finite(vh.block(j0, n, 0, v.dim), n, v.dim);
  }
}

// Packs the keys of (batch, kv head) pairs first + t into out[t].
struct PackTasks {
  TensorView<const float> k, v;
  const AttentionOptions* opts;
  PackedKeys* out;
  index_t first;

  void operator()(index_t t) const {
    pack_pair(k, v, *opts, (first + t) / k.heads, (first + t) % k.heads, out[t]);
  }
};

// One task: rows [r0, r1) of every query head of kv head g in batch b.
inline void flash_task(TensorView<const float> q, TensorView<const float> k,
                       TensorView<const float> v, TensorView<float> o, const AttentionOptions& opts,
                       TensorView<float> lse, const PackedKeys& keys, index_t b, index_t g,
                       index_t r0, index_t r1) {
  const index_t group = q.heads / k.heads, dk = q.dim, dv = v.dim, sk = k.seq;
  const MatrixView<const float> kh = k.head(b, g);
  const float scale = float(opts.scale.value_or(default_scale(dk)));
  const float inf = std::numeric_limits<float>::infinity();
  const MatrixView<const float> vh = v.head(b, g);

  FlashBlock blk;
  blk.s.resize(std::size_t(kBlockRows * kTileKeys));
  blk.o.resize(std::size_t(kBlockRows * dv));
  blk.m.resize(kBlockRows), blk.l.resize(kBlockRows), blk.corr.resize(kRows);
  for (index_t h = g * group; h < (g + 1) * group; ++h) {
    const ScoreRule<float> rule(opts, b, h, q.seq, sk);
    const MatrixView<const float> qh = q.head(b, h);
    for (index_t i0 = r0; i0 < r1; i0 += kBlockRows) {
      const index_t rows = std::min(kBlockRows, r1 - i0);
      // The sink is one more key whose value is zero: m and l start from it (a -inf sink
      // weighs nothing, as no sink).
      const float sink = rule.has_sink() ? rule.sink() * kLog2e : -inf;
      std::fill(blk.m.begin(), blk.m.end(), sink);
      std::fill(blk.l.begin(), blk.l.end(), sink == -inf ? 0.0f : 1.0f);
      std::fill(blk.o.begin(), blk.o.end(), 0.0f);
      index_t first = sk, last = 0;  // the keys any row of the block sees
      for (index_t i = i0; i < i0 + rows; ++i) {
        const KeyRange seen = rule.keys(i);
        if (seen.empty()) continue;
        first = std::min(first, seen.begin), last = std::max(last, seen.end);
      }
      // Tiles start on panel boundaries of the packed keys.
      for (index_t j0 = first / kPanel * kPanel; j0 < last; j0 += kTileKeys) {
        const index_t j1 = std::min(j0 + kTileKeys, last);
        const float* tile_panels = keys.panels.data() + j0 * dk;
        for (index_t mi = 0; mi < rows; mi += kRows) {
          const int mr = int(std::min<index_t>(kRows, rows - mi));
          // Skip micro-tiles no row of which sees any key of the tile (causal corners).
          bool sees = false;
          for (int r = 0; r < mr; ++r) {
            const KeyRange seen = rule.keys(i0 + mi + r);
            sees = sees || (seen.begin < j1 && seen.end > j0);
          }
          if (!sees) continue;
          flash_micro_tile(HeadRows{&rule, i0 + mi}, mr, qh.row(i0 + mi), qh.stride, dk,
                           tile_panels, kh.block(j0, j1 - j0, 0, dk), j0, j1,
                           vh.block(j0, j1 - j0, 0, dv), dv,
                           keys.finite_values.data() + j0 / kPanel, scale, blk, mi);
        }
      }
      for (index_t r = 0; r < rows; ++r)
        finish_row(blk.o.data() + r * dv, blk.m[r], blk.l[r], dv, o.row(b, h, i0 + r),
                   lse.empty() ? nullptr : lse.row(b, h, i0 + r));
    }
  }
}

// The tasks of one call, as a functor: GCC compiles lambdas without the path's target.
struct FlashTasks {
  TensorView<const float> q, k, v;
  TensorView<float> o;
  const AttentionOptions* opts;
  TensorView<float> lse;
  const PackedKeys* packed;  // of pairs first, first + 1, ...
  index_t first, chunks;

  // Later chunks have more keys under a causal mask: they are handed out first, so the
  // last tasks to run are the short ones and the threads finish together.
  void operator()(index_t t) const {
    const index_t chunk = chunks - 1 - t % chunks, bg = first + t / chunks;
    const index_t r0 = chunk * kTaskRows;
    flash_task(q, k, v, o, *opts, lse, packed[t / chunks], bg / k.heads, bg % k.heads, r0,
               std::min(q.seq, r0 + kTaskRows));
  }
};

// With many (batch, kv head) pairs per thread, one task per pair: it packs the pair's keys
// into its thread's buffer and runs all its rows, so a call has one barrier rather than
// two per wave of pairs. `order` lists the pairs longest keys first, so that the last
// tasks to run are the short ones. The buffer outlives the call, as gemm's packing
// buffers do: one pair's packed keys per thread (Sk * Dk floats), kept for the next call
// rather than faulted in again.
struct PairTasks {
  TensorView<const float> q, k, v;
  TensorView<float> o;
  const AttentionOptions* opts;
  TensorView<float> lse;
  const index_t* order;

  void operator()(index_t t) const {
    thread_local PackedKeys keys;
    const index_t b = order[t] / k.heads, g = order[t] % k.heads;
    pack_pair(k, v, *opts, b, g, keys);
    for (index_t r0 = 0; r0 < q.seq; r0 += kTaskRows)
      flash_task(q, k, v, o, *opts, lse, keys, b, g, r0, std::min(q.seq, r0 + kTaskRows));
  }
};
