//! The Rust side of bertd's C++ shims (`src/model/onednn.cpp`, `src/engine/cuda.cpp`): libtorch
//! operations that tch does not bind. A shim call that makes a tensor returns it, or null and the
//! message of the C++ exception it caught (`shim.h`); [`returned`] turns that into a `Result`
//! and frees the message, once.
use std::ffi::{CStr, c_char};

use tch::Tensor;
use torch_sys::C_tensor;

unsafe extern "C" {
    fn bertd_free_error(error: *mut c_char);
}

/// Takes ownership of what a shim call returned: a tensor, or the message of the C++ exception.
pub(crate) fn returned(
    call: impl FnOnce(*mut *mut c_char) -> *mut C_tensor,
) -> Result<Tensor, String> {
    let mut error: *mut c_char = std::ptr::null_mut();
    let tensor = call(&mut error);
    if tensor.is_null() {
        return Err(message(error));
    }
    // SAFETY: a non-null result is a heap-allocated `at::Tensor` that nothing else owns.
    Ok(unsafe { Tensor::from_ptr(tensor) })
}

/// The message a failed shim call set, freed here; `error` is not to be used again.
pub(crate) fn message(error: *mut c_char) -> String {
    if error.is_null() {
        // The shim could not even allocate the message.
        return "out of memory".into();
    }
    // SAFETY: a failed shim call sets `error` to a malloc'd, nul-terminated C string that
    // nothing else owns; it is read, then freed once.
    unsafe {
        let text = CStr::from_ptr(error).to_string_lossy().into_owned();
        bertd_free_error(error);
        text
    }
}
