//! Every command-line type of the tracer.

use std::net::IpAddr;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::{
    lab::{FaultName, IpFamily, ProxyMode},
    node::Backend,
    probes::plan::Tier,
};

/// Every command's exit codes (README: "Exit codes").
pub const EXIT_CODES: &str = "Exit codes: 0 ok; 1 an error (one line on stderr: `error: COMMAND: what failed: why`); 2 bad usage (an unknown flag, a malformed or out-of-range value); 3 `compare` found a regression; 4 a `validate` scenario failed; 5 missing privileges (root or CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN, CAP_SYS_ADMIN); 6 `doctor` found the node degraded, 7 broken; 8 `fleet` found an odd node out; 130 `lab up`, `validate`, `doctor` or `vm run` stopped by SIGINT or SIGTERM (what it made is removed; `trace` and `probe` stop with their summary and exit 0).";

/// The longest time a flag takes, in seconds (a year): more overflows time arithmetic.
const MAX_SECONDS: f64 = 366.0 * 24.0 * 3600.0;

/// Follows Kubernetes DNS queries through the Service IP, conntrack and DNAT, and says where each
/// one that got no answer died.
#[derive(Debug, Parser)]
#[command(name = "tracer", version, about, after_help = EXIT_CODES)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// A simulated Kubernetes node in network namespaces, with real DNS pods and faults.
    Lab(LabArgs),
    /// Send DNS queries at a fixed rate and count what comes back.
    Probe(ProbeArgs),
    /// Follow every DNS query through the Service IP, conntrack and DNAT; say where each failed one died.
    Trace(TraceArgs),
    /// Load every eBPF program (the verifier checks each), attach none, and say which hook tier
    /// tracing gets on this kernel and why each program would or would not attach.
    Hooks(HooksArgs),
    /// The node's state without eBPF, read-only: iptables backend, kube-proxy, DNS Service, conntrack.
    Inspect(InspectArgs),
    /// Put two reports side by side and flag regressions (exit code 3 when there is one).
    Compare(CompareArgs),
    /// Put node reports side by side, one row per node, and flag the nodes that differ from the
    /// rest (exit code 8 when one does).
    Fleet(FleetArgs),
    /// Run the lab's scenarios on this kernel with the tracer and check each is caught and placed.
    Validate(ValidateArgs),
    /// Boot another kernel (Debian's 5.10, 6.1, 6.12, a .deb or a directory) under qemu with this
    /// machine's root filesystem and run one command in it.
    Vm(VmArgs),
    /// Diagnose DNS on this node in one run: the read-only checks, a short traced probe through
    /// the Service IP from a pod, then one page: verdict, ranked causes with evidence and fix,
    /// every check (exit code 0 healthy, 6 degraded, 7 broken).
    Doctor(DoctorArgs),
    /// Print shell completions for SHELL on stdout.
    Completions(CompletionsArgs),
    /// Print the man page (roff) on stdout.
    Man,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  tracer doctor --lab\n  tracer doctor --netns cni-1234 --output json\n  tracer doctor --server 10.96.0.10 --report doctor.json\n\nExit codes: 0 healthy, 6 degraded (a few queries lost, or a problem on the node), 7 broken (10 % or more lost), 1 an error, 2 bad usage."
)]
pub struct DoctorArgs {
    /// Diagnose the lab: send from its client0 pod, read its node namespace.
    #[arg(long, conflicts_with = "netns")]
    pub lab: bool,
    /// The lab `--lab` uses.
    #[arg(long, env = "TRACER_LAB_PREFIX", default_value = "trl")]
    pub prefix: String,
    /// Send from this pod network namespace (`ip netns` name); default: the first in /run/netns
    /// with a veth `eth0` and no DNS server.
    #[arg(long)]
    pub netns: Option<String>,
    /// The DNS Service, `IP[:PORT]` (default: the lab's, else the kube-dns Service in the rules).
    #[arg(long, value_parser = parse_ip_port)]
    pub server: Option<(IpAddr, Option<u16>)>,
    /// Lookups the probe sends.
    #[arg(long, default_value_t = 40, value_parser = clap::value_parser!(u32).range(1..))]
    pub count: u32,
    /// Lookups per second (0.01 to 1000000).
    #[arg(long, default_value_t = 40.0, value_parser = parse_rate, allow_negative_numbers = true)]
    pub rate: f64,
    /// Seconds the probe waits for each answer (over 3 s: the kernel's neighbour resolution of a
    /// pod gone silent takes that long to give up, and the tracer then names it).
    #[arg(long, default_value_t = 3.5, value_parser = parse_seconds, allow_negative_numbers = true)]
    pub timeout: f64,
    /// Send one query (A) per lookup, as resolv.conf's `options single-request` makes glibc do;
    /// by default each lookup sends A and AAAA at once from one socket, as glibc pods do (the
    /// pattern that races in conntrack).
    #[arg(long)]
    pub single_request: bool,
    #[command(flatten)]
    pub out: Output,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  tracer completions bash > /etc/bash_completion.d/tracer\n  tracer completions zsh > ~/.zfunc/_tracer"
)]
pub struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// Where a command that reports writes its results (trace, probe, inspect, validate).
#[derive(Debug, Args)]
pub struct Output {
    /// Output format: text for people, or JSON (trace: one JSON line per query, then the summary).
    #[arg(long = "output", value_enum, default_value_t = OutputFormat::Text)]
    pub format: OutputFormat,
    /// Also write a versioned JSON report (node facts and this command's results) to this file.
    #[arg(long, value_name = "FILE")]
    pub report: Option<std::path::PathBuf>,
}

