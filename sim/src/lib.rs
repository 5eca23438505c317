//! Load generators and simulators for EdgeDesk benchmarks (see
//! docs/BENCHMARKS.md): `edge-loadgen` and `fleet-sim`, and what they share.

/// Resident and peak resident memory of process `pid` in KiB (Linux /proc).
pub fn rss_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}
