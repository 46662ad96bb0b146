//! Which iptables backend the node uses — legacy xtables, nf_tables (iptables-nft), or both — from
//! every sign there is: the `iptables` link chain through `/etc/alternatives`, `iptables -V`, the
//! legacy tables the kernel holds, the nf_tables tables, the kubelet's hint chains and the number
//! of `KUBE-*` rules in each backend's save.
//!
//! Everything here only reads. Asking the legacy backend for one table (`iptables-legacy -t nat
//! -L`) makes the kernel register that table, so only whole saves are read: a save lists the
//! tables that exist and creates none.

use std::{
    io,
    path::{Path, PathBuf},
    process::Command,
};

use serde::Serialize;

use super::{
    kubeproxy::{self, Save},
    nft,
};

/// Where kube-proxy's iptables rules live.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// iptables-nft: rules in nf_tables (`table ip nat`, ...).
    Nft,
    /// iptables-legacy: rules in the xtables kernel tables.
    Legacy,
}

impl Backend {
    /// The name as the command line and the reports spell it (`nft`, `legacy`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Nft => "nft",
            Self::Legacy => "legacy",
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What failed while looking at the backends.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to run {program}: {source}")]
    Run { program: String, source: io::Error },
    #[error("{program} failed ({status}): {stderr}")]
    Failed {
        program: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("failed to parse the output of {program}: {source}")]
    Parse {
        program: String,
        source: kubeproxy::Error,
    },
    #[error("failed to parse the JSON of `{program}`: {source}")]
    Json {
        program: String,
        source: serde_json::Error,
    },
    #[error("failed to read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
}

/// The legacy tables of the calling thread's namespace. `thread-self`, not `self`: after `setns`
/// only the calling thread is in the namespace, and `/proc/self/net` shows the main thread's.
pub const IP_TABLES_NAMES: &str = "/proc/thread-self/net/ip_tables_names";

/// A backend as the name of an iptables binary tells it.
pub fn variant_of_binary(name: &str) -> Option<Backend> {
    match name {
        "xtables-legacy-multi" | "iptables-legacy" | "xtables-multi" => Some(Backend::Legacy),
        "xtables-nft-multi" | "iptables-nft" => Some(Backend::Nft),
        _ => None,
    }
}

/// The backend `iptables -V` names: `iptables v1.8.9 (nf_tables)`, `(legacy)`, or before 1.8
/// (`iptables v1.4.21`, CentOS 7) no suffix, which means legacy: there was no other backend.
pub fn parse_version(text: &str) -> Option<Backend> {
    let line = text.lines().find(|l| l.starts_with("iptables v"))?;
    if line.contains("(nf_tables)") {
        Some(Backend::Nft)
    } else if line.contains("(legacy)") || !line.contains('(') {
        Some(Backend::Legacy)
    } else {
        None
    }
}

/// Table names, one a line (`/proc/net/ip_tables_names`).
pub fn parse_table_names(text: &str) -> Vec<String> {
    let mut names: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    names.sort();
    names
}

/// The symlink chain from `path` to the file it finally names (`/usr/sbin/iptables` ->
/// `/etc/alternatives/iptables` -> `/usr/sbin/iptables-nft` -> `xtables-nft-multi`).
pub fn link_chain(path: &Path) -> Vec<PathBuf> {
    let mut chain = vec![path.to_owned()];
    let mut current = path.to_owned();
    // Bounded: a link loop ends the walk.
    for _ in 0..16 {
        let Ok(target) = std::fs::read_link(&current) else {
            break;
        };
        let next = match current.parent() {
            Some(dir) if target.is_relative() => dir.join(&target),
            _ => target,
        };
        chain.push(next.clone());
        current = next;
    }
    chain
}

/// What one backend holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Side {
    /// The save could be read (its tool is installed).
    pub available: bool,
    /// Tables in the save.
    pub tables: Vec<String>,
    /// All rules.
    pub rules: usize,
    /// Rules in a `KUBE-*` chain or jumping to one.
    pub kube_rules: usize,
    /// Declared `KUBE-*` chains.
    pub kube_chains: usize,
    /// The kubelet's hint chains, as `table/chain`.
    pub hint_chains: Vec<String>,
    /// A built-in nat chain jumps to `KUBE-SERVICES` (the Services are reachable).
    pub service_portals: bool,
}

