//! libtorch's oneDNN dense layer with its weight packed once at load (`onednn.cpp` reaches the
//! two operators, which tch does not bind).
//!
//! Why: on a CPU `linear` is MKL's sgemm, which packs the weight into its own blocked layout on
//! every call (8% of the forward in a profile); oneDNN takes a weight packed once and keeps the
//! activations in the plain row-major layout, so no conversion is paid per layer, and it applies
//! the feed-forward activation (GELU) inside the product instead of in a pass of its own.
//! BENCHMARKS.md has the measurement that made this the CPU default.
//!
//! Invariant: a packed weight is passed only to [`linear`] here, and lives on the CPU (the model
//! refuses the oneDNN kernel on any other device).
use std::ffi::{CStr, c_char, c_int};

use tch::Tensor;
use torch_sys::C_tensor;

use crate::shim::returned;

unsafe extern "C" {
    fn bertd_onednn_available() -> c_int;
    fn bertd_onednn_pack(
        weight: *const C_tensor,
        rows: i64,
        error: *mut *mut c_char,
    ) -> *mut C_tensor;
    fn bertd_onednn_linear(
        input: *const C_tensor,
        packed: *const C_tensor,
        bias: *const C_tensor,
        attr: *const c_char,
        algorithm: *const c_char,
        error: *mut *mut c_char,
    ) -> *mut C_tensor;
}

/// Whether this libtorch has the oneDNN operators (x86 builds do; some ARM builds do not).
pub fn available() -> bool {
    // SAFETY: looks two names up in libtorch's operator registry; no arguments.
    unsafe { bertd_onednn_available() != 0 }
}

/// What the product's output goes through inside the same kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fused {
    Nothing,
    /// GELU, the exact (erf) form.
    Gelu,
    /// GELU, the tanh approximation.
    GeluTanh,
    Relu,
}

impl Fused {
    /// oneDNN's post-op name and algorithm, as `mkldnn::_linear_pointwise` spells them.
    fn attr(self) -> (&'static CStr, &'static CStr) {
        match self {
            Fused::Nothing => (c"none", c""),
            Fused::Gelu => (c"gelu", c"none"),
            Fused::GeluTanh => (c"gelu", c"tanh"),
            Fused::Relu => (c"relu", c""),
        }
    }
}

/// `weight` [out, in] in oneDNN's blocked layout, chosen for products of about `rows` rows.
pub fn pack(weight: &Tensor, rows: i64) -> Result<Tensor, String> {
    // SAFETY: `weight` outlives the call; the shim returns a new owned tensor or an error.
    returned(|error| unsafe { bertd_onednn_pack(weight.as_ptr(), rows, error) })
}

/// `fused(input · weightᵀ + bias)` with `packed` from [`pack`]; `input` is [.., in].
pub fn linear(input: &Tensor, packed: &Tensor, bias: &Tensor, fused: Fused) -> Tensor {
    let (attr, algorithm) = fused.attr();
    // SAFETY: the tensors outlive the call; the strings are static and nul-terminated.
    returned(|error| unsafe {
        bertd_onednn_linear(
            input.as_ptr(),
            packed.as_ptr(),
            bias.as_ptr(),
            attr.as_ptr(),
            algorithm.as_ptr(),
            error,
        )
    })
    // A libtorch error here is a bug or an exhausted machine, as with tch's own operators: the
    // engine turns the panic into a failed batch.
    .unwrap_or_else(|message| panic!("oneDNN linear: {message}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Kind, Tensor};

    const ROWS: i64 = 5;
    const IN: i64 = 8;
    const OUT: i64 = 12;

    fn max_difference(a: &Tensor, b: &Tensor) -> f64 {
        (a - b).abs().max().double_value(&[])
    }

    #[test]
    fn a_packed_product_with_each_fused_activation_equals_linear_then_the_activation() {
        tch::manual_seed(7);
        let input = Tensor::randn([2, ROWS, IN], (Kind::Float, tch::Device::Cpu));
        let weight = Tensor::randn([OUT, IN], (Kind::Float, tch::Device::Cpu));
        let bias = Tensor::randn([OUT], (Kind::Float, tch::Device::Cpu));
        let packed = pack(&weight, ROWS).unwrap();
        let plain = input.linear(&weight, Some(&bias));
        let cases = [
            (Fused::Nothing, plain.shallow_clone()),
            (Fused::Gelu, plain.gelu("none")),
            (Fused::GeluTanh, plain.gelu("tanh")),
            (Fused::Relu, plain.relu()),
        ];
        for (fused, expected) in cases {
            let got = linear(&input, &packed, &bias, fused);
            assert_eq!(got.size(), [2, ROWS, OUT], "{fused:?}");
            let difference = max_difference(&got, &expected);
            assert!(difference < 1e-5, "{fused:?}: {difference}");
        }
    }

    #[test]
    fn a_libtorch_error_comes_back_as_its_message_and_not_as_an_abort() {
        let weight = Tensor::ones([OUT, IN], (Kind::Float, tch::Device::Cpu));
        let bias = Tensor::zeros([OUT], (Kind::Float, tch::Device::Cpu));
        let packed = pack(&weight, ROWS).unwrap();
        let misshapen = Tensor::ones([ROWS, IN + 1], (Kind::Float, tch::Device::Cpu));
        let panic = std::panic::catch_unwind(|| linear(&misshapen, &packed, &bias, Fused::Nothing))
            .unwrap_err();
        let message = crate::panic_message(panic.as_ref());
        assert!(message.starts_with("oneDNN linear: "), "{message}");
        let not_a_matrix = Tensor::ones([IN], (Kind::Float, tch::Device::Cpu));
        assert!(pack(&not_a_matrix, ROWS).is_err());
    }
}
