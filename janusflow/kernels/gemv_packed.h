// The packed-weight products (weights in the 12-bit form of cpu_gemv_packed.cc, whose header
// comment gives the layout), shared by its handler and the fused decoder block
// (cpu_decode_block.cc).
#pragma once
#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "bf16.h"
#include "thread_pool.h"

namespace janusflow_packed {

constexpr int kPrefetchBytes = 512;  // ahead in each streamed row
constexpr int64_t kMaxRows = 8;    // rows of a in registers at once
constexpr int64_t kTileRows = 64;  // rows of W (<= 200 KB packed at 2048 wide) reused from cache

struct Packed {
  const uint8_t* lo;
  const uint8_t* codes;
  const uint8_t* table;
  const int32_t* eptr;
  const int32_t* ecol;
  const uint16_t* evals;
  int64_t k;
};

// Why the exception lists of a (n, k) matrix cannot be used, or nullptr: they index x, so they
// are checked before any product (O(n + e), nothing beside the product's O(n k)).
inline const char* CheckExceptions(const int32_t* eptr, const int32_t* ecol, int64_t e, int64_t n, int64_t k) {
  if (eptr[0] != 0 || eptr[n] != e) return "row pointers do not span the exceptions";
  for (int64_t j = 0; j < n; ++j)
    if (eptr[j + 1] < eptr[j]) return "row pointers decrease";
  for (int64_t i = 0; i < e; ++i)
    if (ecol[i] < 0 || ecol[i] >= k) return "an exception's column is out of range";
  return nullptr;
}

// The 64 weights of row j at columns [i, i + 64) as two bf16 vectors: columns i..i+31, i+32..i+63.
inline void Decode(const Packed& p, int64_t j, int64_t i, __m512i table, __m512i& wa, __m512i& wb) {
  const uint8_t* lo = p.lo + j * p.k + i;
  const uint8_t* cd = p.codes + (j * p.k + i) / 2;
  _mm_prefetch(reinterpret_cast<const char*>(lo) + kPrefetchBytes, _MM_HINT_T0);
  _mm_prefetch(reinterpret_cast<const char*>(cd) + kPrefetchBytes / 2, _MM_HINT_T0);
  const __m512i low = _mm512_loadu_si512(reinterpret_cast<const void*>(lo));
  const __m256i c = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(cd));
  const __m256i m4 = _mm256_set1_epi8(0x0f);
  const __m512i nibbles = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_and_si256(c, m4)),
                                             _mm256_and_si256(_mm256_srli_epi16(c, 4), m4), 1);
  const __m512i high = _mm512_shuffle_epi8(table, nibbles);
  wa = _mm512_unpacklo_epi8(low, high);
  wb = _mm512_unpackhi_epi8(low, high);
}

inline __m512 Even(__m512i v) { return _mm512_castsi512_ps(_mm512_slli_epi32(v, 16)); }
inline __m512 Odd(__m512i v) { return _mm512_castsi512_ps(_mm512_and_si512(v, _mm512_set1_epi32(0xFFFF0000u))); }

// R rows at once: M x R sums, 2 M vectors of A and the decoded weights in the 32 registers.
template <int M>
constexpr int RowsAtOnce() {
  return M <= 2 ? 4 : M <= 4 ? 2 : 1;
}

// The exceptions of row j (weights packed as 0) added to its M sums, then stored.
template <int M>
inline void Finish(const Packed& p, const uint16_t* a, int64_t j, float sums[M], float* c, int64_t n) {
  using janusflow_bf16::FromBf16;
  for (int32_t e = p.eptr[j]; e < p.eptr[j + 1]; ++e) {
    const float w = FromBf16(p.evals[e]);
    for (int m = 0; m < M; ++m) sums[m] += w * FromBf16(a[m * p.k + p.ecol[e]]);
  }
  for (int m = 0; m < M; ++m) c[m * n + j] = sums[m];
}

template <int M, int R>
inline void Store(const Packed& p, const uint16_t* a, int64_t j, __m512 acc[M][R], float* c, int64_t n) {
  for (int r = 0; r < R; ++r) {
    float sums[M];
    for (int m = 0; m < M; ++m) sums[m] = _mm512_reduce_add_ps(acc[m][r]);
    Finish<M>(p, a, j + r, sums, c, n);
  }
}

// c[m, j..j+R) for the M rows of a, with AVX512-BF16's dot product instruction.
template <int M, int R>
__attribute__((target("avx512bf16"))) void DotsDot(const Packed& p, const uint16_t* a, float* c, int64_t n,
                                                   int64_t j) {
  const __m512i table = _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p.table)));
  __m512 acc[M][R];
  for (int m = 0; m < M; ++m)
    for (int r = 0; r < R; ++r) acc[m][r] = _mm512_setzero_ps();
  for (int64_t i = 0; i < p.k; i += 64) {
    __m512bh xa[M], xb[M];
    for (int m = 0; m < M; ++m) {
      xa[m] = (__m512bh)_mm512_loadu_si512(reinterpret_cast<const void*>(a + m * p.k + i));
      xb[m] = (__m512bh)_mm512_loadu_si512(reinterpret_cast<const void*>(a + m * p.k + i + 32));
    }
    for (int r = 0; r < R; ++r) {
      __m512i wa, wb;
      Decode(p, j + r, i, table, wa, wb);
      for (int m = 0; m < M; ++m) {
        acc[m][r] = _mm512_dpbf16_ps(acc[m][r], (__m512bh)wa, xa[m]);
        acc[m][r] = _mm512_dpbf16_ps(acc[m][r], (__m512bh)wb, xb[m]);
      }
    }
  }
  Store<M, R>(p, a, j, acc, c, n);
}