/// How results are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Lines and tables for people.
    Text,
    /// JSON (one object per line for streams).
    Json,
}

#[derive(Debug, Args)]
pub struct HooksArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  tracer trace --lab\n  tracer trace --service 10.96.0.10 --duration 60\n  tracer trace --lab --all --output json\n  tracer trace --lab --hooks tracepoint --slow-ms 20\n  tracer trace --lab --metrics\n  tracer trace --metrics 10.0.0.5:9745"
)]
pub struct TraceArgs {
    /// Trace the lab: its node namespace, Service IP, endpoints and pods.
    #[arg(long)]
    pub lab: bool,
    /// The lab's prefix.
    #[arg(long, env = "TRACER_LAB_PREFIX", default_value = "trl")]
    pub prefix: String,
    /// The DNS Service, `IP[:PORT]` (default: the lab's, else the kube-dns Service in the rules).
    #[arg(long, value_parser = parse_ip_port)]
    pub service: Option<(IpAddr, Option<u16>)>,
    /// The namespace (in /run/netns) holding the node side of the pod links (default: the
    /// tracer's own, as on a node; on the lab: its node namespace).
    #[arg(long)]
    pub links_netns: Option<String>,
    /// Only trace these namespaces (names in /run/netns); repeat for several.
    #[arg(long = "netns")]
    pub netns: Vec<String>,
    /// Only queries from or to this pod IP.
    #[arg(long)]
    pub pod_ip: Option<IpAddr>,
    /// Which hooks the deep stages use: auto (the best this kernel offers), fentry, kprobe or
    /// tracepoint.
    #[arg(long, value_parser = parse_hooks, default_value = "auto")]
    pub hooks: Hooks,
    /// Name the netfilter rule that decided each failed query, on every hook tier, from
    /// netfilter's own tracing of DNS packets (a table of the tracer's own that sets nftrace, and
    /// where the Service's rules are in legacy xtables, raw-table TRACE rules); removed on exit
    /// and by the next start after a kill.
    #[arg(long)]
    pub rules: bool,
    /// A line for every query, answered ones included (costs a record per query).
    #[arg(long)]
    pub all: bool,
    /// Report answered queries slower than this, in milliseconds.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(..=3_600_000))]
    pub slow_ms: u64,
    /// A query with no answer after this many seconds is unanswered (glibc's resolver waits 5 s;
    /// the kernel gives up on an unresolved neighbour after about 3 s).
    #[arg(long, default_value_t = 5.0, value_parser = parse_seconds, allow_negative_numbers = true)]
    pub timeout: f64,
    /// Stop after this many seconds (default: at Ctrl-C).
    #[arg(long, value_parser = parse_seconds, allow_negative_numbers = true)]
    pub duration: Option<f64>,
    /// Print the whole hook plan (every program, attached or why not) instead of its one line.
    #[arg(short, long)]
    pub verbose: bool,
    /// Serve Prometheus metrics at http://ADDR/metrics while tracing (default ADDR:
    /// 127.0.0.1:9745, loopback). Every query is counted, answered ones too: the kernel hands
    /// over a record per query, as with --all, but only the lines --all would add are left out.
    #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = "127.0.0.1:9745")]
    pub metrics: Option<std::net::SocketAddr>,
    #[command(flatten)]
    pub out: Output,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  tracer lab up --backend nft\n  tracer lab up --proxy-mode nftables\n  tracer lab fault filter-drop\n  tracer lab fault clear\n  tracer lab down"
)]
pub struct LabArgs {
    /// Prefix of every namespace, interface and process name the lab creates.
    #[arg(long, env = "TRACER_LAB_PREFIX", default_value = "trl", global = true)]
    pub prefix: String,
    #[command(subcommand)]
    pub action: LabAction,
}

