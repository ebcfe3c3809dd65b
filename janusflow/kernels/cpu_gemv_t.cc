// XLA FFI handler: C = A @ Bt^T for a few rows of A (M <= 8: one decoding step, with or without
// its CFG row) against weights stored transposed, Bt (N, K) row-major, i.e. torch's (out, in).
// A and Bt are both fp32 or both bf16; C (M, N) is fp32 (exact bf16 x bf16 products, fp32 sums).
//
// Why a second layout beside cpu_gemv.cc's (K, N): here every output is one dot product over a
// contiguous row of Bt, so a thread streams a few long rows at a time, keeps its sums in
// registers for the whole row and writes each output once: no partial sums in memory and no
// second pass to add them up across threads. At Janus-Pro-1B's widths (a token's 2.5 GB of bf16
// weights, 2 rows) that streams 1.13-1.23x faster than the (K, N) kernel on this machine (1.05x
// on the whole AR loop; experiments/janus_pro_speed.md); the decoders keep their weights this
// way (sample/layout.py).
//
// Threads (thread_pool.h) own contiguous ranges of Bt's rows and take R of them at a time. bf16
// uses AVX512-BF16's dot product instruction where the CPU has it (each pair of products exact
// in fp32 and added in fp32, denormal inputs read as zero), else widens to fp32 in registers.
#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "bf16.h"
#include "product_ffi.h"
#include "thread_pool.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int kPrefetchBytes = 512;  // ahead in each streamed row

// R rows of Bt at once: the M x R sums plus M rows of A and one vector of Bt fit the 32 registers.
template <int M>
constexpr int RowsAtOnce() {
  return M <= 4 ? 4 : 2;
}

// Loads of a row's next 16 (fp32) or 32 (bf16) values; the last, partial ones masked to zero.
template <bool kFull>
inline __m512 Load(const float* p, int64_t left) {
  if (kFull) return _mm512_loadu_ps(p);
  return _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << left) - 1), p);
}

template <bool kFull>
inline __m512i Load(const uint16_t* p, int64_t left) {
  if (kFull) return _mm512_loadu_si512(reinterpret_cast<const void*>(p));
  return _mm512_maskz_loadu_epi16(static_cast<__mmask32>((1ull << left) - 1), p);
}

// bf16 without the dot instruction: each 32-bit lane holds two bf16 values; the even one is
// widened by a left shift, the odd one by masking the low half.
inline __m512 Even(__m512i v) { return _mm512_castsi512_ps(_mm512_slli_epi32(v, 16)); }
inline __m512 Odd(__m512i v) { return _mm512_castsi512_ps(_mm512_and_si512(v, _mm512_set1_epi32(0xFFFF0000u))); }

enum class Path { kF32, kBf16Widen, kBf16Dot };

// acc[m][r] += a[m, i..) . bt[j + r, i..) over one vector's width (16 fp32 / 32 bf16 values):
// fp32, or bf16 widened to fp32.
template <Path P, int M, int R, bool kFull, typename T>
inline void Step(const T* a, const T* bt, int64_t k, int64_t j, int64_t i, __m512 acc[M][R]) {
  const int64_t left = k - i;
  if constexpr (P == Path::kF32) {
    __m512 x[M];
    for (int m = 0; m < M; ++m) x[m] = Load<kFull>(a + m * k + i, left);
    for (int r = 0; r < R; ++r) {
      const T* row = bt + (j + r) * k + i;
      _mm_prefetch(reinterpret_cast<const char*>(row) + kPrefetchBytes, _MM_HINT_T0);
      const __m512 w = Load<kFull>(row, left);
      for (int m = 0; m < M; ++m) acc[m][r] = _mm512_fmadd_ps(x[m], w, acc[m][r]);
    }
  } else {
    __m512i x[M];
    for (int m = 0; m < M; ++m) x[m] = Load<kFull>(a + m * k + i, left);
    for (int r = 0; r < R; ++r) {
      const T* row = bt + (j + r) * k + i;
      _mm_prefetch(reinterpret_cast<const char*>(row) + kPrefetchBytes, _MM_HINT_T0);
      const __m512i w = Load<kFull>(row, left);
      const __m512 we = Even(w), wo = Odd(w);
      for (int m = 0; m < M; ++m) {
        acc[m][r] = _mm512_fmadd_ps(Even(x[m]), we, acc[m][r]);
        acc[m][r] = _mm512_fmadd_ps(Odd(x[m]), wo, acc[m][r]);
      }
    }
  }
}

// The same for bf16 with the dot instruction (compiled for it alone: the other paths must run
// on CPUs without it).
template <int M, int R, bool kFull>
__attribute__((target("avx512bf16"))) inline void StepDot(const uint16_t* a, const uint16_t* bt, int64_t k,
                                                          int64_t j, int64_t i, __m512 acc[M][R]) {
  const int64_t left = k - i;
  __m512bh x[M];
  for (int m = 0; m < M; ++m) x[m] = (__m512bh)Load<kFull>(a + m * k + i, left);
  for (int r = 0; r < R; ++r) {
    const uint16_t* row = bt + (j + r) * k + i;
    _mm_prefetch(reinterpret_cast<const char*>(row) + kPrefetchBytes, _MM_HINT_T0);
    const __m512bh w = (__m512bh)Load<kFull>(row, left);
    for (int m = 0; m < M; ++m) acc[m][r] = _mm512_dpbf16_ps(acc[m][r], w, x[m]);
  }
}

