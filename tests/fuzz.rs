//! Fuzzing of every parser that takes untrusted bytes, on the stable toolchain: each target's
//! corpus (`tests/corpus/<target>/`, real captures from the lab) is replayed, then mutated
//! (bit flips, interesting integers, cut, grown, spliced with another seed) through the same entry
//! points the tracer uses, asserting that nothing panics and that no input makes the parser
//! allocate more than a bound. No kernel state is touched: it runs anywhere, as any user.
//!
//! A short run is part of the tests; `cargo xtask fuzz` runs it long (`TRACER_FUZZ_RUNS`
//! mutations per target, or `TRACER_FUZZ_SECONDS` per target; `TRACER_FUZZ_TARGET` for one).
//! An input that panics is written to `target/fuzz-crashes/<target>/` with the seed that made it:
//! add it to the corpus once fixed, where every later run replays it.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    cell::Cell,
    collections::HashMap,
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use tracer::{
    flow::{
        correlate::{Context, Correlator},
        dns,
        event::KernelEvent,
        names::Names,
    },
    kernel::btf::KernelBtf,
    links::Link,
    node::{conntrack, kubeproxy, nft},
    report::document::Document,
};
use tracer_common::{
    event::{Event, kind},
    flow::{proto, state, v4_mapped},
};

/// Mutations per target in the tests' short run.
const SHORT_RUNS: u64 = 3000;

/// Bytes a parser may allocate at once beyond 64 times its input's size: a parser that sizes a
/// buffer from a length field it read would go past it.
const ALLOC_SLACK: usize = 8 << 20;

// --- an allocator that tracks this thread's peak, so that each input's allocation is bounded ---

struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn track(delta: isize) {
    // `try_with`: allocations while the thread's locals are torn down are not tracked.
    let _ = LIVE.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

// SAFETY: every call is forwarded to the system allocator unchanged; only counts are kept.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        track(layout.size() as isize);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        track(-(layout.size() as isize));
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        track(new_size as isize - layout.size() as isize);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `f` and returns the most it had allocated at once, in bytes.
fn peak_of(f: impl FnOnce()) -> usize {
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    f();
    (PEAK.with(Cell::get) - base).max(0) as usize
}

// --- the mutator ---

/// xorshift64*: reproducible from its seed, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

const INTERESTING: [u32; 10] = [
    0,
    1,
    0x7f,
    0x80,
    0xff,
    0x100,
    0x7fff,
    0xffff,
    0x7fff_ffff,
    0xffff_ffff,
];

/// One to four mutations of `input`, sometimes spliced with `other`.
fn mutate(rng: &mut Rng, input: &[u8], other: &[u8]) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..=rng.below(4) {
        let len = v.len();
        match rng.below(9) {
            0 if len > 0 => {
                let i = rng.below(len);
                v[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                v[i] = rng.next() as u8;
            }
            2 if len >= 2 => {
                let i = rng.below(len - 1);
                let x = INTERESTING[rng.below(INTERESTING.len())] as u16;
                let b = if rng.below(2) == 0 {
                    x.to_be_bytes()
                } else {
                    x.to_ne_bytes()
                };
                v[i..i + 2].copy_from_slice(&b);
            }
            3 if len >= 4 => {
                let i = rng.below(len - 3);
                let x = INTERESTING[rng.below(INTERESTING.len())];
                let b = if rng.below(2) == 0 {
                    x.to_be_bytes()
                } else {
                    x.to_ne_bytes()
                };
                v[i..i + 4].copy_from_slice(&b);
            }
            4 => v.truncate(rng.below(len + 1)),
            5 if len > 0 => {
                let start = rng.below(len);
                let end = (start + 1 + rng.below(16)).min(len);
                v.drain(start..end);
            }
            6 if len > 0 => {
                let start = rng.below(len);
                let end = (start + 1 + rng.below(64)).min(len);
                let chunk = v[start..end].to_vec();
                let at = rng.below(len + 1);
                v.splice(at..at, chunk);
            }
            7 if !other.is_empty() => {
                let cut = rng.below(len + 1);
                let from = rng.below(other.len());
                v.truncate(cut);
                v.extend_from_slice(&other[from..]);
            }
            _ => {
                let at = rng.below(len + 1);
                const PUNCTUATION: &[u8] = b"{}[]\":,\n -";
                let byte = if rng.below(2) == 0 {
                    rng.next() as u8
                } else {
                    PUNCTUATION[rng.below(PUNCTUATION.len())]
                };
                v.insert(at, byte);
            }
        }
    }
    v
}

// --- the targets: the tracer's own entry points for each kind of untrusted bytes ---

/// A DNS question as the kernel copied it off the wire.
fn dns_question(b: &[u8]) {
    let q = dns::question(b);
    if let Some(name) = q.name {
        assert!(
            name.len() <= 4 * b.len() + 2,
            "a name longer than its bytes allow"
        );
    }
}

/// `iptables-save -c` output (legacy or nft), and the DNS Service found in it.
fn iptables_save(b: &[u8]) {
    if let Ok(save) = kubeproxy::parse_save(&String::from_utf8_lossy(b)) {
        let _ = save.kube_rules();
        let _ = save.hint_chains();
        if let Some(svc) = kubeproxy::dns_service(&save) {
            let _ = kubeproxy::dns_counters(tracer::node::Backend::Nft, &save, &svc);
        }
    }
}

/// `nft -j list ruleset` output, and the DNS Service found in it.
fn nft_json(b: &[u8]) {
    if let Ok(rs) = nft::Ruleset::parse(&String::from_utf8_lossy(b)) {
        let _ = rs.tables();
        let _ = nft::dns_service(&rs);
    }
}

/// A ctnetlink datagram (conntrack dump, statistics), split and read as the dump reads it.
fn ctnetlink(b: &[u8]) {
    for m in tracer::netlink::split::<netlink_packet_netfilter::NetfilterMessage>(b).flatten() {
        if let netlink_packet_core::NetlinkPayload::InnerMessage(m) = m.payload {
            let _ = conntrack::entry_of(&m);
        }
    }
}

/// An rtnetlink datagram (an RTM_GETLINK dump or a link notification), read as links.
fn rtnetlink(b: &[u8]) {
    use netlink_packet_route::RouteNetlinkMessage;
    for m in tracer::netlink::split::<RouteNetlinkMessage>(b).flatten() {
        if let netlink_packet_core::NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)) =
            m.payload
        {
            let _ = Link::from_message(l);
        }
    }
}

