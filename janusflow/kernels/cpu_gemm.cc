// XLA FFI handler: C = op(A) @ op(B) in fp32 through Intel MKL's CBLAS (AMX / AVX-512 kernels).
// Built on first use by cpu_gemm.py (no build step at install). A and B are both fp32
// (cblas_sgemm) or both bf16 (cblas_gemm_bf16bf16f32: bf16 products, fp32 sums); C is fp32,
// which is what layers.ACCUMULATE asks of every product. Row-major 2-D operands; the transpose
// flags let the backward pass contract over either axis without materialising a transpose.
#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <string>

#include <mkl.h>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// MKL's default OpenMP runtime is Intel's libiomp5; GNU's libgomp is the one every Linux
// system has and the one torch uses, so one process does not end up with two thread pools.
// MKL_THREADING_LAYER in the environment still wins.
void ChooseThreadingOnce() {
  static std::once_flag once;
  std::call_once(once, [] {
    if (std::getenv("MKL_THREADING_LAYER") == nullptr) mkl_set_threading_layer(MKL_THREADING_GNU);
  });
}

ffi::Error Gemm(ffi::AnyBuffer a, ffi::AnyBuffer b, ffi::Result<ffi::Buffer<ffi::F32>> c,
                bool trans_a, bool trans_b) {
  auto da = a.dimensions(), db = b.dimensions(), dc = c->dimensions();
  if (da.size() != 2 || db.size() != 2 || dc.size() != 2)
    return ffi::Error::InvalidArgument("janusflow_gemm: operands must be 2-D");
  const int64_t m = trans_a ? da[1] : da[0], k = trans_a ? da[0] : da[1];
  const int64_t kb = trans_b ? db[1] : db[0], n = trans_b ? db[0] : db[1];
  if (k != kb || dc[0] != m || dc[1] != n)
    return ffi::Error::InvalidArgument("janusflow_gemm: shapes do not match");
  if (a.element_type() != b.element_type())
    return ffi::Error::InvalidArgument("janusflow_gemm: operand dtypes differ");
  if (m == 0 || n == 0) return ffi::Error::Success();
  float* out = c->typed_data();
  if (k == 0) {
    for (int64_t i = 0; i < m * n; ++i) out[i] = 0.f;
    return ffi::Error::Success();
  }
  ChooseThreadingOnce();
  const CBLAS_TRANSPOSE ta = trans_a ? CblasTrans : CblasNoTrans;
  const CBLAS_TRANSPOSE tb = trans_b ? CblasTrans : CblasNoTrans;
  const MKL_INT lda = da[1], ldb = db[1], ldc = n;
  switch (a.element_type()) {
    case ffi::DataType::F32:
      cblas_sgemm(CblasRowMajor, ta, tb, m, n, k, 1.f, static_cast<const float*>(a.untyped_data()),
                  lda, static_cast<const float*>(b.untyped_data()), ldb, 0.f, out, ldc);
      return ffi::Error::Success();
    case ffi::DataType::BF16:
      cblas_gemm_bf16bf16f32(CblasRowMajor, ta, tb, m, n, k, 1.f,
                             static_cast<const MKL_BF16*>(a.untyped_data()), lda,
                             static_cast<const MKL_BF16*>(b.untyped_data()), ldb, 0.f, out, ldc);
      return ffi::Error::Success();
    default:
      return ffi::Error::InvalidArgument("janusflow_gemm: operands must be float32 or bfloat16");
  }
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(JanusflowGemm, Gemm,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<bool>("trans_a")
                                  .Attr<bool>("trans_b"));
