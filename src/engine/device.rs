//! Where a replica runs and in which precision.
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tch::{Device, Kind};

use crate::model::LinearKernel;

/// A device as written in configuration: `cpu`, `cuda` (= `cuda:0`) or `cuda:N`. Parsed once,
/// where configuration and flags are read; serialized back in the same words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceSpec(pub Device);

impl Serialize for DeviceSpec {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DeviceSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl FromStr for DeviceSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cpu" => Ok(DeviceSpec(Device::Cpu)),
            "cuda" => Ok(DeviceSpec(Device::Cuda(0))),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse::<usize>().ok())
                .map(|n| DeviceSpec(Device::Cuda(n)))
                .ok_or_else(|| format!("unknown device {s:?}: expected cpu, cuda or cuda:N")),
        }
    }
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Device::Cuda(n) => write!(f, "cuda:{n}"),
            _ => f.write_str("cpu"),
        }
    }
}

impl DeviceSpec {
    /// Fails when the device is not there (no CUDA, or fewer GPUs than the index).
    pub fn check_available(&self) -> Result<(), String> {
        if let Device::Cuda(n) = self.0 {
            let count = tch::Cuda::device_count() as usize;
            if count == 0 {
                return Err(format!("{self}: CUDA is not available on this machine"));
            }
            if n >= count {
                return Err(format!("{self}: only {count} CUDA device(s) present"));
            }
        }
        Ok(())
    }
}

/// The precision of weights and activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
pub enum DType {
    #[default]
    #[serde(rename = "fp32", alias = "float32")]
    #[value(name = "fp32", alias = "float32")]
    F32,
    #[serde(rename = "fp16", alias = "float16")]
    #[value(name = "fp16", alias = "float16")]
    F16,
    #[serde(rename = "bf16", alias = "bfloat16")]
    #[value(name = "bf16", alias = "bfloat16")]
    Bf16,
}

impl DType {
    pub fn kind(self) -> Kind {
        match self {
            DType::F32 => Kind::Float,
            DType::F16 => Kind::Half,
            DType::Bf16 => Kind::BFloat16,
        }
    }

    /// fp16 is for CUDA: on CPU it is slower than fp32 and less exact. bf16 runs on CUDA, and
    /// on a CPU that computes it natively (AVX512-BF16 or AMX-BF16); elsewhere libtorch emulates
    /// it, slower than fp32, so it is refused.
    pub fn check_device(self, device: DeviceSpec) -> Result<(), String> {
        match (self, device.0) {
            (DType::F16, Device::Cpu) => {
                Err("dtype fp16 needs a CUDA device; use fp32 (or bf16 on a CPU with AVX512-BF16 or AMX) on cpu".into())
            }
            (DType::Bf16, Device::Cpu) if !cpu_has_bf16() => Err(
                "dtype bf16 on cpu needs a CPU with AVX512-BF16 or AMX-BF16, and this one has neither (bf16 would be emulated, slower than fp32); use fp32".into(),
            ),
            _ => Ok(()),
        }
    }
}

/// What computes the dense layers, as configured (`engine.dense_kernel`); resolved per device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DenseKernel {
    /// oneDNN on a CPU whose libtorch has it (measured faster than MKL's sgemm: BENCHMARKS.md),
    /// libtorch's `linear` everywhere else.
    #[default]
    Auto,
    /// oneDNN with weights packed at load and the activation fused; CPU only.
    Onednn,
    /// libtorch's `linear`: MKL's sgemm on a CPU, cuBLAS on CUDA.
    Aten,
}