#[derive(Debug, Subcommand)]
pub enum LabAction {
    /// Build the node (cleaning what a killed run left first).
    Up {
        /// Where kube-proxy's rules live.
        #[arg(long, value_enum, default_value_t = Backend::Nft)]
        backend: Backend,
        /// kube-proxy's mode: its iptables rules, its nftables table (`ip kube-proxy`, verdict
        /// maps; needs the nft backend), or IPVS (virtual services on kube-ipvs0, ipsets; needs
        /// the kernel's ip_vs).
        #[arg(long, value_enum, default_value_t = ProxyMode::Iptables)]
        proxy_mode: ProxyMode,
        /// Number of client pods.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=200))]
        clients: u8,
        /// The DNS Service's and pods' IP families (ipv6 and dual add `fd00:10:244::/64` pod
        /// addresses, the Service `fd00:10:96::a` and kube-proxy's ip6tables rules).
        ///
        /// Example: tracer lab up --ip-family dual
        #[arg(long, value_enum, default_value_t = IpFamily::Ipv4)]
        ip_family: IpFamily,
        /// Run NodeLocal DNSCache: a caching DNS server in the node namespace on 169.254.20.10
        /// and the kube-dns ClusterIP (link `nodelocaldns`), node-cache's NOTRACK and ACCEPT
        /// rules, and the `kube-dns-upstream` Service (10.96.0.11) for its misses.
        ///
        /// Example: tracer lab up --nodelocal --backend legacy
        #[arg(long)]
        nodelocal: bool,
    },
    /// Remove every namespace, interface, rule and process the lab made.
    Down,
    /// Show the lab's pods, addresses, backend and active faults.
    Status,
    /// Break the node in one real way, or `clear` every fault.
    Fault(FaultArgs),
    /// Add a client pod to the running lab, or delete one added (as pods come and go on a node
    /// while `tracer trace --lab` runs).
    #[command(subcommand)]
    Pod(PodAction),
}

#[derive(Debug, Subcommand)]
#[command(after_help = "Examples:\n  tracer lab pod add late\n  tracer lab pod del late")]
pub enum PodAction {
    /// Add client pod NAME: namespace {prefix}-pod-NAME, a veth to the lab's bridge
    /// ({prefix}pNAME on the node), an address from 10.244.0.220 up. `lab down` removes it.
    Add {
        /// 1 to 6 lowercase letters and digits, starting with a letter.
        name: String,
    },
    /// Delete client pod NAME added with `pod add`.
    Del {
        /// The name it was added with.
        name: String,
    },
}

