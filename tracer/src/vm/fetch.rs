//! A kernel spec to an unpacked, depmod'ed kernel under `/var/cache/tracer/kernels/<package>/`.
//!
//! Packages come from Debian's archive through a private apt configuration (its own sources, lists
//! and cache under `/var/cache/tracer/apt/`), so the system's sources are never touched. An entry is
//! unpacked into `.<package>.tmp-<pid>` and renamed into place when complete: a killed run leaves
//! only a temp dir, which the next prepare of that package removes (under a per-package lock).

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use super::{Error, Kernel, KernelSpec};

/// Everything the VM runner caches (kernels, apt state, initramfs images).
pub fn cache_dir() -> PathBuf {
    PathBuf::from("/var/cache/tracer")
}

/// The suites the private apt configuration reads (main only): every kernel the aliases pin, and
/// any other image of these suites by name.
const SOURCES: &str = "\
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bullseye main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm-backports main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main
";

/// Downloads (for a package), unpacks and depmods a kernel, or finds it in the cache.
pub fn prepare(spec: &KernelSpec) -> Result<Kernel, Error> {
    match spec {
        KernelSpec::Dir(dir) => locate(dir),
        KernelSpec::Package(package) => {
            validate_package_name(package)?;
            cached_or(package, |tmp| {
                let deb = download(package, tmp)?;
                let kernel = unpack(&deb, tmp);
                let _ = fs::remove_file(&deb);
                kernel
            })
        }
        KernelSpec::Deb(deb) => {
            let key = deb
                .file_name()
                .and_then(|n| n.to_str())
                .map(|n| n.trim_end_matches(".deb").to_owned())
                .ok_or_else(|| Error::NotAKernel {
                    path: deb.clone(),
                    reason: "no file name".into(),
                })?;
            cached_or(&key, |tmp| unpack(deb, tmp))
        }
    }
}

/// The kernels in the cache, by package (or .deb file name).
pub fn cached() -> Vec<(String, Kernel)> {
    let Ok(entries) = fs::read_dir(cache_dir().join("kernels")) else {
        return Vec::new();
    };
    let mut found: Vec<(String, Kernel)> = entries
        .flatten()
        .filter(|e| e.path().is_dir())
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_owned();
            if name.starts_with('.') {
                return None;
            }
            Some((name, locate(&e.path()).ok()?))
        })
        .collect();
    found.sort_by(|a, b| a.0.cmp(&b.0));
    found
}

/// Apt package names are `[a-z0-9][a-z0-9+.-]+`; anything else must not reach a command line or a path.
/// A name that is no kernel package (`9.99`, a mistyped alias) is refused here, before apt
/// refreshes its lists to look for it (half a minute or more).
fn validate_package_name(package: &str) -> Result<(), Error> {
    if !package.starts_with("linux-image-") {
        return Err(Error::UnknownKernel {
            spec: package.to_owned(),
        });
    }
    let ok = package.len() > 1
        && package
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+.-".contains(&b))
        && package.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(Error::PackageNotFound {
            package: package.to_owned(),
        })
    }
}

/// The cached entry `key`, or `fill` run on a fresh temp dir that is then renamed into place.
fn cached_or(
    key: &str,
    fill: impl FnOnce(&Path) -> Result<Kernel, Error>,
) -> Result<Kernel, Error> {
    let kernels = cache_dir().join("kernels");
    let entry = kernels.join(key);
    if let Ok(kernel) = locate(&entry) {
        return Ok(kernel);
    }
    fs::create_dir_all(&kernels).map_err(Error::io("create", &kernels))?;
    let lock_path = kernels.join(format!(".{key}.lock"));
    let lock_file = fs::File::create(&lock_path).map_err(Error::io("create", &lock_path))?;
    let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| Error::io("lock", &lock_path)(e.into()))?;
    // Another process may have filled it while we waited for the lock.
    if let Ok(kernel) = locate(&entry) {
        return Ok(kernel);
    }
    // What a killed run left: temp dirs of this key, and an entry that does not locate.
    remove_stale(&kernels, key);
    if entry.exists() {
        fs::remove_dir_all(&entry).map_err(Error::io("remove", &entry))?;
    }
    let tmp = kernels.join(format!(".{key}.tmp-{}", std::process::id()));
    fs::create_dir_all(&tmp).map_err(Error::io("create", &tmp))?;
    let result = fill(&tmp).and_then(|_| {
        fs::rename(&tmp, &entry).map_err(Error::io("rename into place", &entry))?;
        locate(&entry)
    });
    if result.is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    result
}