/// A ring-buffer record (any bytes the size of an `Event`), decoded and given to the correlator.
fn ring_buffer(b: &[u8]) {
    let mut raw = vec![0u8; size_of::<Event>()];
    let n = b.len().min(raw.len());
    raw[..n].copy_from_slice(&b[..n]);
    // SAFETY: Event is plain data (`aya::Pod`: integers and arrays only), any bytes are one.
    let e: Event = unsafe { std::ptr::read_unaligned(raw.as_ptr().cast()) };
    let mut c = correlator();
    if let Ok(k) = KernelEvent::try_from(&e) {
        let _ = c.push(&k, e.netns);
    }
    let _ = c.scan(&[e.slot], e.ts.saturating_add(10_000_000_000), e.netns);
    let _ = c.flush(e.ts.saturating_add(60_000_000_000), true);
}

/// vmlinux's BTF, and every question the tracer asks it at start (offsets, drop reasons, a
/// tracepoint's and a function's prototypes). Seeds: the eBPF object's own .BTF section (rustc's
/// BTF, 110 types) and a hand-encoded subset of a kernel's (the structs, enum and prototypes
/// those questions walk).
fn btf(b: &[u8]) {
    let Ok(k) = KernelBtf::from_bytes(b) else {
        return;
    };
    let _ = k.offsets();
    let _ = k.drop_reasons();
    let _ = k.tracepoint_args("kfree_skb");
    let _ = k.skb_param("ipt_do_table");
    let _ = k.has_function("nf_nat_manip_pkt");
}

/// A report file as `compare` reads it.
fn report(b: &[u8]) {
    let _ = Document::parse(Path::new("fuzz.json"), &String::from_utf8_lossy(b));
}

fn correlator() -> Correlator {
    Correlator::new(
        Context {
            service: Some(IpAddr::V4(Ipv4Addr::new(10, 96, 0, 10))),
            dns_port: 53,
            endpoints: vec![IpAddr::V4(Ipv4Addr::new(10, 244, 0, 10))],
            timeout_ns: 5_000_000_000,
            ..Context::default()
        },
        Names::new(0, &HashMap::new()),
    )
}

