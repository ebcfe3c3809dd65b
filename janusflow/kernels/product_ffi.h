// What both product handlers (cpu_gemv.cc: B (K, N); cpu_gemv_t.cc: B kept (N, K)) check and
// dispatch: 2-D operands of matching shapes and one dtype, empty cases, fp32 or bf16 (as uint16_t).
#pragma once
#include <algorithm>
#include <cstdint>
#include <string>

#include "xla/ffi/api/ffi.h"

namespace janusflow_product {

namespace ffi = xla::ffi;

// f32(a, b, c, m, k, n) or bf16(...) on C = A @ B (B transposed: A @ B^T), C (M, N) fp32.
template <typename F32, typename Bf16>
ffi::Error Dispatch(const char* name, bool transposed, ffi::AnyBuffer a, ffi::AnyBuffer b,
                    ffi::Result<ffi::Buffer<ffi::F32>>& c, F32 f32, Bf16 bf16) {
  auto da = a.dimensions(), db = b.dimensions(), dc = c->dimensions();
  if (da.size() != 2 || db.size() != 2 || dc.size() != 2)
    return ffi::Error::InvalidArgument(std::string(name) + ": operands must be 2-D");
  const int64_t m = da[0], k = da[1], n = transposed ? db[0] : db[1];
  if ((transposed ? db[1] : db[0]) != k || dc[0] != m || dc[1] != n)
    return ffi::Error::InvalidArgument(std::string(name) + ": shapes do not match");
  if (a.element_type() != b.element_type())
    return ffi::Error::InvalidArgument(std::string(name) + ": operand dtypes differ");
  float* out = c->typed_data();
  if (m == 0 || n == 0) return ffi::Error::Success();
  if (k == 0) {
    std::fill(out, out + m * n, 0.f);
    return ffi::Error::Success();
  }
  switch (a.element_type()) {
    case ffi::DataType::F32:
      f32(static_cast<const float*>(a.untyped_data()), static_cast<const float*>(b.untyped_data()), out, m, k, n);
      return ffi::Error::Success();
    case ffi::DataType::BF16:
      bf16(static_cast<const uint16_t*>(a.untyped_data()), static_cast<const uint16_t*>(b.untyped_data()), out, m,
           k, n);
      return ffi::Error::Success();
    default:
      return ffi::Error::InvalidArgument(std::string(name) + ": operands must be float32 or bfloat16");
  }
}

}  // namespace janusflow_product
