//! How much memory training takes: what `metrics.jsonl` reports as `peak_mem_bytes`.

use burn::tensor::Device;

/// Peak memory on `device` so far, in bytes: the device allocator's reserved bytes where the
/// backend keeps a memory pool (wgpu; pools are kept, so this is their high-water mark), else
/// the process's peak resident set (the CPU backend, on Linux).
pub fn peak_bytes(device: &Device) -> Option<u64> {
    match device.memory_pool_usage() {
        Some(usage) => Some(usage.bytes_reserved),
        None => process_peak_rss(),
    }
}

/// The largest [`peak_bytes`] of several devices (data parallelism: the fullest device).
pub fn peak_bytes_of(devices: &[Device]) -> Option<u64> {
    devices.iter().filter_map(peak_bytes).max()
}

/// This process's peak resident set size (`VmHWM` of `/proc/self/status`), in bytes; `None`
/// off Linux.
pub fn process_peak_rss() -> Option<u64> {
    #[cfg(target_os = "linux")]
    {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kb * 1024)
    }
    #[cfg(not(target_os = "linux"))]
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_reports_the_process_peak() {
        let before = peak_bytes(&Device::flex());
        if cfg!(target_os = "linux") {
            let before = before.expect("VmHWM on Linux");
            // Touch 64 MiB: the high-water mark grows by about that much.
            let block = vec![1u8; 64 << 20];
            std::hint::black_box(&block);
            let after = peak_bytes(&Device::flex()).unwrap();
            assert!(after >= before + (60 << 20), "{before} -> {after}");
        }
    }
}
