// The decode-attention arithmetic (one query position over a KV cache, AVX-512), shared by the
// attention handler (cpu_decode_attention.cc) and the fused decoder block (cpu_decode_block.cc).
#pragma once
#include <immintrin.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <vector>

#include "bf16.h"
#include "thread_pool.h"

namespace janusflow_attention {

using janusflow_bf16::FromBf16;
using janusflow_bf16::ToBf16;
using janusflow_bf16::ToF32;

inline __m512 Load16(const float* p) { return _mm512_loadu_ps(p); }

inline __m512 Load16(const uint16_t* p) {
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

inline void Store(float* p, float f) { *p = f; }
inline void Store(uint16_t* p, float f) { *p = ToBf16(f); }

// exp of 16 fp32 lanes: 2^n * p(r) with x = n ln2 + r, |r| <= ln2 / 2, a degree-6 polynomial
// (relative error ~2e-7, about libm's); scalef gives 0 for very negative x and keeps NaN.
inline __m512 Exp16(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-104.f));
  x = _mm512_min_ps(x, _mm512_set1_ps(88.7f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 y = _mm512_set1_ps(1.f / 720);
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.f / 120));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.f / 24));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.f / 6));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(0.5f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.f));
  return _mm512_scalef_ps(y, n);
}

// fp32 lanes rounded to bf16 (nearest even) and back: the probabilities as XLA rounds them.
inline __m512 RoundLanes(__m512 x, float*) { return x; }
inline __m512 RoundLanes(__m512 x, uint16_t*) {
  const __m512i u = _mm512_castps_si512(x);
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  const __m512i r = _mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)), odd);
  return _mm512_castsi512_ps(_mm512_and_si512(r, _mm512_set1_epi32(static_cast<int>(0xffff0000u))));
}

// One work item: row b and key/value heads [kh0, kh1) (their query heads: h0 = kh0 * g on).
// Positions are the outer loop, so the item reads its part of each cache row (all its heads
// side by side: for one item per row, the whole row) as one forward stream; the per-head
// logits (nh x S) and sums (nh x hd) stay in this thread's cache.
template <typename T>
void AttendItem(const T* q, const T* k, const T* v, const bool* ok, T* out, int64_t s_, int64_t kv,
                int64_t hd, int64_t g, int64_t kh0, int64_t kh1, float* qf, float* p, float* acc) {
  const int64_t nh = (kh1 - kh0) * g, chunks = hd / 16, h0 = kh0 * g, sp = (s_ + 15) / 16 * 16;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  for (int64_t i = 0; i < nh * hd; ++i) qf[i] = ToF32(q[h0 * hd + i]);
  for (int64_t s = 0; s < s_; ++s) {
    const T* krow = k + (s * kv + kh0) * hd;
    for (int64_t j = 0; j < nh; ++j) {
      float logit = -FLT_MAX;
      if (ok[s]) {
        const T* kh = krow + (j / g) * hd;
        const float* qh = qf + j * hd;
        __m512 sum = _mm512_mul_ps(_mm512_loadu_ps(qh), Load16(kh));
        for (int64_t c = 1; c < chunks; ++c) sum = _mm512_fmadd_ps(_mm512_loadu_ps(qh + 16 * c), Load16(kh + 16 * c), sum);
        logit = _mm512_reduce_add_ps(sum) * scale;
      }
      p[j * sp + s] = logit;
    }
  }
  bool any_valid = false;
  for (int64_t s = 0; s < s_ && !any_valid; ++s) any_valid = ok[s];
  for (int64_t j = 0; j < nh; ++j) {
    float* pj = p + j * sp;
    for (int64_t s = s_; s < sp; ++s) pj[s] = -FLT_MAX;  // padding lanes: out of the max, zeroed below
    __m512 top = _mm512_set1_ps(-FLT_MAX);
    for (int64_t s = 0; s < sp; s += 16) top = _mm512_max_ps(top, _mm512_loadu_ps(pj + s));
    const __m512 t = _mm512_set1_ps(_mm512_reduce_max_ps(top));
    __m512 total = _mm512_setzero_ps();
    for (int64_t s = 0; s < sp; s += 16) {
      __m512 e = Exp16(_mm512_sub_ps(_mm512_loadu_ps(pj + s), t));
      if (s + 16 > s_) e = _mm512_maskz_mov_ps(static_cast<__mmask16>((1u << (s_ - s)) - 1), e);
      _mm512_storeu_ps(pj + s, e);
      total = _mm512_add_ps(total, e);
    }
    const __m512 inv = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(total));
    for (int64_t s = 0; s < sp; s += 16)
      _mm512_storeu_ps(pj + s, RoundLanes(_mm512_mul_ps(_mm512_loadu_ps(pj + s), inv), static_cast<T*>(nullptr)));
  }
  for (int64_t i = 0; i < nh * hd; ++i) acc[i] = 0.f;
  for (int64_t s = 0; s < s_; ++s) {
    if (any_valid && !ok[s]) continue;  // weight exactly 0 for every head
    const T* vrow = v + (s * kv + kh0) * hd;
    for (int64_t j = 0; j < nh; ++j) {
      const __m512 w = _mm512_set1_ps(p[j * sp + s]);
      const T* vh = vrow + (j / g) * hd;
      float* a = acc + j * hd;
      for (int64_t c = 0; c < chunks; ++c)
        _mm512_storeu_ps(a + 16 * c, _mm512_fmadd_ps(w, Load16(vh + 16 * c), _mm512_loadu_ps(a + 16 * c)));
    }
  }
  for (int64_t i = 0; i < nh * hd; ++i) Store(out + h0 * hd + i, acc[i]);
}

template <typename T>
void Attend(const T* q, const T* k, const T* v, const bool* valid, T* out, int64_t b_, int64_t h_,
            int64_t s_, int64_t kv, int64_t hd) {
  const int64_t g = h_ / kv;
  // Split each row's key/value heads into the fewest groups that give every thread an item.
  janusflow_pool::Pool& pool = janusflow_pool::Pool::Get();
  const int64_t threads = pool.size();
  int64_t groups = 1;
  while (b_ * groups < threads && groups < kv) {
    ++groups;
    while (kv % groups) ++groups;
  }
  const int64_t per = kv / groups, sp = (s_ + 15) / 16 * 16, items = b_ * groups;
  pool.Run(static_cast<int>(std::min(items, threads)), [&](int t, int nt) {
    const int64_t nh = per * g;
    std::vector<float> qf(static_cast<size_t>(nh * hd)), acc(static_cast<size_t>(nh * hd)),
        p(static_cast<size_t>(nh * sp));
    for (int64_t item = items * t / nt; item < items * (t + 1) / nt; ++item) {
      const int64_t b = item / groups, kh0 = (item % groups) * per;
      AttendItem(q + b * h_ * hd, k + b * s_ * kv * hd, v + b * s_ * kv * hd, valid + b * s_, out + b * h_ * hd, s_,
                 kv, hd, g, kh0, kh0 + per, qf.data(), p.data(), acc.data());
    }
  });
}

}  // namespace janusflow_attention
