//! Where a replica runs and in which precision.
use std::str::FromStr;

use tch::{Device, Kind};

/// A device as written in configuration: `cpu`, `cuda` (= `cuda:0`) or `cuda:N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceSpec(pub Device);

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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    F32,
    F16,
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

    /// Half precisions are for CUDA: on CPU they are slower than fp32 and less exact.
    pub fn check_device(self, device: DeviceSpec) -> Result<(), String> {
        if self != DType::F32 && device.0 == Device::Cpu {
            return Err(format!("dtype {self} needs a CUDA device; use fp32 on cpu"));
        }
        Ok(())
    }
}

impl FromStr for DType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "fp32" | "float32" => Ok(DType::F32),
            "fp16" | "float16" => Ok(DType::F16),
            "bf16" | "bfloat16" => Ok(DType::Bf16),
            other => Err(format!(
                "unknown dtype {other:?}: expected fp32, fp16 or bf16"
            )),
        }
    }
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
    }

    #[test]
    fn half_precision_is_refused_on_cpu() {
        let cpu = DeviceSpec(Device::Cpu);
        assert!(DType::F32.check_device(cpu).is_ok());
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
        assert_eq!("bfloat16".parse::<DType>().unwrap(), DType::Bf16);
        assert!("int8".parse::<DType>().is_err());
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
}
