//! `--device`: where the models run, the CPU or a CUDA GPU (with `--features cuda`).

use std::str::FromStr;

use anyhow::{Context, Result};
use candle_core::Device;

/// A device named on the command line: `cpu`, `cuda` (the first GPU) or `cuda:N`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceChoice {
    /// The CPU, through candle's CPU kernels and Himmel's own.
    Cpu,
    /// The CUDA GPU of this ordinal.
    Cuda(usize),
}

impl FromStr for DeviceChoice {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            _ => text
                .strip_prefix("cuda:")
                .and_then(|ordinal| ordinal.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| format!("`{text}` is no device: give cpu, cuda or cuda:N")),
        }
    }
}

impl DeviceChoice {
    /// Opens the device, or says why it cannot be used.
    pub fn open(self) -> Result<Device> {
        match self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Cuda(ordinal) => {
                if !candle_core::utils::cuda_is_available() {
                    anyhow::bail!(
                        "--device cuda: this himmel was built without CUDA; build it with \
                         `cargo build --release -p himmel-cli --features cuda` where the CUDA \
                         toolkit is installed"
                    );
                }
                Device::new_cuda(ordinal).with_context(|| format!("opening CUDA device {ordinal}"))
            }
        }
    }
}

/// Waits until the work queued on `device` is done, so that a timer read next measures it
/// (GPU kernels run asynchronously; on the CPU this returns at once).
pub fn synchronize(device: &Device) -> Result<()> {
    Ok(device.synchronize()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse_and_bad_names_are_refused() {
        assert_eq!("cpu".parse(), Ok(DeviceChoice::Cpu));
        assert_eq!("cuda".parse(), Ok(DeviceChoice::Cuda(0)));
        assert_eq!("cuda:3".parse(), Ok(DeviceChoice::Cuda(3)));
        for bad in ["gpu", "cuda:", "cuda:x", "CPU", ""] {
            let error = bad.parse::<DeviceChoice>().unwrap_err();
            assert!(error.contains("no device"), "{bad}: {error}");
        }
    }

    #[test]
    fn the_cpu_opens() {
        assert!(DeviceChoice::Cpu.open().unwrap().is_cpu());
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_says_how_to_build_it() {
        let error = DeviceChoice::Cuda(0).open().unwrap_err().to_string();
        assert!(error.contains("--features cuda"), "{error}");
    }
}
