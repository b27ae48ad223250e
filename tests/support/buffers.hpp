// Test buffers: tensors and matrices laid out as users lay them out (BHSD or BSHD, rows
// padded so that the row stride exceeds the row), with every element outside the view
// holding a canary, so a test can check that a kernel wrote its view and nothing else.
#pragma once

#include <algorithm>
#include <cstdint>
#include <random>
#include <vector>

#include "attend/view.hpp"

namespace testing_support {

using attend::index_t;

enum class Layout { bhsd, bshd };

inline const char* name(Layout l) {
  return l == Layout::bhsd ? "bhsd" : "bshd";
}

// The value outside views: finite and distinctive, so a stray read shows up in results and
// a stray write in canaries_intact().
template <class T>
constexpr T canary() {
  return T(-7777.25);
}

// Storage for a [b, h, s, d] view whose rows are `pad` elements longer than d.
template <class T>
struct TensorBuffer {
  std::vector<T> storage;
  attend::TensorView<T> view;

  TensorBuffer(index_t b, index_t h, index_t s, index_t d, Layout layout = Layout::bhsd,
               index_t pad = 3) {
    const index_t row = d + pad;
    storage.assign(std::size_t(b * h * s * row + 1), canary<T>());
    if (layout == Layout::bhsd)
      view = {storage.data(), b, h, s, d, h * s * row, s * row, row};
    else  // heads interleaved: [b][s][h][row]
      view = {storage.data(), b, h, s, d, s * h * row, row, h * row};
  }
  TensorBuffer(const TensorBuffer&) = delete;  // the view points into storage
  TensorBuffer& operator=(const TensorBuffer&) = delete;

  attend::TensorView<const T> in() const { return view; }

  template <class F>
  void for_each(F f) {
    for (index_t b = 0; b < view.batch; ++b)
      for (index_t h = 0; h < view.heads; ++h)
        for (index_t s = 0; s < view.seq; ++s)
          for (index_t d = 0; d < view.dim; ++d) f(view.row(b, h, s)[d]);
  }
  // Uniform values in [lo, hi), from a fixed seed.
  void fill_random(std::uint32_t seed, double lo = -1, double hi = 1) {
    std::mt19937 gen(seed);
    std::uniform_real_distribution<double> dist(lo, hi);
    for_each([&](T& x) { x = T(dist(gen)); });
  }
  // Every element outside the view still holds the canary.
  bool canaries_intact() const {
    std::vector<bool> inside(storage.size());
    for (index_t b = 0; b < view.batch; ++b)
      for (index_t h = 0; h < view.heads; ++h)
        for (index_t s = 0; s < view.seq; ++s)
          for (index_t d = 0; d < view.dim; ++d)
            inside[std::size_t(view.row(b, h, s) + d - storage.data())] = true;
    for (std::size_t i = 0; i < storage.size(); ++i)
      if (!inside[i] && storage[i] != canary<T>()) return false;
    return true;
  }
};

// Storage for a [rows, cols] view with row stride cols + pad.
template <class T>
struct MatrixBuffer {
  std::vector<T> storage;
  attend::MatrixView<T> view;

  MatrixBuffer(index_t rows, index_t cols, index_t pad = 3)
      : storage(std::size_t(rows * (cols + pad) + 1), canary<T>()),
        view(storage.data(), rows, cols, cols + pad) {}
  MatrixBuffer(const MatrixBuffer&) = delete;
  MatrixBuffer& operator=(const MatrixBuffer&) = delete;

  attend::MatrixView<const T> in() const { return view; }

  void fill_random(std::uint32_t seed, double lo = -1, double hi = 1) {
    std::mt19937 gen(seed);
    std::uniform_real_distribution<double> dist(lo, hi);
    for (index_t i = 0; i < view.rows; ++i)
      for (index_t j = 0; j < view.cols; ++j) view(i, j) = T(dist(gen));
  }
  bool canaries_intact() const {
    const index_t stride = std::max<index_t>(view.stride, 1);  // 0 for a view of no rows
    for (std::size_t i = 0; i < storage.size(); ++i) {
      const index_t r = index_t(i) / stride, c = index_t(i) % stride;
      const bool inside = r < view.rows && c < view.cols;
      if (!inside && storage[i] != canary<T>()) return false;
    }
    return true;
  }
};

// A vector of n values uniform in [lo, hi).
template <class T>
std::vector<T> random_vector(index_t n, std::uint32_t seed, double lo = -1, double hi = 1) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<double> dist(lo, hi);
  std::vector<T> v(static_cast<std::size_t>(n));
  for (T& x : v) x = T(dist(gen));
  return v;
}

}  // namespace testing_support
