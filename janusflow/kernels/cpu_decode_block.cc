// XLA FFI handler: one LLaMA decoder block (models/llm.Block) for one new position of B rows, in
// bf16, with the block's seven weights packed in 12 bits (kernels/cpu_gemv_packed.py):
//   x = x + o(attention(rope(q(n1(x))), cache with rope(k(n1(x))), v(n1(x)) written at start))
//   x = x + down(silu(gate(n2(x))) * up(n2(x)))
// Operands: x (B, D) bf16; the norms' scales n1, n2 (D,) bf16; cos, sin (B, hd) fp32 (the rotary
// angles of the new position); valid (B, S) bool (the positions the new one attends to); start
// () int32 (where it is written); the cache k, v (B, S, K, hd) bf16; then the packed q, k, v,
// o, gate, up, down, six buffers each (lo, codes, table, eptr, ecol, evals). Results: x (B, D)
// and the cache k, v (aliased to the operands, so written in place). Attributes: eps, heads.
//
// The arithmetic and roundings are those XLA:CPU compiles one bf16 block to: norms rounded to
// bf16 then scaled in bf16, each product's fp32 sum rounded to bf16 (cpu_gemv_packed.cc), rope
// in fp32, attention as cpu_decode_attention.cc, silu with each of its ops rounded to bf16, and
// (XLA's excess precision) the sum after attention kept in fp32 for the second norm, rounded
// only for the last residual. Not the same: the norms' mean of squares is summed in double (XLA:
// fp32, in its own order), exp is a polynomial (cpu_decode_attention.cc's, ~2e-7 relative), and
// the block's output is rounded to bf16 where XLA, across blocks, may keep the residual stream
// in fp32. One block equals XLA's bit for bit on the test block; after several blocks and steps
// they are ~1% apart (tests/test_cpu_decode_block.py).
//
// Why: a decoding step at batch 1 is the weight stream plus, per block, ~20 small XLA fusions
// and 8 kernel calls whose hand-offs kept the kernels' threads waiting (a quarter of a token;
// experiments/janus_pro_speed.md). Here a block is one call: the small work runs between the
// products on the calling thread, in microseconds.
#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "decode_attention.h"
#include "gemv_packed.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using janusflow_bf16::FromBf16;
using janusflow_bf16::ToBf16;

namespace {

constexpr int kWeights = 7, kParts = 6;  // q, k, v, o, gate, up, down; lo, codes, table, eptr, ecol, evals
const char* const kNames[kWeights] = {"q", "k", "v", "o", "gate", "up", "down"};

ffi::Error Invalid(const std::string& what) { return ffi::Error::InvalidArgument("janusflow_decode_block: " + what); }

inline float R(float f) { return FromBf16(ToBf16(f)); }  // rounded to bf16, as XLA's convert

// y = n(x) for B rows of D (x bf16 or fp32): fp32 mean of squares, x * rsqrt rounded to bf16,
// then times the bf16 scale.
template <typename T>
void RmsNorm(const T* x, const uint16_t* scale, float eps, uint16_t* y, int64_t b, int64_t d) {
  for (int64_t r = 0; r < b; ++r) {
    const T* xr = x + r * d;
    double ss = 0;
    for (int64_t i = 0; i < d; ++i) {
      const double v = janusflow_bf16::ToF32(xr[i]);
      ss += v * v;
    }
    const float inv = 1.0f / std::sqrt(static_cast<float>(ss / d) + eps);
    for (int64_t i = 0; i < d; ++i) y[r * d + i] = ToBf16(FromBf16(scale[i]) * R(janusflow_bf16::ToF32(xr[i]) * inv));
  }
}

// rope of one head (hd values, bf16 after its product) in the "rotate_half" layout.
void Rope(const float* in, const float* cos, const float* sin, int64_t hd, uint16_t* out) {
  const int64_t half = hd / 2;
  for (int64_t i = 0; i < half; ++i) {
    const float a = R(in[i]), b = R(in[i + half]);
    out[i] = ToBf16(a * cos[i] + -b * sin[i]);
    out[i + half] = ToBf16(b * cos[i + half] + a * sin[i + half]);
  }
}

// h = silu(g) * u for n values (a multiple of 16: the down weight's input width is one of 64),
// 16 lanes at a time, with the roundings of XLA:CPU's bf16 expansion: every op of
// g * (1 / (1 + exp(-g))) rounded to bf16. (11k exps per block at Janus-Pro-1B's width; with a
// scalar loop the handler's own work took 3.3% of a token's CPU profile.)
void SiluTimes(const float* fg, const float* fu, uint16_t* h, int64_t n) {
  const __m512 one = _mm512_set1_ps(1.f);
  auto r = [](__m512 x) { return janusflow_attention::RoundLanes(x, static_cast<uint16_t*>(nullptr)); };
  for (int64_t i = 0; i < n; i += 16) {
    const __m512 g = r(_mm512_loadu_ps(fg + i));
    const __m512 e = r(janusflow_attention::Exp16(_mm512_sub_ps(_mm512_setzero_ps(), g)));
    const __m512 sig = r(_mm512_div_ps(one, r(_mm512_add_ps(one, e))));
    const __m512 prod = r(_mm512_mul_ps(r(_mm512_mul_ps(g, sig)), r(_mm512_loadu_ps(fu + i))));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(h + i),
                        _mm512_cvtepi32_epi16(_mm512_srli_epi32(_mm512_castps_si512(prod), 16)));
  }
}

