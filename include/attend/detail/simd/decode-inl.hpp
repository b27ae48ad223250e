// Decode attention: a few query rows per sequence against a long KV cache (Sq = 1 when
// generating, a few more for speculative or chunked decoding). Compiled once per path
// inside the path's namespace, after flash-inl.hpp, whose micro-tiles it reuses.
//
// Decode is memory-bound: every key and value row is read once per step and used by only
// a handful of FMAs. Three things keep the cache streaming at the machine's bandwidth:
//
// Grouped-query packing. The Hq / Hkv query heads that share a kv head (and their Sq
// positions) are the R = group * Sq rows of that kv head, computed together, so each K and
// V row is read from memory once for all of them, not once per query head. The rows of
// different heads obey different rules (ALiBi slopes, sinks, bias rows): GroupRows gives
// each row its own.
//
// Split-KV (flash-decoding: Dao, Haziza, Massa and Sizov 2023). A sequence's keys are
// split into chunks, each a task with its own partial online-softmax state (m, l, O) per
// row; a second pass merges the partials of each row by log-sum-exp. A query batch would
// otherwise be one task, too few to keep many threads busy when the batch is small. The
// split depends on the shapes and lengths only, never on the thread count, so results are
// bit-identical for every executor.
//
// Heads in turns. A task runs every kv head of its query batch, a tile of keys each in
// turn (see DecodeTasks), so that a paged cache is read a whole block at a time.
//
// Keys are read through a row source (contiguous or paged cache, see kv_cache.hpp):
// each tile gathers its kTileKeys row pointers once, and the micro-kernels read rows
// through them, so a tile may span several pages at no cost. With R >= kRows rows the tile
// is also packed into K panels, as in prefill; fewer rows read K rows directly.

constexpr index_t kSplitTasks = 64;               // aim for this many tasks per call
constexpr index_t kMinSplitKeys = 2 * kTileKeys;  // and never split finer than this

// Keys per split for `batch` query batches whose longest sequence has `longest` keys;
// `requested` > 0 overrides the choice. A task runs one split of every kv head of a query
// batch (see DecodeTasks), so B * splits tasks. Splits past kSplitTasks tasks only add
// merge work, and each split costs its rows some setup and a merge (R rows of Dk + Dv floats
// per kv head, against its keys' Dk + Dv each): Zen 4, D1 (4 rows per kv head), one thread,
// splits of 128 keys ran 3-5% slower than of 512, and 256 within the noise of 512.
inline index_t decode_split_keys(index_t batch, index_t longest, index_t requested) {
  if (requested > 0) return requested;
  const index_t want =
      std::max<index_t>(1, (kSplitTasks + batch - 1) / std::max<index_t>(batch, 1));
  const index_t chunk = std::max(kMinSplitKeys, (longest + want - 1) / want);
  return (chunk + kTileKeys - 1) / kTileKeys * kTileKeys;
}

// One decode call. Source gathers row pointers of a (sequence, kv head): see kv_cache.hpp.
//
// A task is one split of one query batch, every kv head of it, and the heads take turns a
// tile at a time: head 0's first tile, head 1's first tile, ..., then every head's second
// tile. A paged cache keeps a block's heads side by side ([blocks, kv_heads, block_size,
// d]), so the turns read each block's heads back to back, one run of memory, where a task
// per head read one head's 8 KiB of each block and skipped the rest. Reading the same bytes
// in either order with plain loads (Zen 4, one thread, blocks of 16 tokens, 268 MB, the
// same prefetches): head by head 0.84-0.87 of the speed of a contiguous cache, in turns of
// 128 keys 0.99-1.02, with the contiguous cache as fast in turns as head by head. Decode
// itself, one sequence of 32768 tokens (attend_bench DL): paged/contiguous 0.79-0.85 ->
// 0.94-0.95, a ragged batch (DR) 0.86-0.92 -> 1.00-1.02, contiguous unchanged.
template <class Source>
struct DecodeTasks {
  TensorView<const float> q;  // [B, Hq, Sq, Dk]
  Source kv;
  index_t kv_heads = 0, dv = 0;
  const std::int32_t* sequence = nullptr;  // [B] or null: query batch b reads sequence[b]
  const AttentionOptions* opts = nullptr;  // key_lengths, when set: each query batch's keys
  index_t sk = 0;                          // the logical key extent: bias and mask columns
  TensorView<float> o, lse;
  index_t chunk = 0, splits = 1;   // keys per split, splits per query batch
  const index_t* order = nullptr;  // [B * splits]: the tasks, most keys first
  float* partial = nullptr;  // splits > 1: per (batch, kv head, split), R rows of [m, l, O[dv]]

