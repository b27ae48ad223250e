// bench/ab's driver: times one Case on both sides, call by call in alternation (old then
// new, new then old on the next pair, so neither side always runs on the other's warm
// caches), and prints each side's median rate and the median of the per-pair ratios.
//
//   build/ab/ab KERNEL SHAPE [isa=avx512] [threads=1] [cache=NAME | cache=OLD,NEW]
//               [weight=NAME | weight=OLD,NEW] [calls=30]
//
// cache=OLD,NEW gives the sides different caches (decode), e.g. one revision against
// itself with cache=contiguous,token_major; weight=OLD,NEW different weights (linear), e.g.
// weight=as_is,packed. Three calls per side warm up untimed.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <exception>
#include <stdexcept>
#include <string>
#include <vector>

#include "ab.hpp"

namespace {

// The median and quartiles of `v` (sorted in place).
struct Spread {
  double low, median, high;
};
Spread spread(std::vector<double>& v) {
  std::sort(v.begin(), v.end());
  const auto at = [&](double f) { return v[std::size_t(f * double(v.size() - 1) + 0.5)]; };
  return {at(0.25), at(0.5), at(0.75)};
}

double seconds(ab::Runner& r) {
  const auto start = std::chrono::steady_clock::now();
  r.run();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// "OLD,NEW" in `old_value` becomes OLD there and NEW in `new_value`.
void split_pair(std::string& old_value, std::string& new_value) {
  const std::size_t comma = old_value.find(',');
  if (comma == std::string::npos) return;
  new_value = old_value.substr(comma + 1);
  old_value = old_value.substr(0, comma);
}

int usage(const char* what) {
  std::fprintf(stderr,
               "ab: %s\nusage: ab KERNEL SHAPE [isa=avx512] [threads=1] "
               "[cache=NAME | cache=OLD,NEW] [weight=NAME | weight=OLD,NEW] [calls=30]\n",
               what);
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) return usage("KERNEL and SHAPE are required");
  ab::Case old_case{argv[1], argv[2]};
  int calls = 30;
  for (int a = 3; a < argc; ++a) {
    const std::string arg = argv[a];
    const std::size_t eq = arg.find('=');
    if (eq == std::string::npos) return usage(("not key=value: " + arg).c_str());
    const std::string key = arg.substr(0, eq), value = arg.substr(eq + 1);
    if (key == "isa")
      old_case.isa = value;
    else if (key == "threads")
      old_case.threads = std::stoi(value);
    else if (key == "calls")
      calls = std::stoi(value);
    else if (key == "cache")
      old_case.cache = value;
    else if (key == "weight")
      old_case.weight = value;
    else
      return usage(("unknown argument: " + key).c_str());
  }
  if (calls < 1 || old_case.threads < 1) return usage("calls and threads must be at least 1");
  ab::Case new_case = old_case;
  split_pair(old_case.cache, new_case.cache);
  split_pair(old_case.weight, new_case.weight);

  std::unique_ptr<ab::Runner> sides[2];
  try {
    sides[0] = ab_old::make(old_case);
    sides[1] = ab_new::make(new_case);
  } catch (const std::exception& e) {
    return usage(e.what());
  }
  for (int warm = 0; warm < 3; ++warm)
    for (auto& side : sides) side->run();

  std::vector<double> rate[2], ratio;
  for (int c = 0; c < calls; ++c) {
    double t[2];
    for (int k = 0; k < 2; ++k) {
      const int s = (c % 2 == 0) ? k : 1 - k;
      t[s] = seconds(*sides[s]);
    }
    for (int s = 0; s < 2; ++s) rate[s].push_back(sides[s]->work / t[s] * 1e-9);
    ratio.push_back(t[0] / t[1]);
  }

  std::printf("%s %s isa=%s threads=%d cache=%s,%s weight=%s,%s: %d calls a side, alternating\n",
              old_case.kernel.c_str(), old_case.shape.c_str(), old_case.isa.c_str(),
              old_case.threads, old_case.cache.c_str(), new_case.cache.c_str(),
              old_case.weight.c_str(), new_case.weight.c_str(), calls);
  const char* names[2] = {"old", "new"};
  for (int s = 0; s < 2; ++s) {
    const Spread r = spread(rate[s]);
    std::printf("%s: median %.2f %s (quartiles %.2f-%.2f)\n", names[s], r.median, sides[s]->unit,
                r.low, r.high);
  }
  const Spread q = spread(ratio);
  std::printf("new/old, per pair: median %.3f (quartiles %.3f-%.3f)\n", q.median, q.low, q.high);
  const std::vector<float>&a = sides[0]->output(), &b = sides[1]->output();
  double diff = 0;
  for (std::size_t i = 0; i < a.size() && i < b.size(); ++i)
    diff = std::max(diff, double(std::fabs(a[i] - b[i])));
  if (a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0)
    std::printf("outputs: the same bits\n");
  else
    std::printf("outputs: differ, by at most %.3g\n", diff);
  return 0;
}
