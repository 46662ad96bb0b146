//! The kernel memory the tracer's eBPF maps hold, read from a running `tracer trace --lab`: each
//! map the process has open (`/proc/PID/fd` -> `anon_inode:bpf-map`) and the `memlock` its fdinfo
//! states. Every map is sized at load (arrays, the ring buffer, a preallocated hash), so this is
//! the most a flood of DNS can make the tracer hold in the kernel.

use std::{
    collections::BTreeMap,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

/// The maps of one running tracer.
pub struct KernelMemory {
    /// map id -> (type, max_entries, memlock bytes).
    maps: BTreeMap<u32, (String, u64, u64)>,
}

impl KernelMemory {
    /// Bytes of every map together.
    pub fn total(&self) -> u64 {
        self.maps.values().map(|m| m.2).sum()
    }

    /// A section for bench/RESULTS.md.
    pub fn markdown(&self) -> String {
        let mut s = format!(
            "\n\n## Kernel memory of the eBPF maps\n\nThe tracer's maps hold {:.2} MiB of kernel memory ({} bytes, their fdinfo `memlock`), all sized at load: no DNS flood grows them (a full ring buffer counts lost records, a full slot table evicts).\n\n| map type | entries | bytes |\n|---|---|---|\n",
            self.total() as f64 / f64::from(1u32 << 20),
            self.total()
        );
        for (kind, entries, bytes) in self.maps.values() {
            s.push_str(&format!("| {kind} | {entries} | {bytes} |\n"));
        }
        s
    }
}

/// Stops the tracer it holds with SIGINT (by pid) and waits for it, however the caller ends.
struct Tracing(Child);

impl Drop for Tracing {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.0.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGINT,
            );
        }
        let _ = self.0.wait();
    }
}

/// Runs `tracer trace --lab --prefix PREFIX` until its maps are loaded and reads their sizes.
pub fn measure(tracer: &Path, prefix: &str) -> anyhow::Result<KernelMemory> {
    let child = Command::new(tracer)
        .args(["trace", "--lab", "--prefix", prefix, "--duration", "60"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("failed to start the tracer for its map sizes")?;
    let t = Tracing(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = 0;
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        let maps = maps_of(t.0.id())?;
        // Loaded when two reads agree (aya creates the maps one by one before the programs).
        if !maps.is_empty() && maps.len() == last {
            let m = KernelMemory { maps };
            println!(
                "bench: the tracer's {} eBPF maps hold {} bytes ({:.2} MiB) of kernel memory",
                m.maps.len(),
                m.total(),
                m.total() as f64 / f64::from(1u32 << 20)
            );
            return Ok(m);
        }
        last = maps.len();
    }
    bail!("the tracer had no eBPF maps open after 30 s")
}

/// The bpf maps process `pid` has open, by map id.
fn maps_of(pid: u32) -> anyhow::Result<BTreeMap<u32, (String, u64, u64)>> {
    let mut maps = BTreeMap::new();
    let dir = format!("/proc/{pid}/fd");
    for fd in std::fs::read_dir(&dir).with_context(|| format!("failed to read {dir}"))? {
        let fd = fd?.path();
        if std::fs::read_link(&fd).is_ok_and(|l| l.as_os_str() == "anon_inode:bpf-map") {
            let info = format!(
                "/proc/{pid}/fdinfo/{}",
                fd.file_name().unwrap_or_default().to_string_lossy()
            );
            let Ok(text) = std::fs::read_to_string(&info) else {
                continue;
            };
            let field = |k: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(k)?.strip_prefix(':'))
                    .map(str::trim)
                    .unwrap_or_default()
                    .to_owned()
            };
            let num = |k: &str| field(k).parse::<u64>().unwrap_or(0);
            maps.insert(
                u32::try_from(num("map_id")).unwrap_or(0),
                (
                    map_type(&field("map_type")),
                    num("max_entries"),
                    num("memlock"),
                ),
            );
        }
    }
    Ok(maps)
}

/// `enum bpf_map_type`'s name for the number fdinfo gives.
fn map_type(n: &str) -> String {
    match n {
        "1" => "hash".into(),
        "2" => "array".into(),
        "6" => "percpu_array".into(),
        "27" => "ringbuf".into(),
        other => format!("type {other}"),
    }
}