impl Side {
    /// Summarises a parsed save.
    pub fn of(save: &Save) -> Side {
        Side {
            available: true,
            tables: save.tables.iter().map(|t| t.name.clone()).collect(),
            rules: save.rule_count(),
            kube_rules: save.kube_rules(),
            kube_chains: save.kube_chains().len(),
            hint_chains: save.hint_chains(),
            service_portals: save.has_service_portals(),
        }
    }

    /// Holds kube-proxy's or the kubelet's traces (rules or declared chains).
    fn has_kube(&self) -> bool {
        self.kube_rules > 0 || self.kube_chains > 0
    }
}

/// Where kube-proxy's rules are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Only in legacy xtables.
    Legacy,
    /// Only in nf_tables.
    Nft,
    /// Both backends hold `KUBE-*` rules.
    Mixed,
    /// Neither holds any.
    None,
}

/// The verdict on the backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// Where kube-proxy's rules are.
    pub kind: Kind,
    /// For `mixed`: the backend the kubelet and the current kube-proxy use (hint chains, else more
    /// rules); otherwise the one backend with rules.
    pub primary: Option<Backend>,
    /// A backend holding only leftovers: for `mixed` the one that is not primary (unless both
    /// carry the kubelet's hint chains); otherwise the empty backend that still declares `KUBE-*`
    /// chains.
    pub stale: Option<Backend>,
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = |b: Backend| match b {
            Backend::Legacy => "legacy",
            Backend::Nft => "nft",
        };
        match (self.kind, self.primary, self.stale) {
            (Kind::Mixed, Some(p), Some(s)) => {
                write!(f, "mixed ({} current, {} stale)", name(p), name(s))
            }
            (Kind::Mixed, _, _) => write!(f, "mixed"),
            (Kind::None, _, Some(s)) => write!(f, "none ({} stale)", name(s)),
            (Kind::None, _, None) => write!(f, "none"),
            (_, Some(p), Some(s)) => write!(f, "{} ({} stale)", name(p), name(s)),
            (_, Some(p), None) => write!(f, "{}", name(p)),
            (_, None, _) => write!(f, "unknown"),
        }
    }
}

/// Judges where kube-proxy's rules are from both sides.
pub fn verdict(legacy: &Side, nft: &Side) -> Verdict {
    let hinted = |s: &Side| !s.hint_chains.is_empty();
    match (legacy.kube_rules > 0, nft.kube_rules > 0) {
        (true, true) => {
            let primary = match (hinted(legacy), hinted(nft)) {
                (true, false) => Backend::Legacy,
                (false, true) => Backend::Nft,
                _ if legacy.kube_rules > nft.kube_rules => Backend::Legacy,
                _ => Backend::Nft,
            };
            let stale = (hinted(legacy) != hinted(nft) || legacy.kube_rules != nft.kube_rules)
                .then(|| other(primary));
            Verdict {
                kind: Kind::Mixed,
                primary: Some(primary),
                stale,
            }
        }
        (true, false) => Verdict {
            kind: Kind::Legacy,
            primary: Some(Backend::Legacy),
            stale: nft.has_kube().then_some(Backend::Nft),
        },
        (false, true) => Verdict {
            kind: Kind::Nft,
            primary: Some(Backend::Nft),
            stale: legacy.has_kube().then_some(Backend::Legacy),
        },
        (false, false) => Verdict {
            kind: Kind::None,
            primary: None,
            stale: if legacy.has_kube() {
                Some(Backend::Legacy)
            } else if nft.has_kube() {
                Some(Backend::Nft)
            } else {
                None
            },
        },
    }
}

/// The other backend.
pub fn other(b: Backend) -> Backend {
    match b {
        Backend::Legacy => Backend::Nft,
        Backend::Nft => Backend::Legacy,
    }
}

/// What kube-proxy's iptables-wrapper (and so kube-proxy and the kubelet's tools in a container)
/// would pick: the backend with the kubelet's hint chains, nft first; else the one with more rules.
pub fn wrapper_choice(legacy: &Side, nft: &Side) -> Backend {
    if !nft.hint_chains.is_empty() {
        Backend::Nft
    } else if !legacy.hint_chains.is_empty() || legacy.rules > nft.rules {
        Backend::Legacy
    } else {
        Backend::Nft
    }
}

