// XLA FFI handler: C = A @ W^T for a few rows of A (M <= 8, bf16) against bf16 weights W (N, K)
// kept (out, in) in a lossless 12-bit form (kernels/cpu_gemv_packed.py packs them):
//   lo    (N, K)    uint8: each weight's low byte (last exponent bit, 7 mantissa bits),
//   codes (N, K/2)  uint8: a 4-bit code per weight for its high byte (sign, 7 exponent bits),
//   table (16,)     uint8: the high byte of each code; code 15 = "exception": lo and table give 0,
//   eptr (N+1,) int32, ecol (E,) int32, evals (E,) bf16: each row's exceptions (column, weight).
// C (M, N) fp32: exact bf16 x bf16 products summed in fp32, as cpu_gemv_t.cc.
//
// Why: a decoding step at batch 1 reads every weight once for two multiply-adds, so it runs at
// the memory's speed; bf16 weights hold ~12 bits of information here (their high bytes take
// few values: a matrix's 15 most common cover all but ~2e-4 of Gaussian-like weights), so
// 12 bits per weight stream 25% fewer bytes and the decode costs a few register instructions
// per 64 weights (experiments/janus_pro_speed.md).
//
// Layout of 64 weights (a row's columns [64c, 64c + 64)): the 64 lo bytes and the 64 codes are
// stored in the order that AVX-512's per-lane byte interleave (unpacklo/unpackhi of lo with the
// looked-up high bytes) turns into the columns' natural order: unpacklo gives columns 0..31,
// unpackhi 32..63. Storage position p = 16 L + b holds column 8 L + b (b < 8) or 32 + 8 L + b - 8.
// Code byte b (0..31) holds position b's code in its low nibble and position 32 + b's in its high.
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "bf16.h"
#include "thread_pool.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int kPrefetchBytes = 512;  // ahead in each streamed row
constexpr int64_t kMaxRows = 8;

// JANUSFLOW_GEMV_WIDEN_BF16=1 takes the widening path on any CPU (tests of that path).
bool HasBf16Dot() {
  static const bool has = [] {
    const char* widen = std::getenv("JANUSFLOW_GEMV_WIDEN_BF16");
    if (widen && widen[0] == '1') return false;
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512bf16") != 0;
  }();
  return has;
}

struct Packed {
  const uint8_t* lo;
  const uint8_t* codes;
  const uint8_t* table;
  const int32_t* eptr;
  const int32_t* ecol;
  const uint16_t* evals;
  int64_t k;
};

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
void DotsWiden(const Packed& p, const uint16_t* a, float* c, int64_t n, int64_t j) {
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
void Range(const Packed& p, const uint16_t* a, float* c, int64_t n, int64_t n0, int64_t n1) {
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
void RangeAnyM(int m, const Packed& p, const uint16_t* a, float* c, int64_t n, int64_t n0, int64_t n1) {
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

template <bool kDot>
void GemvPacked(const Packed& p, const uint16_t* a, float* c, int64_t m, int64_t n) {
  janusflow_pool::Pool& pool = janusflow_pool::Pool::Get();
  // a thread's share: whole groups of 4 rows of W, at least 16 of them
  const int threads = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(pool.size(), n / 64)));
  pool.Run(threads, [&](int t, int nt) {
    const int64_t n0 = n * t / nt / 4 * 4, n1 = t + 1 == nt ? n : n * (t + 1) / nt / 4 * 4;
    for (int64_t r = 0; r < m; r += kMaxRows) {
      const int rows = static_cast<int>(std::min(kMaxRows, m - r));
      RangeAnyM<kDot>(rows, p, a + r * p.k, c + r * n, n, n0, n1);
    }
  });
}

ffi::Error Invalid(const std::string& what) { return ffi::Error::InvalidArgument("janusflow_gemv_packed: " + what); }

ffi::Error GemvPackedHandler(ffi::AnyBuffer a, ffi::Buffer<ffi::U8> lo, ffi::Buffer<ffi::U8> codes,
                             ffi::Buffer<ffi::U8> table, ffi::Buffer<ffi::S32> eptr, ffi::Buffer<ffi::S32> ecol,
                             ffi::AnyBuffer evals, ffi::Result<ffi::Buffer<ffi::F32>> c) {
  auto da = a.dimensions(), dl = lo.dimensions(), dc = c->dimensions(), dcd = codes.dimensions();
  if (da.size() != 2 || dl.size() != 2 || dc.size() != 2 || dcd.size() != 2) return Invalid("operands must be 2-D");
  if (a.element_type() != ffi::DataType::BF16 || evals.element_type() != ffi::DataType::BF16)
    return Invalid("x and the exceptions must be bfloat16");
  const int64_t m = da[0], k = da[1], n = dl[0];
  if (dl[1] != k || k % 64 || dcd[0] != n || dcd[1] != k / 2 || dc[0] != m || dc[1] != n)
    return Invalid("shapes do not match (or K is not a multiple of 64)");
  if (table.element_count() != 16 || eptr.element_count() != n + 1 || ecol.element_count() != evals.element_count())
    return Invalid("table, row pointers or exceptions have the wrong length");
  // the exception lists index x: checked (O(N + E), nothing beside the product's O(N K))
  const int32_t* ep = eptr.typed_data();
  const int32_t* ec = ecol.typed_data();
  const int64_t e = ecol.element_count();
  if (ep[0] != 0 || ep[n] != e) return Invalid("row pointers do not span the exceptions");
  for (int64_t j = 0; j < n; ++j)
    if (ep[j + 1] < ep[j]) return Invalid("row pointers decrease");
  for (int64_t i = 0; i < e; ++i)
    if (ec[i] < 0 || ec[i] >= k) return Invalid("an exception's column is out of range");
  float* out = c->typed_data();
  if (m == 0 || n == 0) return ffi::Error::Success();
  if (k == 0) {
    std::fill(out, out + m * n, 0.f);
    return ffi::Error::Success();
  }
  const Packed p{lo.typed_data(), codes.typed_data(), table.typed_data(), ep, ec,
                 static_cast<const uint16_t*>(evals.untyped_data()), k};
  const uint16_t* x = static_cast<const uint16_t*>(a.untyped_data());
  if (HasBf16Dot())
    GemvPacked<true>(p, x, out, m, n);
  else
    GemvPacked<false>(p, x, out, m, n);
  return ffi::Error::Success();
}

}  // namespace

extern "C" int JanusflowGemvPackedSupported() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(JanusflowGemvPacked, GemvPackedHandler,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::Buffer<ffi::U8>>()
                                  .Arg<ffi::Buffer<ffi::U8>>()
                                  .Arg<ffi::Buffer<ffi::U8>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