type Target = (&'static str, fn(&[u8]));

const TARGETS: [Target; 8] = [
    ("dns", dns_question),
    ("iptables_save", iptables_save),
    ("nft_json", nft_json),
    ("ctnetlink", ctnetlink),
    ("rtnetlink", rtnetlink),
    ("ring_buffer", ring_buffer),
    ("report", report),
    ("btf", btf),
];

// --- seeds ---

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/corpus")
        .join(target)
}

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = corpus_dir(target);
    // No directory is an empty corpus (git keeps no empty one: the ring buffer's seeds are built
    // below); the assertion after the seeds catches a target left with none.
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries.map(|e| e.expect("corpus entry").path()).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("corpus {}: {e}", dir.display()),
    };
    files.sort();
    let mut seeds: Vec<Vec<u8>> = files
        .iter()
        .map(|p| std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .collect();
    if target == "ring_buffer" {
        seeds.extend(event_seeds());
    }
    assert!(!seeds.is_empty(), "corpus {} is empty", dir.display());
    seeds
}

/// Records of every kind about a lab query (client 10.244.0.20 to the Service 10.96.0.10), each
/// carrying a question captured from the lab (`tests/corpus/dns`).
fn event_seeds() -> Vec<Vec<u8>> {
    let question = corpus("dns").into_iter().next().expect("a dns seed");
    let kinds = [
        kind::ANSWERED,
        kind::DROP,
        kind::ICMP,
        kind::SOCKET_DROP,
        kind::EVICTED,
        kind::CONFIRM,
        kind::VERDICT,
    ];
    kinds
        .iter()
        .flat_map(|&k| [state::FREE, state::PENDING].map(move |s| (k, s)))
        .map(|(k, s)| {
            // SAFETY: Event is plain data; all zero is a valid one.
            let mut e: Event = unsafe { std::mem::zeroed() };
            e.ts = 1_000_000_000;
            e.kind = k;
            e.netns = 4026531840;
            e.ifindex = 3;
            e.reason = 2;
            e.packet.saddr = v4_mapped(u32::from_ne_bytes([10, 244, 0, 20]));
            e.packet.daddr = v4_mapped(u32::from_ne_bytes([10, 96, 0, 10]));
            e.packet.sport = 40000;
            e.packet.dport = 53;
            e.packet.dns_id = 0x1234;
            e.packet.proto = proto::UDP;
            (e.slot.saddr, e.slot.daddr) = (e.packet.saddr, e.packet.daddr);
            (e.slot.sport, e.slot.dport) = (e.packet.sport, e.packet.dport);
            (e.slot.dns_id, e.slot.proto) = (e.packet.dns_id, e.packet.proto);
            e.slot.state = s;
            let n = question.len().min(e.slot.question.len());
            e.slot.question[..n].copy_from_slice(&question[..n]);
            e.slot.question_len = n as u16;
            // SAFETY: reading a plain-data struct as its bytes.
            unsafe { std::slice::from_raw_parts((&raw const e).cast::<u8>(), size_of::<Event>()) }
                .to_vec()
        })
        .collect()
}

// --- the run ---

/// How long one target runs: `TRACER_FUZZ_SECONDS`, else `TRACER_FUZZ_RUNS` mutations, else the
/// short run.
fn budget() -> (u64, Option<Duration>) {
    let var = |n: &str| std::env::var(n).ok().and_then(|v| v.parse::<u64>().ok());
    match (var("TRACER_FUZZ_SECONDS"), var("TRACER_FUZZ_RUNS")) {
        (Some(s), _) => (u64::MAX, Some(Duration::from_secs(s))),
        (None, Some(r)) => (r, None),
        (None, None) => (SHORT_RUNS, None),
    }
}

/// The input running now, since when, and its name (what the watchdog saves when it hangs).
type Running = (Instant, String, Vec<u8>);
static RUNNING: std::sync::Mutex<Option<Running>> = std::sync::Mutex::new(None);

/// An input that runs this long hangs the parser (a loop in the types it follows, say).
const HANG: Duration = Duration::from_secs(10);

/// Marks `input` as running, and starts the watchdog once: an input still running after `HANG`
/// is saved under target/fuzz-crashes and the process aborts naming it (a hang cannot be caught
/// as a panic is; without this it only shows as a test that never ends).
fn watch(name: &str, what: &str, input: &[u8]) {
    static WATCHDOG: std::sync::Once = std::sync::Once::new();
    WATCHDOG.call_once(|| {
        std::thread::spawn(|| {
            loop {
                std::thread::sleep(Duration::from_secs(1));
                let running = RUNNING.lock().unwrap_or_else(|e| e.into_inner());
                if let Some((since, label, input)) = running.as_ref()
                    && since.elapsed() > HANG
                {
                    let file = Path::new(env!("CARGO_MANIFEST_DIR"))
                        .join("../target/fuzz-crashes")
                        .join(label.replace(' ', "-"));
                    let _ = std::fs::create_dir_all(file.parent().expect("a directory"));
                    let _ = std::fs::write(&file, input);
                    eprintln!(
                        "fuzz {label}: still running after {HANG:?}, a hang; saved to {}",
                        file.display()
                    );
                    std::process::abort();
                }
            }
        });
    });
    *RUNNING.lock().unwrap_or_else(|e| e.into_inner()) =
        Some((Instant::now(), format!("{name} {what}"), input.to_vec()));
}