#[derive(Debug, Args)]
pub struct FaultArgs {
    /// The fault to inject.
    #[arg(value_enum)]
    pub name: FaultName,
    /// Only this DNS pod (0 or 1), where the fault is per pod; default: as the fault describes.
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub pod: Option<u8>,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  tracer probe --lab\n  tracer probe --lab --rate 100 --duration 10 --type A --type AAAA --report before.json\n  tracer probe --lab --count 200 --parallel-a-aaaa --output json\n  tracer probe --netns trl-client0 --server 10.96.0.10:53 --name kube-dns.kube-system.svc.cluster.local"
)]
pub struct ProbeArgs {
    /// Query the lab's DNS Service from its client0 pod (following its stale-conntrack and
    /// conntrack-race faults: their source port, parallel A/AAAA).
    #[arg(long, conflicts_with = "netns")]
    pub lab: bool,
    /// The lab `--lab` uses.
    #[arg(long, env = "TRACER_LAB_PREFIX", default_value = "trl")]
    pub prefix: String,
    /// Send from this network namespace (`ip netns` name); default: the tracer's own.
    #[arg(long)]
    pub netns: Option<String>,
    /// The DNS server, `IP[:PORT]` (port 53 by default); default: the lab's Service IP with
    /// `--lab`, else the kube-dns Service in this node's rules.
    #[arg(long, value_parser = parse_ip_port)]
    pub server: Option<(IpAddr, Option<u16>)>,
    /// Number of lookups (default: rate × duration).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub count: Option<u32>,
    /// Lookups per second (0.01 to 1000000).
    #[arg(long, default_value_t = 50.0, value_parser = parse_rate, allow_negative_numbers = true)]
    pub rate: f64,
    /// Seconds to send for (ignored with `--count`).
    #[arg(long, default_value_t = 30.0, value_parser = parse_seconds, allow_negative_numbers = true)]
    pub duration: f64,
    /// Name to ask for; repeat to use several in turn.
    #[arg(long = "name", default_value = "kubernetes.default.svc.cluster.local")]
    pub names: Vec<String>,
    /// Query type (A, AAAA, TXT, ...); repeat to use several in turn.
    #[arg(long = "type", default_value = "A", value_parser = crate::measure::parse_qtype)]
    pub types: Vec<crate::measure::RecordType>,
    /// Seconds to wait for each answer.
    #[arg(long, default_value_t = 2.0, value_parser = parse_seconds, allow_negative_numbers = true)]
    pub timeout: f64,
    /// Send every query from this UDP source port (one conntrack flow) instead of a fresh one.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub source_port: Option<u16>,
    /// Send A and AAAA together from one socket for every lookup, as glibc does.
    #[arg(long)]
    pub parallel_a_aaaa: bool,
    /// Do not run the tracer alongside: losses are then counted, not attributed.
    #[arg(long)]
    pub no_trace: bool,
    #[command(flatten)]
    pub out: Output,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  tracer inspect\n  tracer inspect --lab\n  tracer inspect --netns trl-node --output json\n  tracer inspect --tier"
)]
pub struct InspectArgs {
    /// Inspect the lab's node namespace.
    #[arg(long, conflicts_with = "netns")]
    pub lab: bool,
    /// The lab `--lab` uses.
    #[arg(long, env = "TRACER_LAB_PREFIX", default_value = "trl")]
    pub prefix: String,
    /// Run the checks inside this network namespace (`ip netns` name); default: the tracer's own.
    #[arg(long)]
    pub netns: Option<String>,
    /// Find the hook tier by loading every eBPF program (as `tracer hooks` does, attaching none);
    /// without it inspect loads nothing and the tier comes from feature checks (fentry unknown).
    #[arg(long)]
    pub tier: bool,
    #[command(flatten)]
    pub out: Output,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  tracer compare before.json after.json\n  tracer compare before.json after.json --max-loss-increase 0.5 --output json\n\nExit codes: 0 no regression, 3 a regression, 1 an error (an unreadable or malformed report, another schema version), 2 bad usage."
)]
pub struct CompareArgs {
    /// The earlier report (`--report` of probe, trace, inspect or validate).
    pub before: std::path::PathBuf,
    /// The later report.
    pub after: std::path::PathBuf,
    /// A rise of the loss by more than this many percentage points is a regression.
    #[arg(long, default_value_t = 1.0, value_parser = parse_non_negative, allow_negative_numbers = true)]
    pub max_loss_increase: f64,
    /// A p99 latency rise by more than this many percent is a regression ...
    #[arg(long, default_value_t = 50.0, value_parser = parse_non_negative, allow_negative_numbers = true)]
    pub max_p99_increase_percent: f64,
    /// ... when it is also more than this many milliseconds (below that it is noise).
    #[arg(long, default_value_t = 10.0, value_parser = parse_non_negative, allow_negative_numbers = true)]
    pub min_p99_increase_ms: f64,
    /// A rise of the drops for one reason by more than this many is a regression.
    #[arg(long, default_value_t = 0)]
    pub max_drop_increase: u64,
    /// A rise of conntrack's drop or insert_failed statistic by more than this is a regression.
    #[arg(long, default_value_t = 0)]
    pub max_conntrack_drop_increase: u64,
    /// Output format: a side-by-side table, or one JSON object.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  tracer fleet reports/\n  tracer fleet node-a.json node-b.json node-c.json --output json\n\nCollect the reports with `tracer inspect --report FILE` or `tracer probe --report FILE` on each node.\n\nExit codes: 0 the nodes agree, 8 a node is odd out (its backend, kube-proxy mode, kernel with its DNS loss, conntrack usage, UDP timeouts or br_netfilter differ), 1 an error, 2 bad usage."
)]
pub struct FleetArgs {
    /// Node reports (`--report` of inspect or probe, one per node), or directories whose *.json
    /// files are.
    #[arg(required = true, value_name = "REPORT|DIR")]
    pub reports: Vec<std::path::PathBuf>,
    /// Output format: a table and the findings, or one JSON object.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  tracer validate --report kernel-6.18.json\n  tracer validate --backend nft --scenario filter-drop\n  tracer validate --kernel linux-image-6.12.117+deb13-amd64 --report candidate.json\n  tracer validate --kernel 6.1 --scenario healthy --vm-timeout 600\n  tracer compare kernel-6.12.json kernel-6.18.json\n\nExit codes: 0 every scenario passed, 4 one failed, 1 an error, 2 bad usage."
)]
pub struct ValidateArgs {
    /// Prefix of the lab validate brings up (and down) for its scenarios.
    #[arg(long, env = "TRACER_VALIDATE_PREFIX", default_value = "trv")]
    pub prefix: String,
    /// Only these backends (default: both).
    #[arg(long = "backend", value_enum)]
    pub backends: Vec<Backend>,
    /// Only these scenarios (`healthy` or a fault name; default: all).
    #[arg(long = "scenario")]
    pub scenarios: Vec<String>,
    /// Lookups for the healthy measurement of loss and latency.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..))]
    pub healthy_count: u32,
    /// Run the scenarios on another kernel, booted in a VM (qemu TCG) on this machine's root
    /// filesystem: an alias (5.10, 6.1, 6.12), a Debian package name, a .deb or an unpacked
    /// directory. The report (--report, default validate-<release>.json) names the guest's kernel.
    #[arg(long, value_name = "SPEC")]
    pub kernel: Option<String>,
    /// With --kernel: stop the VM (and fail) after this many seconds, boot included.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = 1200,
        value_parser = clap::value_parser!(u64).range(1..),
        requires = "kernel"
    )]
    pub vm_timeout: u64,
    #[command(flatten)]
    pub out: Output,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  tracer vm run --kernel 6.1 -- uname -r\n  tracer vm run --kernel 5.10 --timeout 300 -- sh -c 'tracer lab up && tracer lab status; tracer lab down'\n  tracer vm run --kernel 6.12 --out results -- sh -c 'tracer validate --report $TRACER_VM_OUT/report.json'\n  tracer vm prepare --kernel linux-image-6.1.0-50-amd64\n  tracer vm list\n\nAliases: 5.10, 6.1, 6.12 (pinned Debian packages; see `tracer vm list`)."
)]
pub struct VmArgs {
    #[command(subcommand)]
    pub action: VmAction,
}

