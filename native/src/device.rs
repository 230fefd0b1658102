//! `--device` values: the one place the backend is chosen.

use anyhow::{Context, bail};
use burn::tensor::{Device, DeviceKind};

/// Help text of `--device`.
pub const DEVICE_HELP: &str = "cpu (Burn's Flex backend), wgpu (best GPU through Vulkan/Metal/DX12), \
wgpu:N (N-th discrete GPU), wgpu:integrated:N, wgpu:cpu (a software adapter such as Mesa lavapipe)";

/// Parses a device spec into a Burn device.
pub fn parse_device(spec: &str) -> anyhow::Result<Device> {
    let parts: Vec<&str> = spec.split(':').collect();
    let index = |s: &str| -> anyhow::Result<usize> {
        s.parse().with_context(|| {
            format!("--device {spec}: `{s}` is not a device index; expected {DEVICE_HELP}")
        })
    };
    Ok(match parts.as_slice() {
        ["cpu"] | ["flex"] => Device::flex(),
        ["wgpu"] => Device::wgpu(DeviceKind::DefaultDevice),
        ["wgpu", "cpu"] => Device::wgpu(DeviceKind::Cpu),
        ["wgpu", "integrated", n] => Device::wgpu(DeviceKind::IntegratedGpu(index(n)?)),
        ["wgpu", n] => Device::wgpu(DeviceKind::DiscreteGpu(index(n)?)),
        _ => bail!("--device {spec}: unknown device; expected {DEVICE_HELP}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_devices_are_refused_with_the_choices() {
        let err = parse_device("cuda:0").unwrap_err().to_string();
        assert!(err.contains("wgpu:N"), "{err}");
        let err = parse_device("wgpu:x").unwrap_err().to_string();
        assert!(err.contains("`x` is not a device index"), "{err}");
        assert!(parse_device("cpu").is_ok());
        assert!(parse_device("wgpu:1").is_ok());
    }
}
