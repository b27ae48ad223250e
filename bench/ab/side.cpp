// One side of bench/ab: a Runner for an ab::Case, built from the attend headers this copy
// is compiled against. ab.sh compiles it twice, with -DAB_SIDE=ab_old or ab_new, each
// against its revision's include/ with the ABI namespace renamed, so neither copy's inline
// functions can stand in for the other's. The inputs (bench/data.cpp) are shared.
#include <attend/attention.hpp>
#include <attend/context.hpp>
#include <attend/isa.hpp>
#include <attend/linear.hpp>
#include <attend/packed.hpp>

#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "ab.hpp"
#include "data.hpp"
#include "decode_data.hpp"

namespace {

using namespace attend_bench;

attend::Isa isa_named(const std::string& name) {
  for (const attend::Isa isa : attend::supported_isas())
    if (name == attend::name(isa)) return isa;
  throw std::invalid_argument("isa: " + name + " is not a path this CPU runs");
}

Cache cache_named(const std::string& name) {
  if (name == "contiguous") return Cache::contiguous;
  if (name == "paged") return Cache::paged;
  if (name == "token_major") return Cache::token_major;
  throw std::invalid_argument("cache: " + name + " is not contiguous, paged or token_major");
}

class Prepared : public ab::Runner {
 public:
  void run() override { call(); }
  const std::vector<float>& output() const override { return o; }

  std::unique_ptr<attend::ThreadPool> pool;
  std::unique_ptr<attend::PackedWeight> packed;
  attend::Context ctx;
  std::vector<float> o;
  std::function<void()> call;
};

}  // namespace

namespace AB_SIDE {

std::unique_ptr<ab::Runner> make(const ab::Case& c) {
  auto r = std::make_unique<Prepared>();
  r->ctx.isa = isa_named(c.isa);
  if (c.threads > 1) {
    r->pool = std::make_unique<attend::ThreadPool>(c.threads);
    r->ctx.executor = r->pool.get();
  }
  Prepared& p = *r;
  if (c.kernel == "decode") {
    for (const DecodeShape& s : decode_shapes()) {
      if (s.name != c.shape) continue;
      const Cache cache = cache_named(c.cache);
      p.o.resize(std::size_t(s.batch * s.q_heads * s.head_dim));
      p.call = [&p, s, cache] { run_decode(s, cache, p.o.data(), p.ctx); };
      p.work = s.bytes(), p.unit = "GB/s";
      return r;
    }
  } else if (c.kernel == "attention") {
    const AttentionShape s = attention_shape(c.shape);
    if (!s.name.empty() && !s.is_decode()) {
      const AttentionData& in = attention_data(s);
      p.o.resize(std::size_t(s.q_elems()));
      p.call = [&p, s, &in] {
        attend::attention<float>(q_view(s, in.q.data()), kv_view(s, in.k.data()),
                                 kv_view(s, in.v.data()), q_view(s, p.o.data()),
                                 attention_options(s), {}, p.ctx);
      };
      p.work = s.attention_flops(), p.unit = "GFLOP/s";
      return r;
    }
  } else if (c.kernel == "linear") {
    for (const GemmShape& g : gemm_shapes()) {
      if (g.name != c.shape) continue;
      const LinearData& in = linear_data(g);
      using Matrix = attend::MatrixView<const float>;
      const Matrix x(in.x.data(), g.m, g.k), w(in.w.data(), g.n, g.k);
      p.o.resize(std::size_t(g.m * g.n));
      const attend::MatrixView<float> y(p.o.data(), g.m, g.n);
      if (c.weight == "as_is") {
        p.call = [&p, x, w, y] {
          attend::linear<float>(x, w, {}, y, attend::WeightLayout::out_in, p.ctx);
        };
      } else if (c.weight == "in_out") {
        const Matrix w_t(in_out_weight(g).data(), g.k, g.n);
        p.call = [&p, x, w_t, y] {
          attend::linear<float>(x, w_t, {}, y, attend::WeightLayout::in_out, p.ctx);
        };
      } else if (c.weight == "packed") {
        p.packed =
            std::make_unique<attend::PackedWeight>(w, attend::WeightLayout::out_in, p.ctx.isa);
        p.call = [&p, x, y] { attend::linear(x, *p.packed, {}, y, p.ctx); };
      } else {
        throw std::invalid_argument("weight: " + c.weight + " is not as_is, in_out or packed");
      }
      p.work = g.flops(), p.unit = "GFLOP/s";
      return r;
    }
  } else {
    throw std::invalid_argument("kernel: " + c.kernel + " is not attention, decode or linear");
  }
  throw std::invalid_argument("shape: " + c.shape + " is not a " + c.kernel + " shape");
}

}  // namespace AB_SIDE
