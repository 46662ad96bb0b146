//! The initramfs: busybox-static, the guest kernel's 9p/virtio/overlay modules (decompressed, in
//! `modules.dep` order: busybox's insmod reads neither .xz nor dependencies) and two init scripts.
//!
//! Stage 1 (`/init`, busybox, in the initramfs) mounts this machine's `/` read-only over virtio-9p
//! under a tmpfs overlay, the guest kernel's modules on `/lib/modules/$(uname -r)`, a fresh `/run`
//! with the writable share on `/run/tracer-vm`, and switch_roots (not chroot: the kernel runs
//! `/proc/sys/kernel/modprobe` in PID 1's root, so module autoloading needs PID 1 in the new root).
//! Stage 2 (the host's `/bin/sh` as PID 1) mounts the kernel filesystems, runs `cmd.sh` from the
//! share, writes its exit status, and powers off with sysrq `o`.
//!
//! Images are cached per kernel under `/var/cache/tracer/initramfs/`, keyed by everything they hold.

use std::{
    collections::{HashMap, HashSet},
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::Command,
};

use sha2::{Digest as _, Sha256};

use super::{Error, Kernel, fetch};

/// What the initramfs loads to reach the host's root: virtio-pci, the 9p transport, 9p, overlayfs.
const WANTED: &[&str] = &["virtio_pci", "9pnet_virtio", "9p", "overlay"];

/// The console line stage 2 prints when the command starts (the host measures boot time by it).
pub(super) const STARTED: &str = "tracer-vm: command started";
/// The console line stage 1 prints first (a panic before it is a boot failure worth a retry).
pub(super) const INIT_STARTED: &str = "tracer-vm: init started";

/// The 9p options of the read-only shares (KERNEL.md's measured set).
const P9_RO: &str = "trans=virtio,version=9p2000.L,msize=512000,cache=loose,ro";
/// The writable share: no cache, so every result is on the host before the guest powers off.
const P9_RW: &str = "trans=virtio,version=9p2000.L,msize=512000";

fn stage1() -> String {
    format!(
        r#"#!/bin/busybox sh
# tracer vm, stage 1: PID 1 in the initramfs.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "{INIT_STARTED}"
fail() {{ echo "tracer-vm: init failed: $*"; echo o > /proc/sysrq-trigger; sleep 60; }}
for m in $(cat /modules/order); do
  insmod /modules/$m || echo "tracer-vm: insmod $m failed"
done
mkdir -p /lower /rw /newroot
mount -t 9p -o {P9_RO} hostroot /lower || fail "mount of the host's root (9p)"
mount -t tmpfs -o mode=0755 tmpfs /rw
mkdir -p /rw/upper /rw/work
mount -t overlay overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work /newroot || fail "overlay on the host's root"
R=$(uname -r)
mkdir -p /newroot/lib/modules/$R
mount -t 9p -o {P9_RO} kmods /newroot/lib/modules/$R || fail "mount of the module tree (9p)"
mount -t tmpfs -o mode=0755 tmpfs /newroot/run
mkdir -p /newroot/run/tracer-vm
mount -t 9p -o {P9_RW} share /newroot/run/tracer-vm || fail "mount of the result share (9p)"
mount -t tmpfs -o mode=1777 tmpfs /newroot/tmp
cp /stage2 /newroot/run/tracer-vm-init
mount --move /proc /newroot/proc
mount --move /sys /newroot/sys
mount --move /dev /newroot/dev
exec switch_root /newroot /bin/sh /run/tracer-vm-init
"#
    )
}

fn stage2() -> String {
    format!(
        r#"# tracer vm, stage 2: PID 1 in the host's root (overlay). Never exits: powers off.
S=/run/tracer-vm
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mount -t bpf bpf /sys/fs/bpf
mount -t tracefs tracefs /sys/kernel/tracing
mount -t debugfs debugfs /sys/kernel/debug
mount -t securityfs securityfs /sys/kernel/security
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
command -v modprobe > /proc/sys/kernel/modprobe
hostname tracer-vm
ip link set lo up 2>/dev/null
echo "{STARTED}"
/bin/sh $S/cmd.sh < /dev/null > $S/stdout 2> $S/stderr
echo $? > $S/status.tmp
mv $S/status.tmp $S/status
sync
umount $S
echo "tracer-vm: command done"
echo o > /proc/sysrq-trigger
sleep 60
"#
    )
}

