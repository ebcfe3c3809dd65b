// XLA FFI handler: C = A @ B in fp32 for a few rows of A (M <= 8: one decoding step, with or
// without its CFG row), with AVX-512. A (M, K) and B (K, N) are row-major and both fp32 or both
// bf16; C (M, N) is fp32 (exact bf16 x bf16 products, fp32 sums, as layers.ACCUMULATE asks).
//
// Why: at batch 1 a decoding step reads every weight once and does two multiply-adds with it,
// so it runs at the speed the weights stream from memory. XLA:CPU's dot reads bf16 weights at
// about a third of this machine's bandwidth (experiments/janus_pro_speed.md); this loop reads
// them at close to all of it. Built on first use (kernels/build.py; no build step at install).
//
// Layout of the work: threads (thread_pool.h) own contiguous row ranges of B (contiguous memory) and
// sum into their own M x N partials, added up at the end. Each walks the full width in tiles
// for a block of 8 rows at a time, so it streams 8 long rows at once and keeps the M x tile
// partial sums in registers for the block: 128-column tiles for up to 2 rows of A (a batch-1
// step with its CFG row), 64 above (register budget). Each row's loads are prefetched two
// tiles ahead (wide tiles and prefetch together: bf16, 2 rows, 29.7 -> 36.5 GB/s here,
// experiments/janus_pro_speed.md). bf16 is widened to fp32 in registers: a 32-bit lane
// holding two bf16 values gives the even column by a left shift and the odd one by masking the
// low half, so a tile's sums are kept in (even, odd) order and put back in column order once at
// the end.
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "bf16.h"
#include "product_ffi.h"
#include "thread_pool.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using janusflow_bf16::ToF32;

namespace {

constexpr int64_t kRowBlock = 8;   // rows of B streamed together
constexpr int64_t kMaxRows = 8;    // rows of A handled together
constexpr int64_t kWideRows = 2;   // up to this many rows of A, 128-column tiles (else 64)
constexpr int64_t kPrefetch = 2;   // tiles ahead

// The V fp32 vectors of 16 V columns of one row of B (bf16: in (even, odd) order per 32).
template <int V>
inline void LoadTile(const float* b, __m512 w[V]) {
  for (int j = 0; j < V; ++j) w[j] = _mm512_loadu_ps(b + 16 * j);
}

template <int V>
inline void LoadTile(const uint16_t* b, __m512 w[V]) {
  const __m512i hi_mask = _mm512_set1_epi32(static_cast<int>(0xFFFF0000u));
  for (int j = 0; j < V / 2; ++j) {
    __m512i v = _mm512_loadu_si512(reinterpret_cast<const void*>(b + 32 * j));
    w[2 * j] = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));        // columns 0, 2, ..., 30
    w[2 * j + 1] = _mm512_castsi512_ps(_mm512_and_si512(v, hi_mask));  // columns 1, 3, ..., 31
  }
}

// acc[m][0..V) += sum over rows k0 <= k < k1 of a[m, k] * B[k, tile], for M rows of a (fp32).
template <typename T, int M, int V>
inline void TileRows(const float* a, int64_t lda, const T* b, int64_t ldb, int64_t k0, int64_t k1,
                     __m512 acc[M][V]) {
  constexpr int kLines = static_cast<int>(sizeof(T)) * 16 * V / 64;
  for (int64_t k = k0; k < k1; ++k) {
    // a prefetch past the end of B is harmless (no fault) and rare (the last tiles only)
    const char* ahead = reinterpret_cast<const char*>(b + k * ldb + kPrefetch * 16 * V);
    for (int l = 0; l < kLines; ++l) _mm_prefetch(ahead + 64 * l, _MM_HINT_T0);
    __m512 w[V];
    LoadTile<V>(b + k * ldb, w);
    for (int m = 0; m < M; ++m) {
      const __m512 x = _mm512_set1_ps(a[m * lda + k]);
      for (int j = 0; j < V; ++j) acc[m][j] = _mm512_fmadd_ps(x, w[j], acc[m][j]);
    }
  }
}

// Columns [n0, n1) of C (a multiple of 16 V wide) for M rows of A.
template <typename T, int M, int V>
void Rows(const float* a, int64_t lda, const T* b, int64_t ldb, float* c, int64_t ldc,
          int64_t k, int64_t n0, int64_t n1) {
  for (int64_t k0 = 0; k0 < k; k0 += kRowBlock) {
    const int64_t k1 = std::min(k, k0 + kRowBlock);
    for (int64_t n = n0; n < n1; n += 16 * V) {
      __m512 acc[M][V];
      for (int m = 0; m < M; ++m)
        for (int j = 0; j < V; ++j)
          acc[m][j] = k0 == 0 ? _mm512_setzero_ps() : _mm512_loadu_ps(c + m * ldc + n + 16 * j);
      TileRows<T, M, V>(a, lda, b + n, ldb, k0, k1, acc);
      for (int m = 0; m < M; ++m)
        for (int j = 0; j < V; ++j) _mm512_storeu_ps(c + m * ldc + n + 16 * j, acc[m][j]);
    }
  }
}

