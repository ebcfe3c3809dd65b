// XLA FFI handler: C = A @ W^T for M rows of A (bf16; a decoding step or a prompt) against bf16 weights W (N, K)
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

#include "gemv_packed.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using janusflow_packed::Packed;

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
  const int32_t* ep = eptr.typed_data();
  const int32_t* ec = ecol.typed_data();
  if (const char* bad = janusflow_packed::CheckExceptions(ep, ec, ecol.element_count(), n, k)) return Invalid(bad);
  float* out = c->typed_data();
  if (m == 0 || n == 0) return ffi::Error::Success();
  if (k == 0) {
    std::fill(out, out + m * n, 0.f);
    return ffi::Error::Success();
  }
  const Packed p{lo.typed_data(), codes.typed_data(), table.typed_data(), ep, ec,
                 static_cast<const uint16_t*>(evals.untyped_data()), k};
  const uint16_t* x = static_cast<const uint16_t*>(a.untyped_data());
  janusflow_packed::GemvPacked(&p, &n, &out, 1, x, m);
  return ffi::Error::Success();
}

}  // namespace

extern "C" int JanusflowGemvPackedSupported() {
  return janusflow_bf16::HasAvx512FBw();
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
