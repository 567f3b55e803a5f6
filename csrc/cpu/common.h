// What every CPU kernel file shares: forced inlining, a NaN-explicit max, bit casts, and the
// thread split (parallel_for) whose results do not depend on the thread count.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <limits>
#include <thread>
#include <vector>

#if defined(__SSE__)
#include <xmmintrin.h>
#endif

// Forced: a call left in a loop body (GCC declines to inline into a large loop) stops vectorisation.
#define SREM_INLINE inline __attribute__((always_inline))

namespace srem {

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// By value (std::max returns a reference, which keeps `omp simd` loops from vectorising).
// Same NaN behaviour as std::max: the first argument wins unless the comparison holds.
SREM_INLINE float vmax(float a, float b) { return a < b ? b : a; }
// The same for the minimum: the first argument wins unless b < a (vminps(b, a)).
SREM_INLINE float vmin(float a, float b) { return b < a ? b : a; }

SREM_INLINE float as_float(int32_t i) { return __builtin_bit_cast(float, i); }
SREM_INLINE int32_t as_int(float f) { return __builtin_bit_cast(int32_t, f); }

// Runs the statements `...` for j in [lo, hi) in SIMD: the first (hi - lo) / 8 * 8 of them as one
// `omp simd` loop (live = true), the rest as one masked 8-lane step over [hi - 8, hi) with live =
// (j not yet done) — not as a scalar loop: the runs between a row's special columns are short at
// small B, and the scalar ends of a heavy body cost more than its vector part (perf, B=128: two
// thirds of pass 2's plain loop; a light body, as pass 1's, gains nothing). The step reads
// [hi - 8, hi), in range when hi >= 8 (else the rest runs in scalar); the statements keep a lane's
// work only where `live` (a masked lane's inputs may be anything, inf and NaN included).
// REDUCTION: the loops' reduction clauses, or nothing.
#define SREM_PRAGMA(...) _Pragma(#__VA_ARGS__)
#define SREM_SIMD_RANGE(j, lo, hi, REDUCTION, ...)                                    \
  do {                                                                                 \
    const int64_t lo_ = (lo), hi_ = (hi), end8_ = lo_ + (hi_ - lo_) / 8 * 8;           \
    SREM_PRAGMA(omp simd REDUCTION)                                                    \
    for (int64_t j = lo_; j < end8_; ++j) {                                            \
      constexpr bool live = true;                                                      \
      __VA_ARGS__                                                                      \
    }                                                                                  \
    if (end8_ < hi_ && hi_ >= 8) {                                                     \
      SREM_PRAGMA(omp simd REDUCTION)                                                  \
      for (int64_t k_ = 0; k_ < 8; ++k_) {                                             \
        const int64_t j = hi_ - 8 + k_;                                                \
        const bool live = j >= end8_;                                                  \
        __VA_ARGS__                                                                    \
      }                                                                                \
    } else {                                                                           \
      for (int64_t j = end8_; j < hi_; ++j) {                                          \
        constexpr bool live = true;                                                    \
        __VA_ARGS__                                                                    \
      }                                                                                \
    }                                                                                  \
  } while (0)

// Subnormal fp32 results (probabilities below 1e-38 times small factors) cost ~100 cycles each on
// x86; flushing them to zero changes nothing above 1e-38 and keeps the loops at SIMD speed.
template <class F>
void flush_subnormals(F&& f) {
#if defined(__SSE__)
  const unsigned csr = _mm_getcsr();
  _mm_setcsr(csr | 0x8040);  // FTZ | DAZ
  f();
  _mm_setcsr(csr);
#else
  f();
#endif
}

// Items [0, n) split into `threads` contiguous ranges, one per thread. Callers make every item's
// result independent of which thread computes it (each item owns what it writes, sums run in a
// fixed order inside an item), so results are bitwise the same for any thread count.
template <class F>
void parallel_for(int64_t n, int threads, F body) {
  const int64_t t = std::max<int64_t>(1, std::min<int64_t>(threads, n));
  auto f = [&body](int64_t lo, int64_t hi) { flush_subnormals([&] { body(lo, hi); }); };
  if (t == 1) {
    f(int64_t{0}, n);
    return;
  }
  const int64_t chunk = (n + t - 1) / t;
#ifdef _OPENMP
  // torch's own libgomp (same SONAME, already loaded): one thread pool with torch's GEMMs, not two
  // pools spinning against each other on few cores.
#pragma omp parallel for schedule(static, 1) num_threads(static_cast<int>(t))
  for (int64_t k = 0; k < t; ++k) {
    const int64_t lo = k * chunk, hi = std::min(n, lo + chunk);
    if (lo < hi) f(lo, hi);
  }
#else
  std::vector<std::thread> pool;
  for (int64_t k = 1; k < t; ++k) {
    const int64_t lo = k * chunk, hi = std::min(n, lo + chunk);
    if (lo < hi) pool.emplace_back(f, lo, hi);
  }
  f(int64_t{0}, std::min(n, chunk));
  for (auto& th : pool) th.join();
#endif
}

// body(k) for every task k in [0, n), handed out one at a time (tasks of unequal cost). Each task
// owns what it writes, so which thread runs it does not change any result.
template <class F>
void parallel_tasks(int64_t n, int threads, F body) {
  const int64_t t = std::max<int64_t>(1, std::min<int64_t>(threads, n));
  if (t == 1) {
    flush_subnormals([&] {
      for (int64_t k = 0; k < n; ++k) body(k);
    });
    return;
  }
#ifdef _OPENMP
#pragma omp parallel num_threads(static_cast<int>(t))
  flush_subnormals([&] {
#pragma omp for schedule(dynamic, 1)
    for (int64_t k = 0; k < n; ++k) body(k);
  });
#else
  std::atomic<int64_t> next{0};
  auto worker = [&] {
    flush_subnormals([&] {
      for (int64_t k; (k = next.fetch_add(1)) < n;) body(k);
    });
  };
  std::vector<std::thread> pool;
  for (int64_t k = 1; k < t; ++k) pool.emplace_back(worker);
  worker();
  for (auto& th : pool) th.join();
#endif
}

}  // namespace srem
