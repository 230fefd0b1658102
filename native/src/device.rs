//! `--device` values: the one place the backend is chosen.

use anyhow::{Context, bail};
use burn::tensor::{Device, DeviceKind};
use clo_core::api::DeviceInfo;

/// Help text of `--device`.
pub const DEVICE_HELP: &str = "cpu (Burn's Flex backend), wgpu (best GPU through Vulkan/Metal/DX12), \
wgpu:N (N-th discrete GPU), wgpu:integrated:N, wgpu:cpu (a software adapter such as Mesa lavapipe)";

/// Parses a device spec into a Burn device. A wgpu device that this machine lacks is an error
/// listing the adapters it has (Burn would panic on first use instead).
pub fn parse_device(spec: &str) -> anyhow::Result<Device> {
    let (device, wgpu_kind) = parse_spec(spec)?;
    if let Some(kind) = wgpu_kind {
        check_adapter(spec, &kind, &adapters())?;
    }
    Ok(device)
}

/// Parses a `--devices` list: comma-separated device specs (a spec may repeat: several replicas
/// on one device), or `all` for every discrete GPU wgpu finds.
pub fn parse_devices(list: &str) -> anyhow::Result<Vec<Device>> {
    if list.trim() == "all" {
        let gpus = adapters()
            .iter()
            .filter(|a| a.device_type == wgpu::DeviceType::DiscreteGpu)
            .count();
        if gpus == 0 {
            bail!(
                "--devices all: this machine has no discrete GPU; list devices instead, e.g. --devices cpu or --devices wgpu:cpu"
            );
        }
        return Ok((0..gpus)
            .map(|n| Device::wgpu(DeviceKind::DiscreteGpu(n)))
            .collect());
    }
    let specs: Vec<&str> = list.split(',').map(str::trim).collect();
    if specs.iter().any(|s| s.is_empty()) {
        bail!(
            "--devices {list}: an empty entry; expected comma-separated devices ({DEVICE_HELP}) or `all`"
        );
    }
    specs.into_iter().map(parse_device).collect()
}

/// Every device of this machine (`clo devices`, `GET /api/devices`): the CPU, then each wgpu
/// adapter Burn can select, with the spec that selects it (an adapter another one already
/// answers for, such as a second API to the same GPU, is left out).
pub fn describe_devices() -> Vec<DeviceInfo> {
    let cpu_name = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut out = vec![DeviceInfo {
        spec: "cpu".into(),
        name: format!("{cpu_name} ({threads} threads)"),
        kind: "cpu".into(),
        backend: "flex".into(),
        driver: String::new(),
        memory_bytes: clo_core::limits::memory_limit().map(|m| m.bytes),
        shader_f16: false,
        max_buffer_bytes: None,
        max_storage_binding_bytes: None,
    }];
    let (mut discrete, mut integrated) = (0, 0);
    for a in adapters() {
        let (spec, kind) = match a.device_type {
            wgpu::DeviceType::DiscreteGpu => {
                discrete += 1;
                (format!("wgpu:{}", discrete - 1), "discrete")
            }
            wgpu::DeviceType::IntegratedGpu => {
                integrated += 1;
                (format!("wgpu:integrated:{}", integrated - 1), "integrated")
            }
            wgpu::DeviceType::Cpu => ("wgpu:cpu".to_string(), "software"),
            _ => continue,
        };
        if out.iter().any(|d| d.spec == spec) {
            continue;
        }
        out.push(DeviceInfo {
            spec,
            name: a.name,
            kind: kind.into(),
            backend: match a.backend {
                wgpu::Backend::Vulkan => "vulkan",
                wgpu::Backend::Metal => "metal",
                wgpu::Backend::Dx12 => "dx12",
                wgpu::Backend::Gl => "gl",
                wgpu::Backend::BrowserWebGpu => "browser-webgpu",
                _ => "other",
            }
            .into(),
            driver: a.driver,
            memory_bytes: None,
            shader_f16: a.shader_f16,
            max_buffer_bytes: Some(a.max_buffer_size),
            max_storage_binding_bytes: Some(a.max_storage_binding_size),
        });
    }
    out
}

/// One adapter as wgpu reports it.
#[derive(Debug, Clone)]
pub struct AdapterInfo {
    pub name: String,
    pub device_type: wgpu::DeviceType,
    pub backend: wgpu::Backend,
    pub driver: String,
    pub shader_f16: bool,
    pub max_buffer_size: u64,
    pub max_storage_binding_size: u64,
}