/// Replays the corpus, then mutates it; panics naming the first input that panicked or allocated
/// past the bound (after saving it under target/fuzz-crashes).
fn fuzz(name: &str, f: fn(&[u8])) {
    if std::env::var("TRACER_FUZZ_TARGET").is_ok_and(|t| t != name) {
        return;
    }
    let seeds = corpus(name);
    let (runs, seconds) = budget();
    let seed = std::env::var("TRACER_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_u64);
    let mut rng = Rng(seed | 1);
    let started = Instant::now();
    let check = |input: &[u8], what: &str| {
        watch(name, what, input);
        let peak = std::panic::catch_unwind(|| peak_of(|| f(input)));
        *RUNNING.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let failure = match peak {
            Err(_) => Some("panicked".to_owned()),
            Ok(p) if p > ALLOC_SLACK + 64 * input.len() => {
                Some(format!("allocated {p} bytes at once"))
            }
            Ok(_) => None,
        };
        if let Some(failure) = failure {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../target/fuzz-crashes")
                .join(name);
            let _ = std::fs::create_dir_all(&dir);
            let file = dir.join(format!("seed-{seed}-{what}"));
            let _ = std::fs::write(&file, input);
            panic!(
                "{name}: {what} {failure} ({} bytes, saved to {})",
                input.len(),
                file.display()
            );
        }
    };
    for (i, s) in seeds.iter().enumerate() {
        check(s, &format!("corpus-{i}"));
    }
    let mut execs = 0u64;
    while execs < runs && seconds.is_none_or(|s| started.elapsed() < s) {
        let a = &seeds[rng.below(seeds.len())];
        let b = &seeds[rng.below(seeds.len())];
        let input = mutate(&mut rng, a, b);
        check(&input, &format!("mutation-{execs}"));
        execs += 1;
    }
    eprintln!(
        "fuzz {name}: {} corpus inputs and {execs} mutations in {:.1} s, no panic, allocation bounded",
        seeds.len(),
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn every_target_survives_its_corpus_and_mutations() {
    // The panic hook would print every caught panic; the failure names the input instead.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = std::panic::catch_unwind(|| {
        for (name, f) in TARGETS {
            fuzz(name, f);
        }
    });
    std::panic::set_hook(hook);
    if let Err(e) = result {
        let message = e
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_default();
        panic!("{message}");
    }
}

#[test]
fn the_allocation_bound_catches_a_parser_that_trusts_a_length() {
    // A parser sizing a buffer from a 32-bit length it read goes past the bound: the check can fail.
    let trusting = |b: &[u8]| {
        let len = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
        std::hint::black_box(vec![0u8; len.min(1 << 30)]);
    };
    let input = 0x0400_0000u32.to_be_bytes();
    assert!(peak_of(|| trusting(&input)) > ALLOC_SLACK + 64 * input.len());
    assert!(peak_of(|| dns_question(&input)) < ALLOC_SLACK);
}

#[test]
fn the_btf_seed_walks_every_question_the_tracer_asks() {
    // The hand-encoded seed must take the target through the code it fuzzes, not stop at
    // "no such struct": offsets, drop reasons and both prototypes resolve.
    let bytes = std::fs::read(corpus_dir("btf").join("kernel-subset.btf")).expect("seed");
    let k = KernelBtf::from_bytes(&bytes).expect("the seed parses");
    let o = k.offsets().expect("every offset resolves");
    assert_eq!((o.skb_head, o.dev_net, o.sk_rmem_alloc), (200, 240, 192));
    assert_eq!(k.drop_reasons().len(), 6);
    let args = k.tracepoint_args("kfree_skb").expect("prototype");
    assert_eq!(args.map(|a| a.len()), Some(3));
    assert_eq!(k.skb_param("ipt_do_table").expect("function"), Some(1));
}