fn remove_stale(kernels: &Path, key: &str) {
    let prefix = format!(".{key}.tmp-");
    for e in fs::read_dir(kernels).into_iter().flatten().flatten() {
        if e.file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(&prefix))
        {
            log::info!("vm: removing {} (left by a killed run)", e.path().display());
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

/// `apt-get` with the private configuration.
fn apt(tool: &str) -> Result<Command, Error> {
    let apt = cache_dir().join("apt");
    let lists = apt.join("lists");
    let archives = apt.join("cache/archives");
    for d in [lists.join("partial"), archives.join("partial")] {
        fs::create_dir_all(&d).map_err(Error::io("create", &d))?;
    }
    let sources = apt.join("sources.list");
    if fs::read_to_string(&sources).ok().as_deref() != Some(SOURCES) {
        fs::write(&sources, SOURCES).map_err(Error::io("write", &sources))?;
    }
    let mut cmd = Command::new(tool);
    cmd.arg("-q")
        .arg(format!("-oDir::Etc::sourcelist={}", sources.display()))
        .arg("-oDir::Etc::sourceparts=-")
        .arg(format!("-oDir::State::Lists={}", lists.display()))
        .arg(format!("-oDir::Cache={}", apt.join("cache").display()))
        .arg("-oAPT::Get::List-Cleanup=0")
        // Root downloads into our own directories; the _apt sandbox user could not write there.
        .arg("-oAPT::Sandbox::User=root")
        .env("DEBIAN_FRONTEND", "noninteractive");
    Ok(cmd)
}

/// Downloads `package`'s .deb into `dir`, refreshing the private lists once if it is not found.
fn download(package: &str, dir: &Path) -> Result<PathBuf, Error> {
    let lists = cache_dir().join("apt/lists");
    let have_lists = fs::read_dir(&lists)
        .map(|d| {
            d.flatten().any(|e| {
                e.file_name().to_string_lossy().ends_with("Packages")
                    || e.file_name().to_string_lossy().contains("Packages.")
            })
        })
        .unwrap_or(false);
    if !have_lists {
        update()?;
    }
    // apt-get download drops privileges for the download unless told otherwise; the dir is root's.
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).map_err(Error::io("chmod", dir))?;
    for attempt in 0..2 {
        let mut cmd = apt("apt-get")?;
        cmd.arg("download").arg(package).current_dir(dir);
        let out = cmd.output().map_err(|e| missing_or("apt-get", "apt", e))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            return fs::read_dir(dir)
                .map_err(Error::io("read", dir))?
                .flatten()
                .map(|e| e.path())
                .find(|p| p.extension().is_some_and(|x| x == "deb"))
                .ok_or_else(|| Error::Command {
                    command: format!("apt-get download {package}"),
                    detail: "no .deb written".into(),
                });
        }
        let not_found = stderr.contains("Unable to locate package")
            || stderr.contains("has no installation candidate")
            || stderr.contains("Can't select");
        if !not_found {
            return Err(Error::Command {
                command: format!("apt-get download {package}"),
                detail: tail(&stderr, 5),
            });
        }
        if attempt == 0 && have_lists {
            update()?;
        } else {
            break;
        }
    }
    Err(Error::PackageNotFound {
        package: package.to_owned(),
    })
}

fn update() -> Result<(), Error> {
    log::info!(
        "vm: refreshing the private apt lists (bullseye, bookworm, bookworm-backports, trixie)"
    );
    let mut cmd = apt("apt-get")?;
    cmd.arg("update");
    check(&mut cmd, "apt-get update (private sources)").map(drop)
}

/// Unpacks a linux-image .deb into `root` and runs depmod there.
fn unpack(deb: &Path, root: &Path) -> Result<Kernel, Error> {
    let mut cmd = Command::new("dpkg-deb");
    cmd.arg("-x").arg(deb).arg(root);
    check(&mut cmd, &format!("dpkg-deb -x {}", deb.display()))?;
    // 6.12 packages put modules under usr/lib/modules (merged /usr); keep one layout in the cache.
    let usr_modules = root.join("usr/lib/modules");
    let modules = root.join("lib/modules");
    if usr_modules.is_dir() && !modules.exists() {
        fs::create_dir_all(root.join("lib")).map_err(Error::io("create", root.join("lib")))?;
        fs::rename(&usr_modules, &modules).map_err(Error::io("move", &usr_modules))?;
    }
    let release = release_of(root)?;
    let depmod = tool("depmod", "kmod")?;
    let mut cmd = Command::new(depmod);
    cmd.arg("-b").arg(root).arg(&release);
    check(&mut cmd, &format!("depmod -b {} {release}", root.display()))?;
    locate(root)
}