/// Everything the backends show, read in the calling thread's namespace.
#[derive(Debug, Clone, Serialize)]
pub struct Backends {
    /// `/usr/sbin/iptables` and the links it goes through.
    pub iptables_links: Vec<PathBuf>,
    /// The backend the link chain ends in.
    pub link_backend: Option<Backend>,
    /// `iptables -V`.
    pub version: Option<String>,
    /// The backend `iptables -V` names.
    pub version_backend: Option<Backend>,
    /// Legacy tables the kernel holds in this namespace; `None` when `ip_tables` is not loaded.
    pub legacy_tables: Option<Vec<String>>,
    /// nf_tables tables (`FAMILY NAME`); `None` without the `nft` tool.
    pub nft_tables: Option<Vec<String>>,
    /// What the legacy save holds.
    pub legacy: Side,
    /// What the nft save holds.
    pub nft: Side,
    /// Warnings the saves printed (iptables-nft-save's "legacy tables present").
    pub warnings: Vec<String>,
    /// Where kube-proxy's rules are.
    pub verdict: Verdict,
    /// What kube-proxy's iptables-wrapper would pick.
    pub wrapper_choice: Backend,
    /// The parsed saves, for the kube-proxy checks (not rendered).
    #[serde(skip)]
    pub saves: Saves,
}

/// Both backends' saves (`-c`, with counters).
#[derive(Debug, Clone, Default)]
pub struct Saves {
    /// `iptables-legacy-save -c` (or the old `iptables-save` when that is legacy).
    pub legacy: Option<Save>,
    /// `iptables-nft-save -c`.
    pub nft: Option<Save>,
    /// Warnings printed on stderr.
    pub warnings: Vec<String>,
}

impl Saves {
    /// The save of `backend`.
    pub fn of(&self, backend: Backend) -> Option<&Save> {
        match backend {
            Backend::Legacy => self.legacy.as_ref(),
            Backend::Nft => self.nft.as_ref(),
        }
    }
}

/// Runs a tool; `Ok(None)` when it is not installed.
pub(crate) fn run(program: &str, args: &[&str]) -> Result<Option<(String, String)>, Error> {
    let out = match Command::new(program).args(args).output() {
        Ok(out) => out,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(Error::Run {
                program: program.to_owned(),
                source,
            });
        }
    };
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    if !out.status.success() {
        return Err(Error::Failed {
            program: program.to_owned(),
            status: out.status,
            stderr,
        });
    }
    Ok(Some((
        String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr,
    )))
}

/// `nft -j ARGS`, parsed; `Ok(None)` when nft is not installed.
pub(crate) fn nft_json(args: &[&str]) -> Result<Option<nft::Ruleset>, Error> {
    let Some((out, _)) = run("nft", &[&["-j"], args].concat())? else {
        return Ok(None);
    };
    nft::Ruleset::parse(&out)
        .map(Some)
        .map_err(|source| Error::Json {
            program: format!("nft -j {}", args.join(" ")),
            source,
        })
}

pub(crate) fn read_save(program: &str, warnings: &mut Vec<String>) -> Result<Option<Save>, Error> {
    let Some((stdout, stderr)) = run(program, &["-c"])? else {
        return Ok(None);
    };
    warnings.extend(
        stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| format!("{program}: {}", l.trim_start_matches("# "))),
    );
    kubeproxy::parse_save(&stdout)
        .map(Some)
        .map_err(|source| Error::Parse {
            program: program.to_owned(),
            source,
        })
}

/// Reads both saves in the calling thread's namespace. Without `iptables-legacy-save` (before
/// iptables 1.8) the plain `iptables-save` is legacy when `-V` says so. A save whose tool fails,
/// or prints what this parser does not know, is left out with a warning so the other checks still
/// run; a tool that cannot be started at all is an error.
pub fn read_saves() -> Result<Saves, Error> {
    let mut saves = Saves::default();
    let legacy = read_saves_legacy(&mut saves.warnings);
    saves.legacy = tolerate(legacy, &mut saves.warnings)?;
    let nft = read_save("iptables-nft-save", &mut saves.warnings);
    saves.nft = tolerate(nft, &mut saves.warnings)?;
    Ok(saves)
}

/// The value; or, when the tool ran but failed or printed what cannot be parsed, `None` with the
/// error kept as a warning.
fn tolerate<T>(
    result: Result<Option<T>, Error>,
    warnings: &mut Vec<String>,
) -> Result<Option<T>, Error> {
    match result {
        Err(e @ (Error::Failed { .. } | Error::Parse { .. } | Error::Json { .. })) => {
            warnings.push(e.to_string());
            Ok(None)
        }
        other => other,
    }
}