// The same without the instruction: bf16 widened to fp32 in registers.
template <int M, int R>
inline void DotsWiden(const Packed& p, const uint16_t* a, float* c, int64_t n, int64_t j) {
  const __m512i table = _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p.table)));
  __m512 acc[M][R];
  for (int m = 0; m < M; ++m)
    for (int r = 0; r < R; ++r) acc[m][r] = _mm512_setzero_ps();
  for (int64_t i = 0; i < p.k; i += 64) {
    for (int r = 0; r < R; ++r) {
      __m512i wa, wb;
      Decode(p, j + r, i, table, wa, wb);
      for (int m = 0; m < M; ++m) {
        const __m512i xa = _mm512_loadu_si512(reinterpret_cast<const void*>(a + m * p.k + i));
        const __m512i xb = _mm512_loadu_si512(reinterpret_cast<const void*>(a + m * p.k + i + 32));
        acc[m][r] = _mm512_fmadd_ps(Even(xa), Even(wa), acc[m][r]);
        acc[m][r] = _mm512_fmadd_ps(Odd(xa), Odd(wa), acc[m][r]);
        acc[m][r] = _mm512_fmadd_ps(Even(xb), Even(wb), acc[m][r]);
        acc[m][r] = _mm512_fmadd_ps(Odd(xb), Odd(wb), acc[m][r]);
      }
    }
  }
  Store<M, R>(p, a, j, acc, c, n);
}

// Outputs [n0, n1) for M rows of A: R rows of W at a time, the remainder one by one.
template <bool kDot, int M>
inline void Range(const Packed& p, const uint16_t* a, float* c, int64_t n, int64_t n0, int64_t n1) {
  constexpr int R = RowsAtOnce<M>();
  int64_t j = n0;
  if constexpr (kDot) {
    for (; j + R <= n1; j += R) DotsDot<M, R>(p, a, c, n, j);
    for (; j < n1; ++j) DotsDot<M, 1>(p, a, c, n, j);
  } else {
    for (; j + R <= n1; j += R) DotsWiden<M, R>(p, a, c, n, j);
    for (; j < n1; ++j) DotsWiden<M, 1>(p, a, c, n, j);
  }
}

template <bool kDot>
inline void RangeAnyM(int m, const Packed& p, const uint16_t* a, float* c, int64_t n, int64_t n0, int64_t n1) {
  switch (m) {
    case 1: return Range<kDot, 1>(p, a, c, n, n0, n1);
    case 2: return Range<kDot, 2>(p, a, c, n, n0, n1);
    case 3: return Range<kDot, 3>(p, a, c, n, n0, n1);
    case 4: return Range<kDot, 4>(p, a, c, n, n0, n1);
    case 5: return Range<kDot, 5>(p, a, c, n, n0, n1);
    case 6: return Range<kDot, 6>(p, a, c, n, n0, n1);
    case 7: return Range<kDot, 7>(p, a, c, n, n0, n1);
    default: return Range<kDot, 8>(p, a, c, n, n0, n1);
  }
}

// c[i] = a @ W_i^T (m rows each, W_i (n[i], k)) for `count` weights sharing a's k, in one hand-off
// to the threads: each takes its share of every W_i's rows.
template <bool kDot>
void GemvPackedMany(const Packed* ps, const int64_t* ns, float* const* cs, int count, const uint16_t* a, int64_t m) {
  janusflow_pool::Pool& pool = janusflow_pool::Pool::Get();
  int64_t total = 0;
  for (int i = 0; i < count; ++i) total += ns[i];
  // a thread's share of each W: whole groups of 4 rows; no second thread for under 128 rows in all
  const int threads = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(pool.size(), total / 64)));
  pool.Run(threads, [&](int t, int nt) {
    for (int i = 0; i < count; ++i) {
      const int64_t n = ns[i], n0 = n * t / nt / 4 * 4, n1 = t + 1 == nt ? n : n * (t + 1) / nt / 4 * 4;
      // more than kMaxRows rows of a (a prompt): each tile of W's rows, while in this core's
      // cache, against every kMaxRows rows of a in turn, so W streams from memory once
      const int64_t tile = m <= kMaxRows ? n1 - n0 : kTileRows;
      for (int64_t j0 = n0; j0 < n1; j0 += tile) {
        const int64_t j1 = std::min(n1, j0 + tile);
        for (int64_t r = 0; r < m; r += kMaxRows) {
          const int rows = static_cast<int>(std::min(kMaxRows, m - r));
          RangeAnyM<kDot>(rows, ps[i], a + r * ps[i].k, cs[i] + r * n, n, j0, j1);
        }
      }
    }
  });
}

inline void GemvPacked(const Packed* ps, const int64_t* ns, float* const* cs, int count, const uint16_t* a,
                       int64_t m) {
  if (janusflow_bf16::HasDotInstruction())
    GemvPackedMany<true>(ps, ns, cs, count, a, m);
  else
    GemvPackedMany<false>(ps, ns, cs, count, a, m);
}

}  // namespace janusflow_packed