// Columns [0, n / 64 * 64) of C for m <= 8 rows of A: 128-column tiles where the rows allow,
// the rest in 64-column tiles.
template <typename T, int M>
void RowsTiled(const float* a, int64_t lda, const T* b, int64_t ldb, float* c, int64_t ldc, int64_t k,
               int64_t n) {
  int64_t wide = 0;
  if constexpr (M <= kWideRows) {
    wide = n / 128 * 128;
    Rows<T, M, 8>(a, lda, b, ldb, c, ldc, k, 0, wide);
  }
  const int64_t full = n / 64 * 64;
  if (full > wide) Rows<T, M, 4>(a, lda, b, ldb, c, ldc, k, wide, full);
}

template <typename T>
void RowsAnyM(int m, const float* a, int64_t lda, const T* b, int64_t ldb, float* c, int64_t ldc,
              int64_t k, int64_t n) {
  switch (m) {
    case 1: return RowsTiled<T, 1>(a, lda, b, ldb, c, ldc, k, n);
    case 2: return RowsTiled<T, 2>(a, lda, b, ldb, c, ldc, k, n);
    case 3: return RowsTiled<T, 3>(a, lda, b, ldb, c, ldc, k, n);
    case 4: return RowsTiled<T, 4>(a, lda, b, ldb, c, ldc, k, n);
    case 5: return RowsTiled<T, 5>(a, lda, b, ldb, c, ldc, k, n);
    case 6: return RowsTiled<T, 6>(a, lda, b, ldb, c, ldc, k, n);
    case 7: return RowsTiled<T, 7>(a, lda, b, ldb, c, ldc, k, n);
    default: return RowsTiled<T, 8>(a, lda, b, ldb, c, ldc, k, n);
  }
}

// bf16 tiles were summed in (even, odd) order per 32 columns: put them back in column order.
void Interleave(float* c, int64_t n0, int64_t n1) {
  const __m512i lo = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  const __m512i hi = _mm512_set_epi32(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8);
  for (int64_t n = n0; n < n1; n += 32) {
    const __m512 even = _mm512_loadu_ps(c + n), odd = _mm512_loadu_ps(c + n + 16);
    _mm512_storeu_ps(c + n, _mm512_permutex2var_ps(even, lo, odd));
    _mm512_storeu_ps(c + n + 16, _mm512_permutex2var_ps(even, hi, odd));
  }
}

template <typename T>
void Gemv(const T* a, const T* b, float* c, int64_t m, int64_t k, int64_t n) {
  // A widened to fp32 once (M x K: a few KB), so the inner loop broadcasts fp32 scalars.
  std::vector<float> a32(static_cast<size_t>(m * k));
  for (int64_t i = 0; i < m * k; ++i) a32[i] = ToF32(a[i]);
  const int64_t full = n / 64 * 64;
  janusflow_pool::Pool& pool = janusflow_pool::Pool::Get();
  const int threads = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(pool.size(), k / kRowBlock)));
  std::vector<float> part(static_cast<size_t>((threads - 1) * m * n));
  pool.Run(threads, [&](int t, int nt) {
    const int64_t k0 = k * t / nt, k1 = k * (t + 1) / nt;
    float* out = t == 0 ? c : part.data() + (t - 1) * m * n;
    for (int64_t r = 0; r < m; r += kMaxRows) {
      const int rows = static_cast<int>(std::min(kMaxRows, m - r));
      RowsAnyM<T>(rows, a32.data() + r * k + k0, k, b + k0 * n, n, out + r * n, n, k1 - k0, n);
    }
  });
  // each thread adds the partials up over its share of the columns (32-aligned for bf16)
  pool.Run(threads, [&](int t, int nt) {
    const int64_t c0 = full * t / nt / 32 * 32, c1 = t + 1 == nt ? full : full * (t + 1) / nt / 32 * 32;
    for (int64_t r = 0; r < m; ++r) {
      for (int u = 0; u + 1 < nt; ++u) {
        const float* p = part.data() + u * m * n + r * n;
        for (int64_t j = c0; j < c1; ++j) c[r * n + j] += p[j];
      }
      if (sizeof(T) == 2) Interleave(c + r * n, c0, c1);
    }
  });
  // The last N % 64 columns, plainly.
  for (int64_t r = 0; r < m; ++r)
    for (int64_t j = full; j < n; ++j) {
      float s = 0.f;
      for (int64_t i = 0; i < k; ++i) s += a32[r * k + i] * ToF32(b[i * n + j]);
      c[r * n + j] = s;
    }
}

ffi::Error GemvHandler(ffi::AnyBuffer a, ffi::AnyBuffer b, ffi::Result<ffi::Buffer<ffi::F32>> c) {
  return janusflow_product::Dispatch(
      "janusflow_gemv", false, a, b, c,
      [](const float* a, const float* b, float* c, int64_t m, int64_t k, int64_t n) { Gemv(a, b, c, m, k, n); },
      [](const uint16_t* a, const uint16_t* b, float* c, int64_t m, int64_t k, int64_t n) { Gemv(a, b, c, m, k, n); });
}

}  // namespace

// The CPU this was built for runs it (the loader checks the flags first: cpu_gemv.py).
extern "C" int JanusflowGemvSupported() {
  return janusflow_bf16::HasAvx512FBw();
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(JanusflowGemv, GemvHandler,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