impl DenseKernel {
    pub fn resolve(self, device: DeviceSpec) -> Result<LinearKernel, String> {
        let onednn = LinearKernel::onednn_runs_on(device.0);
        match self {
            DenseKernel::Auto if onednn => Ok(LinearKernel::OneDnn),
            DenseKernel::Auto | DenseKernel::Aten => Ok(LinearKernel::Aten),
            DenseKernel::Onednn if onednn => Ok(LinearKernel::OneDnn),
            DenseKernel::Onednn if device.0 != Device::Cpu => Err(format!(
                "dense kernel onednn runs on cpu, not {device}; use auto or aten"
            )),
            DenseKernel::Onednn => Err(
                "dense kernel onednn: this libtorch has no oneDNN operators; use auto or aten"
                    .into(),
            ),
        }
    }
}

impl std::fmt::Display for DenseKernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DenseKernel::Auto => "auto",
            DenseKernel::Onednn => "onednn",
            DenseKernel::Aten => "aten",
        })
    }
}

/// Which CUDA stream a CUDA worker computes on (`engine.cuda_streams`; `cuda.rs` says why).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum CudaStreams {
    /// libtorch's default stream, which the workers of one GPU share.
    #[default]
    Shared,
    /// A stream of its own from libtorch's pool for each worker, so that workers of one GPU
    /// overlap. Needs a CUDA device.
    PerWorker,
}

impl CudaStreams {
    /// Refuses per-worker streams where no device is a GPU: the setting would do nothing.
    pub fn check_devices(self, devices: &[DeviceSpec]) -> Result<(), String> {
        match self {
            CudaStreams::PerWorker if !devices.iter().any(|d| d.0.is_cuda()) => Err(format!(
                "cuda streams per-worker needs a CUDA device, and the devices are {}",
                devices
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            _ => Ok(()),
        }
    }
}

impl std::fmt::Display for CudaStreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CudaStreams::Shared => "shared",
            CudaStreams::PerWorker => "per-worker",
        })
    }
}

/// The CPU's feature flags, from /proc/cpuinfo (empty where it cannot be read).
fn cpu_flags() -> &'static [String] {
    static FLAGS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    FLAGS.get_or_init(|| {
        let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let mut flags: Vec<String> = info
            .lines()
            .filter(|l| l.starts_with("flags"))
            .flat_map(|l| l.split_whitespace().map(String::from))
            .collect();
        flags.sort();
        flags.dedup();
        flags
    })
}

/// Whether this CPU computes bf16 natively (AVX512-BF16 or AMX-BF16).
pub fn cpu_has_bf16() -> bool {
    cpu_flags()
        .iter()
        .any(|f| f == "avx512_bf16" || f == "amx_bf16")
}