template <int M, int R>
inline void Store(__m512 acc[M][R], float* c, int64_t ldc, int64_t j) {
  for (int m = 0; m < M; ++m)
    for (int r = 0; r < R; ++r) c[m * ldc + j + r] = _mm512_reduce_add_ps(acc[m][r]);
}

// c[m, j..j+R) = a[m] . bt[j..j+R) for the M rows of a.
template <Path P, int M, int R, typename T>
void Dots(const T* a, const T* bt, int64_t k, float* c, int64_t ldc, int64_t j) {
  constexpr int64_t kWidth = 64 / sizeof(T);
  __m512 acc[M][R];
  for (int m = 0; m < M; ++m)
    for (int r = 0; r < R; ++r) acc[m][r] = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + kWidth <= k; i += kWidth) Step<P, M, R, true>(a, bt, k, j, i, acc);
  if (i < k) Step<P, M, R, false>(a, bt, k, j, i, acc);
  Store<M, R>(acc, c, ldc, j);
}

template <int M, int R>
__attribute__((target("avx512bf16"))) void DotsDot(const uint16_t* a, const uint16_t* bt, int64_t k, float* c,
                                                   int64_t ldc, int64_t j) {
  __m512 acc[M][R];
  for (int m = 0; m < M; ++m)
    for (int r = 0; r < R; ++r) acc[m][r] = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= k; i += 32) StepDot<M, R, true>(a, bt, k, j, i, acc);
  if (i < k) StepDot<M, R, false>(a, bt, k, j, i, acc);
  Store<M, R>(acc, c, ldc, j);
}

template <Path P, int M, int R, typename T>
inline void AnyDots(const T* a, const T* bt, int64_t k, float* c, int64_t ldc, int64_t j) {
  if constexpr (P == Path::kBf16Dot)
    DotsDot<M, R>(a, bt, k, c, ldc, j);
  else
    Dots<P, M, R>(a, bt, k, c, ldc, j);
}

// Outputs [n0, n1) for M rows of A: R rows of Bt at a time, the remainder one by one.
template <Path P, int M, typename T>
void Range(const T* a, const T* bt, float* c, int64_t k, int64_t n, int64_t n0, int64_t n1) {
  constexpr int R = RowsAtOnce<M>();
  int64_t j = n0;
  for (; j + R <= n1; j += R) AnyDots<P, M, R>(a, bt, k, c, n, j);
  for (; j < n1; ++j) AnyDots<P, M, 1>(a, bt, k, c, n, j);
}

template <Path P, typename T>
void RangeAnyM(int m, const T* a, const T* bt, float* c, int64_t k, int64_t n, int64_t n0, int64_t n1) {
  switch (m) {
    case 1: return Range<P, 1>(a, bt, c, k, n, n0, n1);
    case 2: return Range<P, 2>(a, bt, c, k, n, n0, n1);
    case 3: return Range<P, 3>(a, bt, c, k, n, n0, n1);
    case 4: return Range<P, 4>(a, bt, c, k, n, n0, n1);
    case 5: return Range<P, 5>(a, bt, c, k, n, n0, n1);
    case 6: return Range<P, 6>(a, bt, c, k, n, n0, n1);
    case 7: return Range<P, 7>(a, bt, c, k, n, n0, n1);
    default: return Range<P, 8>(a, bt, c, k, n, n0, n1);
  }
}

constexpr int64_t kMaxRows = 8;

template <Path P, typename T>
void GemvT(const T* a, const T* bt, float* c, int64_t m, int64_t k, int64_t n) {
  janusflow_pool::Pool& pool = janusflow_pool::Pool::Get();
  // a thread's share: whole groups of 4 rows of Bt, at least 16 of them
  const int threads = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(pool.size(), n / 64)));
  pool.Run(threads, [&](int t, int nt) {
    const int64_t n0 = n * t / nt / 4 * 4, n1 = t + 1 == nt ? n : n * (t + 1) / nt / 4 * 4;
    for (int64_t r = 0; r < m; r += kMaxRows) {
      const int rows = static_cast<int>(std::min(kMaxRows, m - r));
      RangeAnyM<P>(rows, a + r * k, bt, c + r * n, k, n, n0, n1);
    }
  });
}

ffi::Error GemvTHandler(ffi::AnyBuffer a, ffi::AnyBuffer bt, ffi::Result<ffi::Buffer<ffi::F32>> c) {
  return janusflow_product::Dispatch(
      "janusflow_gemv_t", true, a, bt, c,
      [](const float* a, const float* bt, float* c, int64_t m, int64_t k, int64_t n) {
        GemvT<Path::kF32>(a, bt, c, m, k, n);
      },
      [](const uint16_t* a, const uint16_t* bt, float* c, int64_t m, int64_t k, int64_t n) {
        if (janusflow_bf16::HasDotInstruction())
          GemvT<Path::kBf16Dot>(a, bt, c, m, k, n);
        else
          GemvT<Path::kBf16Widen>(a, bt, c, m, k, n);
      });
}

}  // namespace

extern "C" int JanusflowGemvTSupported() {
  return janusflow_bf16::HasAvx512FBw();
}

// Which bf16 path this CPU takes (tests and benchmarks report it).
extern "C" int JanusflowGemvTBf16Dot() { return janusflow_bf16::HasDotInstruction(); }

XLA_FFI_DEFINE_HANDLER_SYMBOL(JanusflowGemvT, GemvTHandler,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