/// The adapters of the native graphics APIs (Vulkan, Metal, DX12), else of any API wgpu has.
pub fn adapters() -> Vec<AdapterInfo> {
    let list = |backends: wgpu::Backends| -> Vec<AdapterInfo> {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
            backends,
            ..wgpu::InstanceDescriptor::new_without_display_handle()
        });
        futures_lite::future::block_on(instance.enumerate_adapters(backends))
            .iter()
            .map(|a| {
                let info = a.get_info();
                let limits = a.limits();
                AdapterInfo {
                    name: info.name,
                    device_type: info.device_type,
                    backend: info.backend,
                    driver: [info.driver, info.driver_info]
                        .into_iter()
                        .filter(|s| !s.is_empty())
                        .collect::<Vec<_>>()
                        .join(" "),
                    shader_f16: a.features().contains(wgpu::Features::SHADER_F16),
                    max_buffer_size: limits.max_buffer_size,
                    max_storage_binding_size: limits.max_storage_buffer_binding_size,
                }
            })
            .collect()
    };
    let primary = list(wgpu::Backends::PRIMARY);
    if primary.is_empty() {
        list(wgpu::Backends::all())
    } else {
        primary
    }
}

/// `clo devices`: the table (or `--json`).
pub fn run_devices(json: bool) -> anyhow::Result<()> {
    let devices = describe_devices();
    if json {
        println!("{}", serde_json::to_string_pretty(&devices)?);
        return Ok(());
    }
    let gib = |b: Option<u64>| {
        b.map_or("-".to_string(), |b| {
            if b >= 1 << 30 {
                format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64)
            } else {
                format!("{} MiB", b >> 20)
            }
        })
    };
    let rows: Vec<[String; 7]> = devices
        .iter()
        .map(|d| {
            [
                d.spec.clone(),
                d.kind.clone(),
                d.backend.clone(),
                gib(d.memory_bytes),
                if d.kind == "cpu" {
                    "-".into()
                } else if d.shader_f16 {
                    "yes".into()
                } else {
                    "no".into()
                },
                gib(d.max_storage_binding_bytes),
                d.name.clone(),
            ]
        })
        .collect();
    let header = [
        "--device",
        "kind",
        "backend",
        "memory",
        "shader-f16",
        "max binding",
        "name",
    ];
    let widths: Vec<usize> = (0..7)
        .map(|c| {
            rows.iter()
                .map(|r| r[c].chars().count())
                .chain([header[c].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    println!("{}", line(header.to_vec()));
    for r in &rows {
        println!("{}", line(r.iter().map(String::as_str).collect()));
    }
    if devices.len() == 1 {
        println!(
            "no GPU adapter answered (no Vulkan, Metal or DX12 driver); on Debian/Ubuntu, `apt install mesa-vulkan-drivers` gives the software adapter wgpu:cpu"
        );
    }
    Ok(())
}

/// Whether `kind` names one of `adapters`, counted per device type as Burn counts them.
fn check_adapter(spec: &str, kind: &DeviceKind, adapters: &[AdapterInfo]) -> anyhow::Result<()> {
    use wgpu::DeviceType as T;
    let of = |t: T| adapters.iter().filter(|a| a.device_type == t).count();
    let (ok, wanted) = match kind {
        DeviceKind::DefaultDevice => (!adapters.is_empty(), "any GPU adapter".to_string()),
        DeviceKind::Cpu => (of(T::Cpu) > 0, "a software (CPU) adapter".to_string()),
        DeviceKind::DiscreteGpu(n) => (*n < of(T::DiscreteGpu), format!("discrete GPU {n}")),
        DeviceKind::IntegratedGpu(n) => (*n < of(T::IntegratedGpu), format!("integrated GPU {n}")),
        _ => (true, String::new()),
    };
    if ok {
        return Ok(());
    }
    let found = if adapters.is_empty() {
        "none (no Vulkan, Metal or DX12 driver answered; on Debian/Ubuntu, `apt install mesa-vulkan-drivers` gives the software adapter wgpu:cpu)".to_string()
    } else {
        let mut counts: std::collections::HashMap<String, usize> = Default::default();
        adapters
            .iter()
            .map(|a| {
                let (label, indexed) = match a.device_type {
                    T::DiscreteGpu => ("wgpu", true),
                    T::IntegratedGpu => ("wgpu:integrated", true),
                    T::Cpu => ("wgpu:cpu", false),
                    T::VirtualGpu => ("virtual", false),
                    T::Other => ("other", false),
                };
                let n = counts.entry(label.to_string()).or_default();
                let spec = if indexed {
                    format!("{label}:{n}")
                } else {
                    label.to_string()
                };
                *n += 1;
                format!("{spec} = {} ({:?})", a.name, a.backend)
            })
            .collect::<Vec<_>>()
            .join("; ")
    };
    bail!("--device {spec}: this machine has no {wanted}; adapters found: {found}")
}

/// Parses a device spec; for wgpu specs also returns the kind to check.
fn parse_spec(spec: &str) -> anyhow::Result<(Device, Option<DeviceKind>)> {
    let parts: Vec<&str> = spec.split(':').collect();
    let index = |s: &str| -> anyhow::Result<usize> {
        s.parse().with_context(|| {
            format!("--device {spec}: `{s}` is not a device index; expected {DEVICE_HELP}")
        })
    };
    let kind = match parts.as_slice() {
        ["cpu"] | ["flex"] => return Ok((Device::flex(), None)),
        ["wgpu"] => DeviceKind::DefaultDevice,
        ["wgpu", "cpu"] => DeviceKind::Cpu,
        ["wgpu", "integrated", n] => DeviceKind::IntegratedGpu(index(n)?),
        ["wgpu", n] => DeviceKind::DiscreteGpu(index(n)?),
        _ => bail!("--device {spec}: unknown device; expected {DEVICE_HELP}"),
    };
    Ok((Device::wgpu(kind.clone()), Some(kind)))
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
        assert!(parse_spec("wgpu:1").is_ok());
    }

    #[test]
    fn device_lists_parse_each_entry() {
        assert_eq!(parse_devices("cpu,cpu").unwrap().len(), 2);
        assert_eq!(parse_devices(" cpu ").unwrap().len(), 1);
        let err = parse_devices("cpu,,cpu").unwrap_err().to_string();
        assert!(err.contains("empty entry"), "{err}");
        let err = parse_devices("cpu,gpu7").unwrap_err().to_string();
        assert!(err.contains("--device gpu7: unknown device"), "{err}");
    }

    #[test]
    fn a_missing_adapter_is_an_error_that_lists_the_adapters() {
        let adapter = |name: &str, device_type| AdapterInfo {
            name: name.into(),
            device_type,
            backend: wgpu::Backend::Vulkan,
            driver: String::new(),
            shader_f16: false,
            max_buffer_size: 1 << 30,
            max_storage_binding_size: 1 << 27,
        };
        let lavapipe = adapter("llvmpipe", wgpu::DeviceType::Cpu);
        let gpu = adapter("Radeon", wgpu::DeviceType::DiscreteGpu);
        let all = [lavapipe, gpu];
        assert!(check_adapter("wgpu:0", &DeviceKind::DiscreteGpu(0), &all).is_ok());
        assert!(check_adapter("wgpu:cpu", &DeviceKind::Cpu, &all).is_ok());
        let err = check_adapter("wgpu:7", &DeviceKind::DiscreteGpu(7), &all)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no discrete GPU 7"), "{err}");
        assert!(
            err.contains("wgpu:cpu = llvmpipe") && err.contains("wgpu:0 = Radeon"),
            "{err}"
        );
        let err = check_adapter("wgpu", &DeviceKind::DefaultDevice, &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("adapters found: none"), "{err}");
    }

    #[test]
    fn an_absent_gpu_is_an_error_on_this_machine() {
        // No machine has 4242 discrete GPUs: whatever this one has, the answer is an error.
        let err = parse_device("wgpu:4242").unwrap_err().to_string();
        assert!(err.contains("adapters found"), "{err}");
    }

    /// `clo devices` lists the CPU first, each device once, and every spec it shows selects
    /// its device.
    #[test]
    fn every_listed_device_is_selectable() {
        let devices = describe_devices();
        assert_eq!(devices[0].spec, "cpu");
        assert_eq!(devices[0].backend, "flex");
        assert!(devices[0].memory_bytes.is_some_and(|b| b > 0));
        let mut specs: Vec<&str> = devices.iter().map(|d| d.spec.as_str()).collect();
        for d in &devices {
            parse_device(&d.spec).unwrap_or_else(|e| panic!("{}: {e:#}", d.spec));
            if d.kind != "cpu" {
                assert!(d.max_storage_binding_bytes.is_some_and(|b| b > 0), "{d:?}");
            }
        }
        specs.sort_unstable();
        specs.dedup();
        assert_eq!(specs.len(), devices.len());
    }
}