/// Whether this CPU has AMX tiles for bf16, the path where bf16 beats fp32.
pub fn cpu_has_amx_bf16() -> bool {
    cpu_flags().iter().any(|f| f == "amx_bf16")
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DType::F32 => "fp32",
            DType::F16 => "fp16",
            DType::Bf16 => "bf16",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse_as_written_in_configuration() {
        assert_eq!("cpu".parse::<DeviceSpec>().unwrap().0, Device::Cpu);
        assert_eq!("cuda".parse::<DeviceSpec>().unwrap().0, Device::Cuda(0));
        assert_eq!("cuda:3".parse::<DeviceSpec>().unwrap().0, Device::Cuda(3));
        assert!(
            "gpu"
                .parse::<DeviceSpec>()
                .unwrap_err()
                .contains("expected cpu, cuda or cuda:N")
        );
        assert_eq!(
            "cuda:1".parse::<DeviceSpec>().unwrap().to_string(),
            "cuda:1"
        );
        let parsed: Vec<DeviceSpec> = serde_json::from_str(r#"["cpu", "cuda:2"]"#).unwrap();
        assert_eq!(parsed[1].0, Device::Cuda(2));
        let refused = serde_json::from_str::<DeviceSpec>("\"tpu\"").unwrap_err();
        assert!(refused.to_string().contains("expected cpu, cuda or cuda:N"));
    }

    #[test]
    fn fp16_is_refused_on_cpu_and_bf16_where_the_cpu_lacks_it() {
        let cpu = DeviceSpec(Device::Cpu);
        assert!(DType::F32.check_device(cpu).is_ok());
        match DType::Bf16.check_device(cpu) {
            Ok(()) => assert!(cpu_has_bf16()),
            Err(e) => {
                assert!(!cpu_has_bf16());
                assert!(e.contains("AVX512-BF16"), "{e}");
            }
        }
        assert!(
            DType::F16
                .check_device(cpu)
                .unwrap_err()
                .contains("needs a CUDA device")
        );
        assert!(
            DType::Bf16
                .check_device(DeviceSpec(Device::Cuda(0)))
                .is_ok()
        );
        use clap::ValueEnum;
        assert_eq!(DType::from_str("bfloat16", false).unwrap(), DType::Bf16);
        assert!(DType::from_str("int8", false).is_err());
        let parsed: DType = serde_json::from_str("\"float16\"").unwrap();
        assert_eq!(parsed, DType::F16);
        assert_eq!(serde_json::to_string(&DType::Bf16).unwrap(), "\"bf16\"");
    }

    #[test]
    fn cuda_is_reported_unavailable_rather_than_crashing() {
        if tch::Cuda::device_count() == 0 {
            let err = DeviceSpec(Device::Cuda(0)).check_available().unwrap_err();
            assert!(err.contains("CUDA is not available"), "{err}");
        } else {
            assert!(DeviceSpec(Device::Cuda(0)).check_available().is_ok());
        }
    }

    #[test]
    fn the_dense_kernel_is_onednn_on_a_cpu_by_default_and_libtorchs_linear_on_cuda() {
        let cpu = DeviceSpec(Device::Cpu);
        let cuda = DeviceSpec(Device::Cuda(0));
        // x86 builds of libtorch, the ones this project installs, register oneDNN's operators.
        assert!(LinearKernel::onednn_runs_on(Device::Cpu));
        assert_eq!(DenseKernel::Auto.resolve(cpu), Ok(LinearKernel::OneDnn));
        assert_eq!(DenseKernel::Onednn.resolve(cpu), Ok(LinearKernel::OneDnn));
        assert_eq!(DenseKernel::Aten.resolve(cpu), Ok(LinearKernel::Aten));
        assert_eq!(DenseKernel::Auto.resolve(cuda), Ok(LinearKernel::Aten));
        assert_eq!(DenseKernel::Aten.resolve(cuda), Ok(LinearKernel::Aten));
        let refused = DenseKernel::Onednn.resolve(cuda).unwrap_err();
        assert!(refused.contains("runs on cpu, not cuda:0"), "{refused}");
        let parsed: DenseKernel = serde_json::from_str("\"onednn\"").unwrap();
        assert_eq!(parsed, DenseKernel::Onednn);
        assert_eq!(DenseKernel::Aten.to_string(), "aten");
    }

    #[test]
    fn per_worker_cuda_streams_are_refused_where_no_device_is_a_gpu() {
        let cpu = DeviceSpec(Device::Cpu);
        let cuda = DeviceSpec(Device::Cuda(1));
        let refused = CudaStreams::PerWorker.check_devices(&[cpu]).unwrap_err();
        assert_eq!(
            refused,
            "cuda streams per-worker needs a CUDA device, and the devices are cpu"
        );
        assert_eq!(CudaStreams::PerWorker.check_devices(&[cpu, cuda]), Ok(()));
        assert_eq!(CudaStreams::Shared.check_devices(&[cpu]), Ok(()));
        let parsed: CudaStreams = serde_json::from_str("\"per-worker\"").unwrap();
        assert_eq!(parsed, CudaStreams::PerWorker);
        assert_eq!(CudaStreams::PerWorker.to_string(), "per-worker");
        use clap::ValueEnum;
        assert_eq!(
            CudaStreams::from_str("per-worker", false),
            Ok(CudaStreams::PerWorker)
        );
    }
}