#[derive(Debug, Subcommand)]
pub enum VmAction {
    /// Boot the kernel and run COMMAND in it as root; print its output and exit with its status.
    Run(VmRunArgs),
    /// Download, unpack and cache the kernel; print its release and paths.
    Prepare {
        /// An alias (5.10, 6.1, 6.12), a Debian package name, a .deb file or an unpacked directory.
        #[arg(long)]
        kernel: String,
    },
    /// Show the aliases and the cached kernels.
    List,
}

#[derive(Debug, Args)]
pub struct VmRunArgs {
    /// An alias (5.10, 6.1, 6.12), a Debian package name, a .deb file or an unpacked directory.
    #[arg(long)]
    pub kernel: String,
    /// Stop the guest (and fail) after this many seconds, boot included.
    #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout: u64,
    /// Guest vCPUs (1 is the default: 6.12 under TCG panicked at boot once with 2).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub cpus: u32,
    /// Guest memory in MiB (256 to 65536).
    #[arg(long, default_value_t = 2048, value_parser = clap::value_parser!(u32).range(256..=65536))]
    pub memory: u32,
    /// Copy what the command wrote to $TRACER_VM_OUT into this directory.
    #[arg(long, value_name = "DIR")]
    pub out: Option<std::path::PathBuf>,
    /// Set an environment variable for the command (repeatable).
    #[arg(long = "env", value_name = "NAME=VALUE", value_parser = parse_env)]
    pub env: Vec<(String, String)>,
    /// The command's working directory in the guest (default /).
    #[arg(long, value_name = "DIR")]
    pub workdir: Option<std::path::PathBuf>,
    /// Boot with this kernel lockdown mode (`lockdown=`), as Secure Boot or a hardened node does.
    #[arg(long, value_enum)]
    pub lockdown: Option<crate::vm::Lockdown>,
    /// The command and its arguments (after `--`).
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// `--hooks`: a tier, or `None` for the best this kernel offers. An alias, so that clap takes
/// `parse_hooks`'s `None` as a value rather than as an absent flag.
pub type Hooks = Option<Tier>;

/// Parses `--hooks`: `auto` or a tier's name.
pub fn parse_hooks(s: &str) -> Result<Hooks, String> {
    match s {
        "auto" => Ok(None),
        _ => Tier::from_str(s, true).map(Some),
    }
}

/// Parses `NAME=VALUE`.
pub fn parse_env(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(n, v)| (n.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected NAME=VALUE, got {s:?}"))
}

/// Parses a number of seconds: finite, above 0, at most a year.
pub fn parse_seconds(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("bad number {s:?}: {e}"))?;
    if !(v.is_finite() && v > 0.0 && v <= MAX_SECONDS) {
        return Err(format!(
            "{s} is out of range: a number of seconds above 0 and at most {MAX_SECONDS}"
        ));
    }
    Ok(v)
}

/// Parses a rate of lookups per second: 0.01 to 1000000.
pub fn parse_rate(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("bad number {s:?}: {e}"))?;
    if !(0.01..=1_000_000.0).contains(&v) {
        return Err(format!(
            "{s} is out of range: 0.01 to 1000000 lookups per second"
        ));
    }
    Ok(v)
}