/// The one release under `root/lib/modules` (or `usr/lib/modules`).
fn release_of(root: &Path) -> Result<String, Error> {
    let not = |reason: &str| Error::NotAKernel {
        path: root.to_owned(),
        reason: reason.to_owned(),
    };
    let dir = [root.join("lib/modules"), root.join("usr/lib/modules")]
        .into_iter()
        .find(|d| d.is_dir())
        .ok_or_else(|| not("no lib/modules/"))?;
    let mut releases: Vec<String> = fs::read_dir(&dir)
        .map_err(Error::io("read", &dir))?
        .flatten()
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .collect();
    match releases.len() {
        1 => Ok(releases.remove(0)),
        0 => Err(not("lib/modules/ is empty")),
        _ => Err(not(&format!(
            "several releases in lib/modules/: {}",
            releases.join(", ")
        ))),
    }
}

/// The kernel in an unpacked tree.
fn locate(root: &Path) -> Result<Kernel, Error> {
    let release = release_of(root)?;
    let modules = [root.join("lib/modules"), root.join("usr/lib/modules")]
        .into_iter()
        .map(|d| d.join(&release))
        .find(|d| d.is_dir())
        .expect("release_of found it");
    let vmlinuz = root.join("boot").join(format!("vmlinuz-{release}"));
    if !vmlinuz.is_file() {
        return Err(Error::NotAKernel {
            path: root.to_owned(),
            reason: format!("no boot/vmlinuz-{release}"),
        });
    }
    if !modules.join("modules.dep").is_file() {
        return Err(Error::NotAKernel {
            path: root.to_owned(),
            reason: format!(
                "no modules.dep in {} (run depmod -b {} {release})",
                modules.display(),
                root.display()
            ),
        });
    }
    Ok(Kernel {
        release,
        vmlinuz,
        modules,
    })
}

/// The path of a tool from a Debian package, or which package to install.
pub(super) fn tool(name: &'static str, package: &'static str) -> Result<PathBuf, Error> {
    ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
        .ok_or(Error::MissingTool {
            tool: name,
            package,
        })
}

fn missing_or(tool: &'static str, package: &'static str, e: std::io::Error) -> Error {
    if e.kind() == std::io::ErrorKind::NotFound {
        Error::MissingTool { tool, package }
    } else {
        Error::Command {
            command: tool.to_owned(),
            detail: e.to_string(),
        }
    }
}

/// Runs a command; a failure carries the tail of its stderr.
pub(super) fn check(cmd: &mut Command, what: &str) -> Result<std::process::Output, Error> {
    let out = cmd.output().map_err(|e| Error::Command {
        command: what.to_owned(),
        detail: e.to_string(),
    })?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(Error::Command {
            command: what.to_owned(),
            detail: format!(
                "{}: {}",
                out.status,
                tail(&String::from_utf8_lossy(&out.stderr), 5)
            ),
        })
    }
}

/// The last `n` lines of `s`.
pub(super) fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_names_are_checked_before_reaching_apt() {
        assert!(validate_package_name("linux-image-6.12.117+deb13-amd64").is_ok());
        assert!(validate_package_name("-oDebug=1").is_err());
        assert!(validate_package_name("../etc").is_err());
        assert!(validate_package_name("a b").is_err());
    }

    #[test]
    fn an_unpacked_tree_is_located_and_a_half_one_is_not() {
        let root = std::env::temp_dir().join(format!("tracer-vm-locate-{}", std::process::id()));
        let modules = root.join("usr/lib/modules/6.12.1-amd64");
        fs::create_dir_all(&modules).unwrap();
        fs::create_dir_all(root.join("boot")).unwrap();
        fs::write(root.join("boot/vmlinuz-6.12.1-amd64"), b"").unwrap();
        assert!(
            matches!(locate(&root), Err(Error::NotAKernel { .. })),
            "no modules.dep yet"
        );
        fs::write(modules.join("modules.dep"), b"").unwrap();
        let k = locate(&root).unwrap();
        assert_eq!(k.release, "6.12.1-amd64");
        assert_eq!(k.modules, modules);
        fs::remove_dir_all(&root).unwrap();
    }
}