/// The initramfs for `kernel`, built once and cached.
pub(super) fn image(kernel: &Kernel) -> Result<PathBuf, Error> {
    let busybox = Path::new("/bin/busybox");
    let bb = fs::read(busybox).map_err(|_| Error::MissingTool {
        tool: "busybox",
        package: "busybox-static",
    })?;
    // The dynamic busybox cannot run in the initramfs (no libc there).
    if has_interpreter(&bb) {
        return Err(Error::MissingTool {
            tool: "a static busybox",
            package: "busybox-static",
        });
    }
    let dep_path = kernel.modules.join("modules.dep");
    let dep = fs::read_to_string(&dep_path).map_err(Error::io("read", &dep_path))?;
    let builtin = fs::read_to_string(kernel.modules.join("modules.builtin")).unwrap_or_default();
    let order = load_order(&dep, &builtin, WANTED).map_err(|module| Error::MissingModule {
        release: kernel.release.clone(),
        module,
    })?;

    let mut key = Sha256::new();
    for part in [
        stage1().as_bytes(),
        stage2().as_bytes(),
        kernel.release.as_bytes(),
        dep.as_bytes(),
    ] {
        key.update(part);
        key.update([0]);
    }
    key.update(kernel.modules.as_os_str().as_encoded_bytes());
    key.update(Sha256::digest(&bb));
    let hex: String = key.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let dir = fetch::cache_dir().join("initramfs");
    let path = dir.join(format!("{}-{hex}.cpio", kernel.release));
    if path.is_file() {
        return Ok(path);
    }
    fs::create_dir_all(&dir).map_err(Error::io("create", &dir))?;

    let mut cpio = Cpio::default();
    for d in [
        "bin", "dev", "proc", "sys", "modules", "lower", "rw", "newroot",
    ] {
        cpio.dir(d);
    }
    // The kernel opens /dev/console for init's stdio before anything is mounted.
    cpio.char_dev("dev/console", 5, 1);
    cpio.file("bin/busybox", 0o755, &bb);
    cpio.symlink("bin/sh", "busybox");
    cpio.file("init", 0o755, stage1().as_bytes());
    cpio.file("stage2", 0o755, stage2().as_bytes());
    let mut names = Vec::new();
    for (i, rel) in order.iter().enumerate() {
        let name = format!("{i:02}-{}.ko", module_name(rel));
        cpio.file(
            &format!("modules/{name}"),
            0o644,
            &decompressed(&kernel.modules.join(rel))?,
        );
        names.push(name);
    }
    cpio.file(
        "modules/order",
        0o644,
        format!("{}\n", names.join("\n")).as_bytes(),
    );

    let tmp = dir.join(format!(
        ".{}-{hex}.tmp-{}",
        kernel.release,
        std::process::id()
    ));
    let mut f = fs::File::create(&tmp).map_err(Error::io("create", &tmp))?;
    f.write_all(&cpio.finish())
        .and_then(|_| f.sync_all())
        .map_err(Error::io("write", &tmp))?;
    fs::rename(&tmp, &path).map_err(Error::io("rename into place", &path))?;
    Ok(path)
}

/// Whether an ELF64 executable names a dynamic loader (a PT_INTERP program header).
fn has_interpreter(elf: &[u8]) -> bool {
    let u16_at = |o: usize| {
        elf.get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()) as usize)
    };
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return true;
    };
    (0..phnum).any(|i| {
        let o = phoff + i * phentsize;
        elf.get(o..o + 4) == Some(&3u32.to_le_bytes()[..])
    })
}

/// A module file's contents, decompressed when it is .ko.xz, .ko.zst or .ko.gz.
fn decompressed(path: &Path) -> Result<Vec<u8>, Error> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let (tool, package) = match ext {
        "ko" => return fs::read(path).map_err(Error::io("read", path)),
        "xz" => ("xz", "xz-utils"),
        "zst" => ("zstd", "zstd"),
        "gz" => ("gzip", "gzip"),
        _ => {
            return Err(Error::NotAKernel {
                path: path.to_owned(),
                reason: "unknown module compression".into(),
            });
        }
    };
    let bin = fetch::tool(tool, package)?;
    let out = fetch::check(
        Command::new(bin).arg("-dc").arg(path),
        &format!("{tool} -dc {}", path.display()),
    )?;
    Ok(out.stdout)
}

/// `kernel/fs/9p/9p.ko.xz` -> `9p`.
fn module_name(rel: &str) -> String {
    let file = rel.rsplit('/').next().unwrap_or(rel);
    file.split(".ko").next().unwrap_or(file).replace('-', "_")
}

/// The insmod order of `wanted` and their dependencies from `modules.dep` (dependencies first,
/// each once), as paths relative to the module tree. Modules built into the kernel
/// (`modules.builtin`) are skipped; a module in neither is returned as the error.
fn load_order(dep: &str, builtin: &str, wanted: &[&str]) -> Result<Vec<String>, String> {
    let mut deps: HashMap<String, (String, Vec<String>)> = HashMap::new();
    for line in dep.lines() {
        let Some((module, rest)) = line.split_once(':') else {
            continue;
        };
        let module = module.trim();
        deps.insert(
            module_name(module),
            (
                module.to_owned(),
                rest.split_whitespace().map(str::to_owned).collect(),
            ),
        );
    }
    let builtin: HashSet<String> = builtin.lines().map(module_name).collect();

    fn visit(
        path: &str,
        deps: &HashMap<String, (String, Vec<String>)>,
        seen: &mut HashSet<String>,
        order: &mut Vec<String>,
    ) {
        if !seen.insert(path.to_owned()) {
            return;
        }
        if let Some((_, ds)) = deps.get(&module_name(path)) {
            // modules.dep lists the nearest dependency first: load from the far end.
            for d in ds.iter().rev() {
                visit(d, deps, seen, order);
            }
        }
        order.push(path.to_owned());
    }

    let (mut seen, mut order) = (HashSet::new(), Vec::new());
    for w in wanted {
        let name = w.replace('-', "_");
        match deps.get(&name) {
            Some((path, _)) => visit(path, &deps, &mut seen, &mut order),
            None if builtin.contains(&name) => {}
            None => return Err((*w).to_owned()),
        }
    }
    Ok(order)
}