/// Parses a threshold: finite and not negative.
pub fn parse_non_negative(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("bad number {s:?}: {e}"))?;
    if !(v.is_finite() && v >= 0.0) {
        return Err(format!("{s} is out of range: a finite number, 0 or more"));
    }
    Ok(v)
}

/// Parses `IP[:PORT]` (port 1 to 65535).
pub fn parse_ip_port(s: &str) -> Result<(IpAddr, Option<u16>), String> {
    let (ip, port) = parse_ip_maybe_port(s)?;
    if port == Some(0) {
        return Err(format!("bad port in {s:?}: 0 is not a port to send to"));
    }
    Ok((ip, port))
}

fn parse_ip_maybe_port(s: &str) -> Result<(IpAddr, Option<u16>), String> {
    // IPv6: bare (`fd00:10:96::a`) or bracketed with a port (`[fd00:10:96::a]:53`).
    if let Ok(sa) = s.parse::<std::net::SocketAddr>() {
        return Ok((sa.ip(), Some(sa.port())));
    }
    if let Ok(ip) = s
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
    {
        return Ok((ip, None));
    }
    match s.split_once(':') {
        Some((ip, port)) => Ok((
            ip.parse().map_err(|e| format!("bad address {ip:?}: {e}"))?,
            Some(
                port.parse()
                    .map_err(|e| format!("bad port {port:?}: {e}"))?,
            ),
        )),
        None => Ok((
            s.parse().map_err(|e| format!("bad address {s:?}: {e}"))?,
            None,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_port_parses_and_rejects_garbage() {
        assert_eq!(
            parse_ip_port("10.96.0.10"),
            Ok(("10.96.0.10".parse().unwrap(), None))
        );
        assert_eq!(
            parse_ip_port("10.96.0.10:5353"),
            Ok(("10.96.0.10".parse().unwrap(), Some(5353)))
        );
        assert!(parse_ip_port("10.96.0").is_err());
        assert!(parse_ip_port("10.96.0.10:99999").is_err());
        assert!(parse_ip_port("10.96.0.10:0").is_err());
        assert!(parse_ip_port("[fd00:10:96::a]:0").is_err());
        assert_eq!(
            parse_ip_port("[fd00:10:96::a]:53"),
            Ok(("fd00:10:96::a".parse().unwrap(), Some(53)))
        );
    }

    #[test]
    fn numbers_out_of_range_are_refused() {
        for bad in ["0", "-1", "nan", "inf", "1e300", "x", ""] {
            assert!(parse_seconds(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_seconds("0.5"), Ok(0.5));
        for bad in ["0", "1e-300", "inf", "nan", "2e6"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_rate("50"), Ok(50.0));
        for bad in ["-0.1", "nan", "inf"] {
            assert!(parse_non_negative(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_non_negative("0"), Ok(0.0));
    }

    #[test]
    fn hooks_parse_auto_and_every_tier() {
        assert_eq!(parse_hooks("auto"), Ok(None));
        assert_eq!(parse_hooks("fentry"), Ok(Some(Tier::Fentry)));
        assert_eq!(parse_hooks("kprobe"), Ok(Some(Tier::Kprobe)));
        assert_eq!(parse_hooks("tracepoint"), Ok(Some(Tier::Tracepoint)));
        assert!(parse_hooks("kretprobe").is_err());
    }
}
