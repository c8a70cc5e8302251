// What a CUDA worker needs of libtorch that tch does not bind: a stream of its own, and inputs
// copied through page-locked memory without waiting (src/engine/cuda.rs says why). Both go
// through c10's device-generic interfaces, which libc10_cuda implements for CUDA when it is
// loaded, so nothing here needs the CUDA headers; with a libtorch without CUDA, or on a machine
// without a GPU, a call fails with libtorch's reason. Failures cross as src/shim/shim.h says.
#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/Stream.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>

#include "../shim/shim.h"

namespace {

c10::Device cuda_device(int index) {
  return c10::Device(c10::DeviceType::CUDA, static_cast<c10::DeviceIndex>(index));
}

}  // namespace

extern "C" {

// Makes a stream from libtorch's pool the calling thread's current stream on CUDA device
// `device`: the thread's kernels and copies on that device go to it from now on. 1, or 0 and the
// error.
int bertd_cuda_use_pool_stream(int device, char** error) {
  return bertd::attempt(error, [&] {
    const auto* cuda = c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA);
    cuda->exchangeStream(cuda->getStreamFromGlobalPool(cuda_device(device)));
  });
}

// `host` (a CPU tensor) on CUDA device `device`: copied into page-locked memory, then queued on
// the current stream without waiting for it. libtorch keeps the page-locked block until the copy
// is done, so `host` and the copy's source may go at once.
at::Tensor* bertd_cuda_upload(const at::Tensor* host, int device, char** error) {
  return bertd::guarded(error, [&] {
    return host->pin_memory().to(host->options().device(cuda_device(device)),
                                 /*non_blocking=*/true, /*copy=*/false);
  });
}

}  // extern "C"