/// A cpio archive in the "newc" format the kernel unpacks.
#[derive(Default)]
struct Cpio {
    buf: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, data: &[u8], rdev: (u32, u32)) {
        self.ino += 1;
        let nlink = if mode & 0o170000 == 0o040000 { 2 } else { 1 };
        let fields = [
            self.ino,
            mode,
            0,
            0,
            nlink,
            0,
            data.len() as u32,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0,
        ];
        self.buf.extend_from_slice(b"070701");
        for f in fields {
            self.buf.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad();
        self.buf.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    fn dir(&mut self, name: &str) {
        self.entry(name, 0o040755, &[], (0, 0));
    }

    fn file(&mut self, name: &str, perm: u32, data: &[u8]) {
        self.entry(name, 0o100000 | perm, data, (0, 0));
    }

    fn symlink(&mut self, name: &str, target: &str) {
        self.entry(name, 0o120777, target.as_bytes(), (0, 0));
    }

    fn char_dev(&mut self, name: &str, major: u32, minor: u32) {
        self.entry(name, 0o020600, &[], (major, minor));
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[], (0, 0));
        // The kernel reads the archive in 512-byte blocks.
        while !self.buf.len().is_multiple_of(512) {
            self.buf.push(0);
        }
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // From Debian's 6.12 modules.dep, abridged.
    const DEP: &str = "\
kernel/fs/9p/9p.ko.xz: kernel/fs/netfs/netfs.ko.xz kernel/net/9p/9pnet.ko.xz
kernel/fs/netfs/netfs.ko.xz:
kernel/net/9p/9pnet.ko.xz:
kernel/net/9p/9pnet_virtio.ko.xz: kernel/drivers/virtio/virtio_ring.ko.xz kernel/net/9p/9pnet.ko.xz
kernel/drivers/virtio/virtio_ring.ko.xz:
kernel/drivers/virtio/virtio.ko.xz:
kernel/drivers/virtio/virtio_pci.ko.xz: kernel/drivers/virtio/virtio_pci_legacy_dev.ko.xz kernel/drivers/virtio/virtio_pci_modern_dev.ko.xz kernel/drivers/virtio/virtio_ring.ko.xz kernel/drivers/virtio/virtio.ko.xz
kernel/drivers/virtio/virtio_pci_legacy_dev.ko.xz:
kernel/drivers/virtio/virtio_pci_modern_dev.ko.xz:
";

    fn names(order: &[String]) -> Vec<String> {
        order.iter().map(|p| module_name(p)).collect()
    }

    #[test]
    fn dependencies_load_first_and_once() {
        let order = load_order(DEP, "kernel/fs/overlayfs/overlay.ko\n", WANTED).unwrap();
        let n = names(&order);
        assert_eq!(
            n,
            [
                "virtio",
                "virtio_ring",
                "virtio_pci_modern_dev",
                "virtio_pci_legacy_dev",
                "virtio_pci",
                "9pnet",
                "9pnet_virtio",
                "netfs",
                "9p"
            ]
        );
        for (i, m) in n.iter().enumerate() {
            assert!(!n[i + 1..].contains(m), "{m} twice");
        }
    }

    #[test]
    fn a_module_in_neither_list_is_named() {
        assert_eq!(
            load_order(DEP, "", &["9p", "overlay"]),
            Err("overlay".into())
        );
        assert_eq!(module_name("kernel/fs/overlayfs/overlay.ko.zst"), "overlay");
        assert_eq!(module_name("kernel/x/virtio-pci.ko"), "virtio_pci");
    }

    #[test]
    fn static_and_dynamic_executables_are_told_apart() {
        // /bin/sh (dash) is dynamic on every Debian.
        assert!(has_interpreter(&fs::read("/bin/sh").unwrap()));
        if let Ok(bb) = fs::read("/bin/busybox") {
            println!("/bin/busybox static: {}", !has_interpreter(&bb));
        }
    }

    #[test]
    fn cpio_entries_are_aligned_and_terminated() {
        let mut c = Cpio::default();
        c.file("init", 0o755, b"#!/bin/sh\n");
        c.symlink("bin/sh", "busybox");
        let buf = c.finish();
        assert!(buf.len().is_multiple_of(512));
        assert!(buf.starts_with(b"070701"));
        // name "init" + NUL after the 110-byte header, then data aligned to 4.
        assert_eq!(&buf[110..115], b"init\0");
        assert_eq!(&buf[116..126], b"#!/bin/sh\n");
        let s = String::from_utf8_lossy(&buf);
        assert!(s.contains("TRAILER!!!"));
    }
}
