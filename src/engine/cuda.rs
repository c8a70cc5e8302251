//! A CUDA worker's stream and input copies (`cuda.cpp` reaches them; tch binds neither).
//!
//! Why a stream per worker (`engine.cuda_streams = "per-worker"`): libtorch puts every thread's
//! kernels on one default stream per GPU unless told otherwise, so the workers of one GPU queue
//! behind each other, and a worker reading its results back waits for the others' kernels queued
//! before its copy. On a stream of its own, one worker's kernels can overlap another's, and its
//! copies wait only for its own work.
//!
//! Why page-locked inputs: a copy from ordinary memory to the GPU makes the thread wait while the
//! driver stages it. From page-locked memory the copy is queued, and the thread goes on to queue
//! the forward that reads it.
//!
//! Invariant: a worker sets its stream before it loads its replica, on its own thread (the
//! current stream is per thread), so its weights, inputs, forward and results share one stream;
//! nothing crosses to another worker's stream.
use std::ffi::{c_char, c_int};

use tch::{Device, Tensor};
use torch_sys::C_tensor;

use super::CudaStreams;
use crate::shim::{message, returned};

unsafe extern "C" {
    fn bertd_cuda_use_pool_stream(device: c_int, error: *mut *mut c_char) -> c_int;
    fn bertd_cuda_upload(
        host: *const C_tensor,
        device: c_int,
        error: *mut *mut c_char,
    ) -> *mut C_tensor;
}

/// Puts the calling thread on the stream that `streams` chooses on `device`: with `PerWorker` on
/// a CUDA device, a stream of its own; otherwise libtorch's default, as it already is.
pub fn choose_stream(streams: CudaStreams, device: Device) -> Result<(), String> {
    match (device, streams) {
        (Device::Cuda(index), CudaStreams::PerWorker) => use_own_stream(index),
        _ => Ok(()),
    }
}

/// Makes a stream of libtorch's pool the calling thread's current stream on CUDA device `index`.
fn use_own_stream(index: usize) -> Result<(), String> {
    let mut error: *mut c_char = std::ptr::null_mut();
    // SAFETY: plain integer in; on failure the shim sets `error`, which `message` frees.
    let done = unsafe { bertd_cuda_use_pool_stream(index as c_int, &mut error) };
    if done == 1 {
        Ok(())
    } else {
        Err(message(error))
    }
}

/// `host`, a CPU tensor, on `device` (a CUDA device), copied through page-locked memory and
/// queued on the current stream without waiting. On any other device: `host` moved there as
/// tch does.
pub fn upload(host: &Tensor, device: Device) -> Tensor {
    let Device::Cuda(index) = device else {
        return host.to_device(device);
    };
    // SAFETY: `host` outlives the call; the shim returns a new owned tensor or an error.
    returned(|error| unsafe { bertd_cuda_upload(host.as_ptr(), index as c_int, error) })
        // As with tch's own operators, a libtorch error here fails the batch (the engine turns
        // the panic into a failed batch, or a broken replica for a sticky CUDA error).
        .unwrap_or_else(|message| panic!("copying inputs to {device:?}: {message}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    #[test]
    fn a_worker_gets_a_stream_of_its_own_on_a_gpu_and_libtorchs_reason_without_one() {
        match tch::Cuda::is_available() {
            true => assert_eq!(use_own_stream(0), Ok(())),
            false => {
                let error = use_own_stream(0).unwrap_err();
                assert!(error.contains("CUDA"), "{error}");
                assert!(!error.contains("frame #"), "no C++ backtrace: {error}");
            }
        }
    }

    #[test]
    fn an_upload_to_the_cpu_is_the_tensor_itself_and_to_a_missing_gpu_a_failure() {
        let host = Tensor::from_slice(&[1i64, 2, 3]);
        let same = upload(&host, Device::Cpu);
        assert_eq!(Vec::<i64>::try_from(&same).unwrap(), [1, 2, 3]);
        assert_eq!(same.kind(), Kind::Int64);
        if !tch::Cuda::is_available() {
            let panic = std::panic::catch_unwind(|| upload(&host, Device::Cuda(0))).unwrap_err();
            let message = crate::panic_message(panic.as_ref());
            assert!(
                message.starts_with("copying inputs to Cuda(0): "),
                "{message}"
            );
        }
    }
}