ffi::Error Block(ffi::AnyBuffer x, ffi::AnyBuffer n1, ffi::AnyBuffer n2, ffi::Buffer<ffi::F32> cos,
                 ffi::Buffer<ffi::F32> sin, ffi::Buffer<ffi::PRED> valid, ffi::Buffer<ffi::S32> start,
                 ffi::AnyBuffer ck, ffi::AnyBuffer cv, ffi::RemainingArgs weights, ffi::Result<ffi::AnyBuffer> out,
                 ffi::Result<ffi::AnyBuffer> ck_out, ffi::Result<ffi::AnyBuffer> cv_out, float eps, int64_t heads) {
  for (const ffi::AnyBuffer* a : {&x, &n1, &n2, &ck, &cv})
    if (a->element_type() != ffi::DataType::BF16) return Invalid("x, the norms and the cache must be bfloat16");
  for (auto* r : {&out, &ck_out, &cv_out})
    if ((*r)->element_type() != ffi::DataType::BF16) return Invalid("the results must be bfloat16");
  auto dx = x.dimensions(), dk = ck.dimensions(), dv = cv.dimensions(), dc = cos.dimensions();
  if (dx.size() != 2 || dk.size() != 4 || dv.size() != 4 || dc.size() != 2)
    return Invalid("x (B, D), cache (B, S, K, hd), cos (B, hd)");
  for (int i = 0; i < 4; ++i)
    if (dk[i] != dv[i]) return Invalid("the k and v caches' shapes differ");
  const int64_t b = dx[0], d = dx[1], s = dk[1], kv = dk[2], hd = dk[3];
  if (dk[0] != b || dc[0] != b || dc[1] != hd || sin.element_count() != b * hd || valid.element_count() != b * s ||
      n1.element_count() != d || n2.element_count() != d || out->element_count() != b * d ||
      ck_out->element_count() != ck.element_count() || cv_out->element_count() != ck.element_count() ||
      start.element_count() != 1)
    return Invalid("operand shapes do not match");
  // heads is an attribute: bounded before any product with it (the q weight's rows must then equal heads * hd)
  if (heads <= 0 || heads > (int64_t{1} << 20) || kv <= 0 || heads % kv || hd % 16)
    return Invalid("heads, key/value heads or head width");
  const int64_t pos = start.typed_data()[0];
  if (pos < 0 || pos >= s) return Invalid("start is outside the cache");
  if (weights.size() != kWeights * kParts) return Invalid("expected 7 packed weights of 6 buffers each");
  const int64_t f_in[kWeights] = {d, d, d, heads * hd, d, d, -1}, f_out[kWeights] = {heads * hd, kv * hd, kv * hd, d,
                                                                                      -1, -1, d};
  janusflow_packed::Packed w[kWeights];
  int64_t n[kWeights];
  for (int i = 0; i < kWeights; ++i) {
    std::vector<ffi::AnyBuffer> part;
    for (int j = 0; j < kParts; ++j) {
      auto got = weights.get<ffi::AnyBuffer>(i * kParts + j);
      if (got.has_error()) return Invalid(std::string("weight ") + kNames[i] + ": " + got.error().message());
      part.push_back(*got);
    }
    const std::string name = std::string("weight ") + kNames[i] + ": ";
    const ffi::DataType types[kParts] = {ffi::DataType::U8, ffi::DataType::U8, ffi::DataType::U8,
                                         ffi::DataType::S32, ffi::DataType::S32, ffi::DataType::BF16};
    for (int j = 0; j < kParts; ++j)
      if (part[j].element_type() != types[j]) return Invalid(name + "packed buffers of the wrong dtype");
    auto dl = part[0].dimensions();
    if (dl.size() != 2) return Invalid(name + "lo must be 2-D");
    n[i] = dl[0];
    const int64_t k = dl[1], e = part[4].element_count();
    if ((f_in[i] >= 0 && k != f_in[i]) || (f_out[i] >= 0 && n[i] != f_out[i]) || k % 64 || k == 0 ||
        part[1].element_count() != n[i] * k / 2 || part[2].element_count() != 16 ||
        part[3].element_count() != n[i] + 1 || part[5].element_count() != e)
      return Invalid(name + "shapes do not match the block (or its input width is not a multiple of 64)");
    const int32_t* ep = static_cast<const int32_t*>(part[3].untyped_data());
    const int32_t* ec = static_cast<const int32_t*>(part[4].untyped_data());
    if (const char* bad = janusflow_packed::CheckExceptions(ep, ec, e, n[i], k)) return Invalid(name + bad);
    w[i] = {static_cast<const uint8_t*>(part[0].untyped_data()), static_cast<const uint8_t*>(part[1].untyped_data()),
            static_cast<const uint8_t*>(part[2].untyped_data()), ep, ec,
            static_cast<const uint16_t*>(part[5].untyped_data()), k};
  }
  const int64_t f = n[4];
  if (n[5] != f || w[6].k != f) return Invalid("gate, up and down widths differ");
  if (b == 0) return ffi::Error::Success();

  uint16_t* kc = static_cast<uint16_t*>(ck_out->untyped_data());
  uint16_t* vc = static_cast<uint16_t*>(cv_out->untyped_data());
  const size_t cache_bytes = static_cast<size_t>(ck.element_count()) * 2;
  if (ck_out->untyped_data() != ck.untyped_data()) std::memcpy(kc, ck.untyped_data(), cache_bytes);
  if (cv_out->untyped_data() != cv.untyped_data()) std::memcpy(vc, cv.untyped_data(), cache_bytes);

  const uint16_t* xs = static_cast<const uint16_t*>(x.untyped_data());
  const uint16_t* s1 = static_cast<const uint16_t*>(n1.untyped_data());
  const uint16_t* s2 = static_cast<const uint16_t*>(n2.untyped_data());
  const float* cs = cos.typed_data();
  const float* sn = sin.typed_data();
  const int64_t qw = heads * hd, kw = kv * hd;
  std::vector<uint16_t> h(b * std::max(d, f)), q(b * qw), att(b * qw);
  std::vector<float> x1(b * d);
  std::vector<float> fq(b * qw), fk(b * kw), fv(b * kw), fo(b * d), fg(b * f), fu(b * f);

  // attention half
  RmsNorm(xs, s1, eps, h.data(), b, d);
  {
    float* outs[3] = {fq.data(), fk.data(), fv.data()};
    janusflow_packed::GemvPacked(w, n, outs, 3, h.data(), b);
  }
  for (int64_t r = 0; r < b; ++r) {
    const float* cr = cs + r * hd;
    const float* sr = sn + r * hd;
    for (int64_t j = 0; j < heads; ++j) Rope(fq.data() + r * qw + j * hd, cr, sr, hd, q.data() + r * qw + j * hd);
    uint16_t* krow = kc + ((r * s + pos) * kv) * hd;
    uint16_t* vrow = vc + ((r * s + pos) * kv) * hd;
    for (int64_t j = 0; j < kv; ++j) Rope(fk.data() + r * kw + j * hd, cr, sr, hd, krow + j * hd);
    for (int64_t i = 0; i < kw; ++i) vrow[i] = ToBf16(fv[r * kw + i]);
  }
  janusflow_attention::Attend<uint16_t>(q.data(), kc, vc, valid.typed_data(), att.data(), b, heads, s, kv, hd);
  {
    float* outs[1] = {fo.data()};
    janusflow_packed::GemvPacked(w + 3, n + 3, outs, 1, att.data(), b);
  }
  for (int64_t i = 0; i < b * d; ++i) x1[i] = FromBf16(xs[i]) + R(fo[i]);  // kept in fp32, as XLA does

  // MLP half
  RmsNorm(x1.data(), s2, eps, h.data(), b, d);
  {
    float* outs[2] = {fg.data(), fu.data()};
    janusflow_packed::GemvPacked(w + 4, n + 4, outs, 2, h.data(), b);
  }
  SiluTimes(fg.data(), fu.data(), h.data(), b * f);
  std::vector<float>& fd = fo;  // free after the residual above
  {
    float* outs[1] = {fd.data()};
    janusflow_packed::GemvPacked(w + 6, n + 6, outs, 1, h.data(), b);
  }
  uint16_t* y = static_cast<uint16_t*>(out->untyped_data());
  for (int64_t i = 0; i < b * d; ++i) y[i] = ToBf16(R(x1[i]) + R(fd[i]));
  return ffi::Error::Success();
}

}  // namespace

extern "C" int JanusflowDecodeBlockSupported() {
  return janusflow_bf16::HasAvx512FBw();
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(JanusflowDecodeBlock, Block,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::PRED>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .RemainingArgs()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<float>("eps")
                                  .Attr<int64_t>("heads"));