  index_t rows() const { return q.heads / kv_heads * q.seq; }  // R: query rows per kv head
  index_t length(index_t b) const { return opts->key_lengths.empty() ? sk : opts->key_lengths[b]; }
  float* partial_of(index_t b, index_t g, index_t split) const {
    return partial + ((b * kv_heads + g) * splits + split) * rows() * (dv + 2);
  }

  // Keys of task t (batch t / splits, split t % splits), for every kv head.
  index_t task_keys(index_t t) const {
    const index_t lo = t % splits * chunk;
    return std::max<index_t>(0, std::min(chunk, length(t / splits) - lo));
  }

  void operator()(index_t i) const { run(order[i] / splits, order[i] % splits); }

  // Keys [first, last) of kv head g within the split: those that a row of the head sees.
  struct Keys {
    index_t first, last;
  };

  // Rows of every query head of batch b, keys of one split. Row g * R + r is query head
  // g * group + r / sq, position r % sq: the rows of kv head g are R consecutive rows.
  void run(index_t b, index_t split) const {
    const index_t group = q.heads / kv_heads, sq = q.seq, R = rows(), dk = q.dim;
    const index_t s = sequence ? sequence[b] : b;
    // (A split may start past a short sequence's end: then it is empty.)
    const index_t lo = split * chunk, hi = std::max(lo, std::min(lo + chunk, length(b)));
    const float scale = float(opts->scale.value_or(default_scale(dk)));
    const float inf = std::numeric_limits<float>::infinity();
    std::vector<ScoreRule<float>> rules;  // [Hq]
    rules.reserve(std::size_t(q.heads));
    for (index_t h = 0; h < q.heads; ++h) rules.emplace_back(*opts, b, h, sq, sk);
    std::vector<Keys> keys(static_cast<std::size_t>(kv_heads), Keys{hi, lo});
    std::vector<unsigned char> plain(keys.size(), 1), ranges_only(keys.size(), 1);
    for (index_t g = 0; g < kv_heads; ++g) {
      Keys& kg = keys[std::size_t(g)];
      for (index_t r = 0; r < R; ++r) {
        const ScoreRule<float>& rule = rules[std::size_t(g * group + r / sq)];
        const KeyRange seen = rule.keys(r % sq);
        const index_t begin = std::max(lo, seen.begin), end = std::min(hi, seen.end);
        if (begin < end) kg.first = std::min(kg.first, begin), kg.last = std::max(kg.last, end);
        if (!rule.plain()) plain[std::size_t(g)] = 0;
        if (!rule.ranges_only()) ranges_only[std::size_t(g)] = 0;
      }
    }

    const index_t all = kv_heads * R;
    FlashBlock blk;
    blk.s.resize(std::size_t(all * kTileKeys));
    blk.o.assign(std::size_t(all * dv), 0.0f);
    blk.corr.resize(kRows);
    // The sink is one more key whose value is zero; it joins the first split only.
    const bool sink = split == 0 && rules[0].has_sink();
    blk.m.resize(std::size_t(all)), blk.l.resize(std::size_t(all));
    for (index_t r = 0; r < all; ++r) {  // a -inf sink weighs nothing, as no sink
      blk.m[std::size_t(r)] = sink ? rules[std::size_t(r / sq)].sink() * kLog2e : -inf;
      blk.l[std::size_t(r)] = blk.m[std::size_t(r)] == -inf ? 0.0f : 1.0f;
    }
    // The task's queries, packed in row order.
    std::vector<float> qg(std::size_t(all * dk));
    for (index_t r = 0; r < all; ++r) std::copy_n(q.row(b, r / sq, r % sq), dk, qg.data() + r * dk);

    const bool pack = R >= kRows;
    std::vector<float> panels(pack ? std::size_t(kTileKeys * dk) : 0);
    // Row pointers of a tile and of the kPrefetchRows keys read after it: the next turn's.
    std::vector<const float*> kp(static_cast<std::size_t>(kTileKeys + kPrefetchRows)),
        vp(kp.size());
    const index_t bytes_k = dk * index_t(sizeof(float)), bytes_v = dv * index_t(sizeof(float));
    // The turns in order: (head, first key of the tile).
    std::vector<std::pair<index_t, index_t>> turns;
    for (index_t t = 0;; ++t) {
      const std::size_t before = turns.size();
      for (index_t g = 0; g < kv_heads; ++g) {
        const index_t j0 = keys[std::size_t(g)].first + t * kTileKeys;
        if (j0 < keys[std::size_t(g)].last) turns.emplace_back(g, j0);
      }
      if (turns.size() == before) break;
    }
    for (std::size_t t = 0; t < turns.size(); ++t) {
      const index_t g = turns[t].first, j0 = turns[t].second;
      const index_t j1 = std::min(j0 + kTileKeys, keys[std::size_t(g)].last), n = j1 - j0;
      kv.gather(s, g, j0, n, kp.data(), vp.data());
      index_t known = n;
      if (t + 1 < turns.size()) {
        const index_t gn = turns[t + 1].first, jn = turns[t + 1].second;
        const index_t ahead = std::min(kPrefetchRows, keys[std::size_t(gn)].last - jn);
        kv.gather(s, gn, jn, ahead, kp.data() + n, vp.data() + n);
        known += ahead;
      }
      const GatheredRows krows{kp.data(), known, bytes_k, vp.data(), bytes_v},
          vrows{vp.data(), known, bytes_v};
      if (pack) pack_keys(krows, n, dk, panels.data());
      const ScoreRule<float>* head_rules = rules.data() + g * group;
      for (index_t mi = 0; mi < R; mi += kRows) {
        const int mr = int(std::min<index_t>(kRows, R - mi));
        bool sees = false;  // does a row of the micro-tile see a key of the tile?
        for (int r = 0; r < mr; ++r) {
          const KeyRange seen = head_rules[std::size_t((mi + r) / sq)].keys((mi + r) % sq);
          sees = sees || (seen.begin < j1 && seen.end > j0);
        }
        if (!sees) continue;
        flash_micro_tile(GroupRows{head_rules, sq, mi, plain[std::size_t(g)] != 0,
                                   ranges_only[std::size_t(g)] != 0},
                         mr, qg.data() + (g * R + mi) * dk, dk, dk, pack ? panels.data() : nullptr,
                         krows, j0, j1, vrows, dv, nullptr, scale, blk, g * R + mi);
      }
    }

    for (index_t r = 0; r < all; ++r) {
      const float* acc = blk.o.data() + r * dv;
      const index_t h = r / sq, i = r % sq;
      if (splits == 1) {
        finish_row(acc, blk.m[std::size_t(r)], blk.l[std::size_t(r)], dv, o.row(b, h, i),
                   lse.empty() ? nullptr : lse.row(b, h, i));
      } else {
        float* part = partial_of(b, r / R, split) + (r % R) * (dv + 2);
        part[0] = blk.m[std::size_t(r)], part[1] = blk.l[std::size_t(r)];
        std::copy_n(acc, dv, part + 2);
      }
    }
  }
};

