//! Compiles `tracer-ebpf` for the BPF target with aya-build and leaves the object in OUT_DIR,
//! where `include_bytes_aligned!` embeds it in the loader.
//!
//! The eBPF crate needs `-Z build-std=core`. We build it with the same stable toolchain as the
//! loader and `RUSTC_BOOTSTRAP=1` (see shared/TOOLCHAIN.md): one toolchain, whose LLVM matches
//! bpf-linker's, instead of depending on whatever nightly the machine carries.

use anyhow::{Context as _, anyhow};
use aya_build::Package;

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let ebpf_dir = std::path::Path::new(&manifest_dir).join("../tracer-ebpf");
    let ebpf_dir = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {ebpf_dir:?}"))?;
    // rustup tells build scripts which toolchain runs them; outside rustup fall back to "stable".
    let toolchain = std::env::var("RUSTUP_TOOLCHAIN").unwrap_or_else(|_| "stable".to_owned());
    // SAFETY: build scripts are single-threaded at this point.
    unsafe { std::env::set_var("RUSTC_BOOTSTRAP", "1") };
    aya_build::build_ebpf(
        [Package {
            name: "tracer-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(&toolchain),
    )
}
