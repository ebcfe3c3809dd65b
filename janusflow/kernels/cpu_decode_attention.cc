// XLA FFI handler: attention of one query position over a KV cache (a decoding step), with
// AVX-512. q (B, H, hd), k and v (B, S, K, hd) with H % K == 0, valid (B, S) bool (false:
// masked), out (B, H, hd); q, k, v, out all fp32 or all bf16; hd a multiple of 16.
//
// The same arithmetic as layers.dot_product_attention: fp32 logits scaled by 1/sqrt(hd), masked
// positions at the lowest fp32 value, an fp32 softmax (exp by a polynomial as accurate as libm),
// the probabilities rounded to the values' dtype, fp32 sums, the result rounded to that dtype.
//
// Why: XLA:CPU runs this step as batched dots over (B, K) whose batch layout is not the cache's,
// so it copies the whole cache into a transposed buffer twice per layer and token and then
// runs 2 x B x K tiny products; at a 600-position cache that cost more than the layer's weights
// (experiments/janus_pro_speed.md). Here a thread takes a row (or, with fewer rows than
// threads, a group of its heads) and walks the positions once for the logits and once for the
// values, each a forward stream through the cache: a per-head walk strides 4 KB between
// positions and ran at under half the speed. Built on first use (kernels/build.py).
#include <immintrin.h>

#include <cfloat>
#include <cmath>
#include <cstdint>
#include <vector>

#include "decode_attention.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using janusflow_attention::Attend;

namespace {

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
  return janusflow_bf16::HasAvx512FBw();
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(JanusflowDecodeAttention, Handler,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::Buffer<ffi::PRED>>()
                                  .Ret<ffi::AnyBuffer>());