fn read_saves_legacy(warnings: &mut Vec<String>) -> Result<Option<Save>, Error> {
    if let Some(save) = read_save("iptables-legacy-save", warnings)? {
        return Ok(Some(save));
    }
    let version = run("iptables", &["-V"])?.map(|(out, _)| out);
    if version.as_deref().and_then(parse_version) == Some(Backend::Legacy) {
        return read_save("iptables-save", warnings);
    }
    Ok(None)
}

/// Looks at every sign, in the calling thread's namespace.
pub fn detect() -> Result<Backends, Error> {
    let mut iptables_links = link_chain(Path::new("/usr/sbin/iptables"));
    if iptables_links.last().is_some_and(|p| !p.exists()) {
        // A dangling link names no backend.
        iptables_links.push(PathBuf::from("(missing)"));
    }
    let mut saves = read_saves()?;
    let version = tolerate(run("iptables", &["-V"]), &mut saves.warnings)?
        .map(|(out, _)| out.trim().to_owned());
    let legacy_tables = match std::fs::read_to_string(IP_TABLES_NAMES) {
        Ok(text) => Some(parse_table_names(&text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(source) => {
            return Err(Error::Read {
                path: IP_TABLES_NAMES.into(),
                source,
            });
        }
    };
    let nft_tables = tolerate(nft_json(&["list", "tables"]), &mut saves.warnings)?
        .map(|ruleset| ruleset.tables());
    Ok(Backends::assemble(
        iptables_links,
        version,
        legacy_tables,
        nft_tables,
        saves,
    ))
}

impl Backends {
    /// Judges what was read (by [`detect`], or from a node's saved outputs).
    pub fn assemble(
        iptables_links: Vec<PathBuf>,
        version: Option<String>,
        legacy_tables: Option<Vec<String>>,
        nft_tables: Option<Vec<String>>,
        saves: Saves,
    ) -> Backends {
        let link_backend = iptables_links
            .last()
            .and_then(|p| p.file_name())
            .and_then(|n| variant_of_binary(&n.to_string_lossy()));
        let version_backend = version.as_deref().and_then(parse_version);
        let legacy = saves.legacy.as_ref().map(Side::of).unwrap_or_default();
        let nft = saves.nft.as_ref().map(Side::of).unwrap_or_default();
        Backends {
            iptables_links,
            link_backend,
            version,
            version_backend,
            legacy_tables,
            nft_tables,
            verdict: verdict(&legacy, &nft),
            wrapper_choice: wrapper_choice(&legacy, &nft),
            warnings: saves.warnings.clone(),
            legacy,
            nft,
            saves,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::kubeproxy::parse_save;

    const FX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/inspect");

    fn side(path: &str) -> Side {
        Side::of(&parse_save(&std::fs::read_to_string(format!("{FX}/{path}")).unwrap()).unwrap())
    }

    #[test]
    fn binary_names_and_versions() {
        assert_eq!(
            variant_of_binary("xtables-multi"),
            Some(Backend::Legacy),
            "CentOS 7's single binary"
        );
        assert_eq!(
            variant_of_binary("xtables-legacy-multi"),
            Some(Backend::Legacy)
        );
        assert_eq!(variant_of_binary("xtables-nft-multi"), Some(Backend::Nft));
        assert_eq!(variant_of_binary("busybox"), None);
        let v = |p: &str| parse_version(&std::fs::read_to_string(format!("{FX}/{p}")).unwrap());
        assert_eq!(v("centos7/iptables-V.txt"), Some(Backend::Legacy));
        assert_eq!(v("modern/iptables-V.txt"), Some(Backend::Nft));
        assert_eq!(
            parse_version("iptables v1.8.4 (legacy)\n"),
            Some(Backend::Legacy)
        );
        assert_eq!(parse_version("garbage"), None);
    }

    #[test]
    fn tables_from_proc() {
        let names = std::fs::read_to_string(format!("{FX}/centos7/ip_tables_names")).unwrap();
        assert_eq!(parse_table_names(&names), ["filter", "nat"]);
        assert!(parse_table_names("").is_empty());
    }

    #[test]
    fn link_chain_follows_relative_and_absolute_links() {
        // A CentOS 7 layout in a scratch directory: iptables -> xtables-multi.
        let dir = std::env::temp_dir().join(format!("inspect-links-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("alt")).unwrap();
        std::fs::write(dir.join("xtables-multi"), "").unwrap();
        std::os::unix::fs::symlink("xtables-multi", dir.join("iptables")).unwrap();
        let chain = link_chain(&dir.join("iptables"));
        assert_eq!(chain.last().unwrap(), &dir.join("xtables-multi"));
        // Debian: iptables -> /abs/alternatives/iptables -> iptables-nft -> xtables-nft-multi.
        std::fs::write(dir.join("xtables-nft-multi"), "").unwrap();
        std::os::unix::fs::symlink("xtables-nft-multi", dir.join("iptables-nft")).unwrap();
        std::os::unix::fs::symlink(dir.join("iptables-nft"), dir.join("alt/iptables")).unwrap();
        std::os::unix::fs::symlink(dir.join("alt/iptables"), dir.join("iptables2")).unwrap();
        let chain = link_chain(&dir.join("iptables2"));
        assert_eq!(chain.len(), 4, "{chain:?}");
        assert_eq!(
            chain.last().unwrap().file_name().unwrap(),
            "xtables-nft-multi"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn verdicts_for_modern_centos7_and_mixed_nodes() {
        let empty = Side {
            available: true,
            ..Side::default()
        };
        let modern = side("modern/iptables-nft-save-c.txt");
        let v = verdict(&empty, &modern);
        assert_eq!(
            (v.kind, v.primary, v.stale),
            (Kind::Nft, Some(Backend::Nft), None)
        );
        assert_eq!(v.to_string(), "nft");
        assert_eq!(wrapper_choice(&empty, &modern), Backend::Nft);

        let centos = side("centos7/iptables-save-c.txt");
        let v = verdict(&centos, &Side::default());
        assert_eq!((v.kind, v.primary), (Kind::Legacy, Some(Backend::Legacy)));
        // No hint chains: the wrapper falls back to counting rules.
        assert_eq!(wrapper_choice(&centos, &Side::default()), Backend::Legacy);

        let v = verdict(
            &side("mixed/iptables-legacy-save-c.txt"),
            &side("mixed/iptables-nft-save-c.txt"),
        );
        assert_eq!(
            (v.kind, v.primary, v.stale),
            (Kind::Mixed, Some(Backend::Nft), Some(Backend::Legacy))
        );
        assert_eq!(v.to_string(), "mixed (nft current, legacy stale)");

        // Leftover empty KUBE-* chains in the other backend.
        let leftovers = Side {
            available: true,
            kube_chains: 3,
            ..Side::default()
        };
        let v = verdict(&leftovers, &modern);
        assert_eq!((v.kind, v.stale), (Kind::Nft, Some(Backend::Legacy)));
    }

    #[test]
    fn a_failing_save_is_a_warning_a_missing_launch_an_error() {
        use std::os::unix::process::ExitStatusExt as _;
        let mut warnings = Vec::new();
        let failed: Result<Option<()>, Error> = Err(Error::Failed {
            program: "iptables-nft-save".into(),
            status: std::process::ExitStatus::from_raw(256),
            stderr: "Could not fetch rule set generation id".into(),
        });
        assert!(tolerate(failed, &mut warnings).unwrap().is_none());
        assert!(
            warnings[0].starts_with("iptables-nft-save failed"),
            "{warnings:?}"
        );
        let run: Result<Option<()>, Error> = Err(Error::Run {
            program: "nft".into(),
            source: io::Error::from(io::ErrorKind::PermissionDenied),
        });
        assert!(tolerate(run, &mut warnings).is_err());
        assert_eq!(warnings.len(), 1);
    }

    // Scenario (root): reading the legacy save in a namespace without legacy tables creates none.
    #[test]
    fn legacy_save_creates_no_table() {
        std::thread::scope(|s| {
            s.spawn(|| {
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                    .expect("unshare needs root");
                let before = std::fs::read_to_string(IP_TABLES_NAMES).unwrap_or_default();
                assert_eq!(before, "", "a fresh namespace has no legacy tables");
                let b = detect().unwrap();
                assert!(
                    b.legacy.available && b.legacy.tables.is_empty(),
                    "{:?}",
                    b.legacy
                );
                assert_eq!(
                    std::fs::read_to_string(IP_TABLES_NAMES).unwrap_or_default(),
                    ""
                );
                assert_eq!(b.nft_tables, Some(vec![]));
                assert_eq!(b.verdict.kind, Kind::None);
            })
            .join()
            .unwrap()
        });
    }
}