// The second pass of split-KV: for each (batch, kv head), merges the partial states of its
// splits, in split order, and writes the outputs. Partials combine as
//   m = max m_s,  l = sum l_s 2^(m_s - m),  O = sum O_s 2^(m_s - m)
// where an empty split (m_s = -inf) weighs 0, and when some m_s = +inf (overflowed logits)
// exactly the splits at +inf share the mass, as their keys do inside a split.
template <class Source>
struct DecodeMerge {
  const DecodeTasks<Source>* p;

  void operator()(index_t bg) const {
    const index_t b = bg / p->kv_heads, g = bg % p->kv_heads, R = p->rows(), dv = p->dv;
    const index_t group = p->q.heads / p->kv_heads, sq = p->q.seq;
    const float inf = std::numeric_limits<float>::infinity();
    std::vector<float> acc(static_cast<std::size_t>(dv));
    for (index_t r = 0; r < R; ++r) {
      const index_t stride = R * (dv + 2);
      const float* first = p->partial_of(b, g, 0) + r * (dv + 2);
      float m = -inf;
      for (index_t sp = 0; sp < p->splits; ++sp) m = std::max(m, first[sp * stride]);
      float l = 0;
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (index_t sp = 0; sp < p->splits; ++sp) {
        const float* part = first + sp * stride;
        const float ms = part[0], ls = part[1];
        // A NaN sink leaves its split's m NaN, which the max above may skip.
        if (std::isnan(ls) || std::isnan(ms)) l = std::numeric_limits<float>::quiet_NaN();
        // A weight of 0 still multiplies, as the rescale inside a split does: a NaN or inf
        // value row behind -inf logits makes the row NaN whether or not it was split.
        const float w =
            ms == -inf ? 0.0f : (m == inf ? (ms == inf ? 1.0f : 0.0f) : std::exp2(ms - m));
        l += ls * w;
        const typename Vec::V wv = Vec::set1(w);
        float* a = acc.data();
        index_t d = 0;
        for (; d + Vec::lanes <= dv; d += Vec::lanes)
          Vec::store(a + d, Vec::fmadd(Vec::load(part + 2 + d), wv, Vec::load(a + d)));
        if (d < dv) {
          const int rest = int(dv - d);
          Vec::store(a + d, Vec::fmadd(Vec::load(part + 2 + d, rest), wv, Vec::load(a + d, rest)),
                     rest);
        }
      }
      const index_t h = g * group + r / sq, i = r % sq;
      finish_row(acc.data(), m, l, dv, p->o.row(b, h, i),
                 p->lse.empty() ? nullptr : p->lse.row(b, h, i));
    }
  }
};

