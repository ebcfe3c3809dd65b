// XLA FFI handler: attention of one query position over a KV cache (a decoding step), with
// AVX-512. q (B, H, hd), k and v (B, S, K, hd) with H % K == 0, valid (B, S) bool (false:
// masked), out (B, H, hd); q, k, v, out all fp32 or all bf16; hd a multiple of 16.
//
// The same arithmetic as layers.dot_product_attention: fp32 logits scaled by 1/sqrt(hd), masked
// positions at the lowest fp32 value, an fp32 softmax, the probabilities rounded to the values'
// dtype, fp32 sums, the result rounded to the values' dtype.
//
// Why: XLA:CPU runs this step as batched dots over (B, K) whose batch layout is not the cache's,
// so it copies the whole cache into a transposed buffer twice per layer and token and then
// runs 2 x B x K tiny products; at a 600-position cache that cost more than the layer's weights
// (experiments/janus_pro_speed.md). Here each (row, key/value head) pair reads its keys and
// values once. Built on first use by cpu_decode_attention.py.
#include <immintrin.h>
#include <omp.h>

#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

inline __m512 Load16(const float* p) { return _mm512_loadu_ps(p); }

inline __m512 Load16(const uint16_t* p) {
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

// fp32 -> bf16, round to nearest even (the rounding of XLA's convert); NaN stays NaN.
inline uint16_t ToBf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

inline float FromBf16(uint16_t h) {
  const uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

inline float RoundTo(float f, float*) { return f; }
inline float RoundTo(float f, uint16_t*) { return FromBf16(ToBf16(f)); }
inline void Store(float* p, float f) { *p = f; }
inline void Store(uint16_t* p, float f) { *p = ToBf16(f); }

template <typename T>
void Attend(const T* q, const T* k, const T* v, const bool* valid, T* out, int64_t b_, int64_t h_,
            int64_t s_, int64_t kv, int64_t hd) {
  const int64_t g_ = h_ / kv, chunks = hd / 16;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
#pragma omp parallel
  {
    std::vector<float> p(static_cast<size_t>(s_));
    std::vector<__m512> acc(static_cast<size_t>(chunks)), qv(static_cast<size_t>(chunks));
#pragma omp for collapse(2) schedule(static)
    for (int64_t b = 0; b < b_; ++b)
      for (int64_t head = 0; head < h_; ++head) {
        const int64_t kh = head / g_;
        const T* qrow = q + (b * h_ + head) * hd;
        for (int64_t c = 0; c < chunks; ++c) qv[c] = Load16(qrow + 16 * c);
        const T* kbase = k + (b * s_ * kv + kh) * hd;
        const T* vbase = v + (b * s_ * kv + kh) * hd;
        const bool* ok = valid + b * s_;
        float top = -FLT_MAX;
        for (int64_t s = 0; s < s_; ++s) {
          float logit = -FLT_MAX;
          if (ok[s]) {
            const T* krow = kbase + s * kv * hd;
            __m512 sum = _mm512_mul_ps(qv[0], Load16(krow));
            for (int64_t c = 1; c < chunks; ++c) sum = _mm512_fmadd_ps(qv[c], Load16(krow + 16 * c), sum);
            logit = _mm512_reduce_add_ps(sum) * scale;
          }
          p[s] = logit;
          top = logit > top ? logit : top;
        }
        float total = 0.f;
        for (int64_t s = 0; s < s_; ++s) total += (p[s] = std::exp(p[s] - top));
        const float inv = 1.0f / total;
        for (int64_t c = 0; c < chunks; ++c) acc[c] = _mm512_setzero_ps();
        for (int64_t s = 0; s < s_; ++s) {
          const float w = RoundTo(p[s] * inv, static_cast<T*>(nullptr));
          if (w == 0.f) continue;
          const __m512 wv = _mm512_set1_ps(w);
          const T* vrow = vbase + s * kv * hd;
          for (int64_t c = 0; c < chunks; ++c) acc[c] = _mm512_fmadd_ps(wv, Load16(vrow + 16 * c), acc[c]);
        }
        T* orow = out + (b * h_ + head) * hd;
        alignas(64) float tmp[16];
        for (int64_t c = 0; c < chunks; ++c) {
          _mm512_store_ps(tmp, acc[c]);
          for (int j = 0; j < 16; ++j) Store(orow + 16 * c + j, tmp[j]);
        }
      }
  }
}

ffi::Error Handler(ffi::AnyBuffer q, ffi::AnyBuffer k, ffi::AnyBuffer v, ffi::Buffer<ffi::PRED> valid,
                   ffi::Result<ffi::AnyBuffer> out) {
  auto dq = q.dimensions(), dk = k.dimensions(), dv = v.dimensions(), dm = valid.dimensions();
  if (dq.size() != 3 || dk.size() != 4 || dv.size() != 4 || dm.size() != 2)
    return ffi::Error::InvalidArgument("janusflow_decode_attention: q (B,H,hd), k/v (B,S,K,hd), valid (B,S)");
  const int64_t b = dq[0], h = dq[1], hd = dq[2], s = dk[1], kv = dk[2];
  for (int i = 0; i < 4; ++i)
    if (dk[i] != dv[i]) return ffi::Error::InvalidArgument("janusflow_decode_attention: k and v shapes differ");
  if (dk[0] != b || dk[3] != hd || dm[0] != b || dm[1] != s || kv == 0 || h % kv != 0 || hd % 16 != 0)
    return ffi::Error::InvalidArgument("janusflow_decode_attention: shapes do not match");
  const auto t = q.element_type();
  if (k.element_type() != t || v.element_type() != t || out->element_type() != t)
    return ffi::Error::InvalidArgument("janusflow_decode_attention: q, k, v, out dtypes differ");
  if (b == 0 || h == 0 || s == 0) return ffi::Error::Success();
  const bool* ok = valid.typed_data();
  switch (t) {
    case ffi::DataType::F32:
      Attend(static_cast<const float*>(q.untyped_data()), static_cast<const float*>(k.untyped_data()),
             static_cast<const float*>(v.untyped_data()), ok, static_cast<float*>(out->untyped_data()), b, h, s,
             kv, hd);
      return ffi::Error::Success();
    case ffi::DataType::BF16:
      Attend(static_cast<const uint16_t*>(q.untyped_data()), static_cast<const uint16_t*>(k.untyped_data()),
             static_cast<const uint16_t*>(v.untyped_data()), ok, static_cast<uint16_t*>(out->untyped_data()), b,
             h, s, kv, hd);
      return ffi::Error::Success();
    default:
      return ffi::Error::InvalidArgument("janusflow_decode_attention: float32 or bfloat16 only");
  }
}

}  // namespace

extern "C" int JanusflowDecodeAttentionSupported() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(JanusflowDecodeAttention, Handler,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::Buffer<ffi::PRED>>()
                                  .Ret<ffi::AnyBuffer>());