// Orders decode tasks by their keys, most first, so that the threads' last tasks are the
// short ones (the last split of each sequence, short sequences, empty splits): a ragged
// batch ends evenly. On 2 cores (DR, 2 threads) the order measured within the noise; it
// is for many threads, where in batch order a call may end waiting on one long task.
template <class Source>
struct TasksWithMoreKeysFirst {
  const DecodeTasks<Source>* p;
  bool operator()(index_t x, index_t y) const { return p->task_keys(x) > p->task_keys(y); }
};

// Decode attention over `kv` for every (batch, kv head): see the top of this file.
template <class Source>
void decode(TensorView<const float> q, const Source& kv, index_t kv_heads, index_t dv,
            const std::int32_t* sequence, const AttentionOptions& opts, index_t sk,
            TensorView<float> o, TensorView<float> lse, index_t split_keys,
            const Executor& executor) {
  if (q.batch == 0 || q.heads == 0 || q.seq == 0) return;
  DecodeTasks<Source> p{q, kv, kv_heads, dv, sequence, &opts, sk, o, lse, 0, 1, nullptr};
  index_t longest = 0;
  for (index_t b = 0; b < q.batch; ++b) longest = std::max(longest, p.length(b));
  p.chunk = decode_split_keys(q.batch, longest, split_keys);
  p.splits = std::max<index_t>(1, (longest + p.chunk - 1) / p.chunk);
  std::vector<float> partial(
      p.splits > 1 ? std::size_t(q.batch * kv_heads * p.splits * p.rows() * (dv + 2)) : 0);
  p.partial = partial.data();
  std::vector<index_t> order(static_cast<std::size_t>(q.batch * p.splits));
  for (index_t t = 0; t < index_t(order.size()); ++t) order[std::size_t(t)] = t;
  std::stable_sort(order.begin(), order.end(), TasksWithMoreKeysFirst<Source>{&p});
  p.order = order.data();
  executor.parallel_for(q.batch * p.splits, p);
  if (p.splits > 1) executor.parallel_for(q.batch * kv_heads, DecodeMerge<Source>{&p});
}

// Many pairs per thread (E1 at 2 threads: 96 pairs) are run one task per pair rather than
// in waves: each wave ended on two barriers, and the threads, done with their share of a
// wave's tasks at different times, waited at each. Zen 4, AVX-512, 2 threads, scratch
// driver, alternating, GFLOP/s (medians of 40 calls): E1 191-230 -> 212-223 (1 thread:
// 108-118), P1 149-153 -> 152-158. With fewer pairs per thread the waves' finer tasks
// balance better: n equal pairs on T threads keep ceil(n / T) / (n / T) of the time, 16
// per thread at most 6% over.
constexpr index_t kPairTasksPerThread = 16;

// Orders (batch, kv head) pairs by their key lengths, longest first.
struct PairsLongestFirst {
  const AttentionOptions* opts;
  index_t kv_heads;
  bool operator()(index_t x, index_t y) const {
    return opts->key_lengths[x / kv_heads] > opts->key_lengths[y / kv_heads];
  }
};

// The entry point of attention(): prefill tiles (flash-inl.hpp), or decode tasks when a kv
// head has fewer query rows than a register tile (one query per head: packing K would cost
// a pass over it that the rows do not repay).
inline void attention(TensorView<const float> q, TensorView<const float> k,
                      TensorView<const float> v, TensorView<float> o, const AttentionOptions& opts,
                      TensorView<float> lse, const Executor& executor) {
  if (q.heads == 0 || q.batch == 0 || q.seq == 0) return;
  if (q.seq * (q.heads / k.heads) < kRows)
    return decode(q, ContiguousRows<const float>{k, v}, k.heads, v.dim, nullptr, opts, k.seq, o,
                  lse, 0, executor);
  const index_t pairs = q.batch * k.heads, chunks = (q.seq + kTaskRows - 1) / kTaskRows;
  // Many pairs per thread: one task per pair (see kPairTasksPerThread).
  if (executor.concurrency() > 1 &&
      pairs >= kPairTasksPerThread * index_t(executor.concurrency())) {
    std::vector<index_t> order(static_cast<std::size_t>(pairs));
    for (index_t t = 0; t < pairs; ++t) order[std::size_t(t)] = t;
    if (!opts.key_lengths.empty())
      std::stable_sort(order.begin(), order.end(), PairsLongestFirst{&opts, k.heads});
    executor.parallel_for(pairs, PairTasks{q, k, v, o, &opts, lse, order.data()});
    return;
  }
  // Keys are packed one wave of (batch, kv head) pairs at a time, into buffers that every
  // wave reuses. Packing all pairs up front held B * Hkv * Sk * Dk floats (16 MB at P1):
  // fresh pages, which the allocator hands back to the system when the call frees them
  // and which the next call faults in again, ~4000 page faults costing 5-10% of P1 at
  // 1 thread. Two pairs per thread keep the threads busy to the end of a wave.
  const index_t wave = std::min<index_t>(pairs, 2 * index_t(executor.concurrency()));
  std::vector<PackedKeys> packed(static_cast<std::size_t>(wave));
  for (index_t first = 0; first < pairs; first += wave) {
    const index_t n = std::min(wave, pairs - first);
    executor.parallel_for(n, PackTasks{k, v, &opts, packed.data(), first});
    executor.parallel_for(n * chunks,
                          FlashTasks{q, k, v, o, &opts, lse, packed.data(), first, chunks});
  }
}
