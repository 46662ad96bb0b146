//! Malformed DNS packets on the wire, sent from a lab pod with a raw socket while the tracer
//! runs: each is counted as an unparseable DNS packet, and no query record claims it. A
//! well-formed query carrying IP options is traced as any other. Run as root, one test at a time
//! (`--test-threads=1`).

mod common;

use std::{
    net::{Ipv4Addr, UdpSocket},
    time::Duration,
};

use common::{LabGuard, tier};
use tracer::{
    flow::record::{QueryRecord, Verdict},
    netns,
    node::Backend,
    report::trace::TraceSummary,
    trace::Settings,
};

/// The name every packet asks for (the lab answers it).
const NAME: &str = "kubernetes.default.svc.cluster.local";

/// A DNS query for `NAME`, type A, with `qdcount` in its header.
fn dns_query(id: u16, qdcount: u16) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&0x0100u16.to_be_bytes()); // RD
    m.extend_from_slice(&qdcount.to_be_bytes());
    m.extend_from_slice(&[0; 6]);
    for label in NAME.split('.') {
        m.push(label.len() as u8);
        m.extend_from_slice(label.as_bytes());
    }
    m.extend_from_slice(&[0, 0, 1, 0, 1]);
    m
}

/// One IPv4 packet to the Service's port 53, as bytes for a raw socket.
struct Ipv4 {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    /// IP options (a multiple of 4 bytes).
    options: Vec<u8>,
    /// The flags and fragment offset word (0x2000: more fragments; low 13 bits: offset / 8).
    frag: u16,
    /// The UDP header's source port, and its length field (`None`: the true length).
    sport: u16,
    udp_len: Option<u16>,
    /// What follows the UDP header (for a non-first fragment: what follows the IP header).
    payload: Vec<u8>,
    /// A non-first fragment carries no UDP header of its own.
    udp_header: bool,
}

impl Ipv4 {
    fn bytes(&self) -> Vec<u8> {
        let ihl = 5 + self.options.len() / 4;
        let mut l4 = Vec::new();
        if self.udp_header {
            let len = self.udp_len.unwrap_or(8 + self.payload.len() as u16);
            l4.extend_from_slice(&self.sport.to_be_bytes());
            l4.extend_from_slice(&53u16.to_be_bytes());
            l4.extend_from_slice(&len.to_be_bytes());
            l4.extend_from_slice(&[0, 0]); // no UDP checksum (IPv4 allows it)
        }
        l4.extend_from_slice(&self.payload);
        let total = (ihl * 4 + l4.len()) as u16;
        let mut p = vec![(4 << 4) | ihl as u8, 0];
        p.extend_from_slice(&total.to_be_bytes());
        p.extend_from_slice(&self.sport.to_be_bytes()); // IP id
        p.extend_from_slice(&self.frag.to_be_bytes());
        p.extend_from_slice(&[64, 17, 0, 0]); // TTL, UDP, checksum (the kernel fills it)
        p.extend_from_slice(&self.src.octets());
        p.extend_from_slice(&self.dst.octets());
        p.extend_from_slice(&self.options);
        p.extend_from_slice(&l4);
        p
    }
}

/// Sends each packet from namespace `ns` with a raw IP socket (the header as given); returns how
/// many the kernel took whole, and a UDP socket bound to each source port in `ports`, so that an
/// answer finds its client listening (the caller keeps them until the trace ends).
fn send_raw(
    ns: &str,
    dst: Ipv4Addr,
    packets: &[Vec<u8>],
    ports: &[u16],
) -> (usize, Vec<UdpSocket>) {
    netns::run_in(&netns::named(ns), || {
        let listeners: Vec<UdpSocket> = ports
            .iter()
            .map(|p| UdpSocket::bind(("0.0.0.0", *p)).expect("bind the client's source port"))
            .collect();
        // SAFETY: plain socket calls on a descriptor this closure owns and closes.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW);
            assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
            let addr = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: 0,
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(dst.octets()),
                },
                sin_zero: [0; 8],
            };
            let sent = packets
                .iter()
                .filter(|p| {
                    let n = libc::sendto(
                        fd,
                        p.as_ptr().cast(),
                        p.len(),
                        0,
                        (&raw const addr).cast(),
                        size_of::<libc::sockaddr_in>() as libc::socklen_t,
                    );
                    n == p.len() as isize
                })
                .count();
            libc::close(fd);
            (sent, listeners)
        }
    })
    .expect("enter the client's namespace")
}

/// Starts the tracer on the lab (every query recorded), sends, waits out the timeout, stops.
/// Sends `packets` (from `ports`) from the lab's client pod while the tracer runs; every one the
/// kernel took.
fn sent_traced(
    lab: &LabGuard,
    packets: &[Vec<u8>],
    ports: &[u16],
) -> (Vec<QueryRecord>, TraceSummary) {
    let (records, summary, sent) = traced(lab, || {
        send_raw(
            &lab.info.clients[0].netns,
            lab.info.service_ip,
            packets,
            ports,
        )
    });
    assert_eq!(sent, packets.len(), "the kernel took every packet");
    (records, summary)
}

/// Each of `cases` (client port, what it is, the packet) was counted as unparseable at least
/// once (at the client's link), and no record claims its port.
fn assert_counted_never_a_query(
    records: &[QueryRecord],
    summary: &TraceSummary,
    cases: &[(u16, &str, Vec<u8>)],
) {
    assert!(
        summary.counters.parse_errors >= cases.len() as u64,
        "each unreadable packet is counted at least once: {:?}",
        summary.counters
    );
    for (port, what, _) in cases {
        let claimed: Vec<_> = records
            .iter()
            .filter(|r| r.client.port() == *port)
            .collect();
        assert!(claimed.is_empty(), "{what} is no query: {claimed:?}");
    }
}

fn traced(
    lab: &LabGuard,
    send: impl FnOnce() -> (usize, Vec<UdpSocket>),
) -> (Vec<QueryRecord>, TraceSummary, usize) {
    let settings = Settings {
        tier: tier(),
        all: true,
        timeout: Duration::from_secs(1),
        ..Settings::default()
    };
    let tracer = common::trace_lab(&lab.info, &settings);
    let (sent, listeners) = send();
    std::thread::sleep(Duration::from_millis(1500));
    let (records, summary) = tracer.finish().expect("finish");
    drop(listeners);
    (records, summary, sent)
}

/// A packet from the lab's client to the Service, well formed but for what `f` changes.
fn packet(lab: &LabGuard, sport: u16, f: impl FnOnce(&mut Ipv4)) -> Vec<u8> {
    let mut p = Ipv4 {
        src: lab.info.clients[0].ip,
        dst: lab.info.service_ip,
        options: vec![],
        frag: 0,
        sport,
        udp_len: None,
        payload: dns_query(sport, 1),
        udp_header: true,
    };
    f(&mut p);
    p.bytes()
}

/// The packets no parser can read as a DNS message, each from its own source port.
fn unreadable(lab: &LabGuard) -> Vec<(u16, &'static str, Vec<u8>)> {
    vec![
        (
            41001,
            "DNS shorter than its header",
            packet(lab, 41001, |p| p.payload.truncate(6)),
        ),
        (
            41002,
            "UDP length below the UDP header",
            packet(lab, 41002, |p| p.udp_len = Some(4)),
        ),
        (
            41003,
            "UDP length below a DNS header",
            packet(lab, 41003, |p| p.udp_len = Some(14)),
        ),
        (
            41004,
            "first fragment",
            packet(lab, 41004, |p| p.frag = 0x2000),
        ),
        (
            41005,
            "later fragment",
            packet(lab, 41005, |p| {
                // Bytes that read as ports 41005 -> 53 where a UDP header would be.
                p.udp_header = false;
                p.frag = 3;
                let mut b = 41005u16.to_be_bytes().to_vec();
                b.extend_from_slice(&53u16.to_be_bytes());
                b.extend_from_slice(&[0; 20]);
                p.payload = b;
            }),
        ),
    ]
}

// Scenario: a healthy lab; client0 sends five unreadable DNS packets and one well-formed query
// with IP options (router alert). Every unreadable one moves the parse-error counter and none is
// a query record; the one with options is a query, answered, its name read past the options.
#[test]
fn unreadable_packets_are_counted_and_never_a_query() {
    let lab = LabGuard::up("hb3", Backend::Nft);
    let bad = unreadable(&lab);
    let options = packet(&lab, 41010, |p| p.options = vec![0x94, 0x04, 0, 0]);
    let mut all: Vec<Vec<u8>> = bad.iter().map(|(_, _, p)| p.clone()).collect();
    all.push(options);
    let mut ports: Vec<u16> = bad.iter().map(|(p, _, _)| *p).collect();
    ports.push(41010);
    let (records, summary) = sent_traced(&lab, &all, &ports);
    assert_counted_never_a_query(&records, &summary, &bad);
    let with_options: Vec<_> = records
        .iter()
        .filter(|r| r.client.port() == 41010)
        .collect();
    assert_eq!(
        with_options.len(),
        1,
        "the query with IP options is traced: {records:?}"
    );
    let r = with_options[0];
    assert_eq!(r.verdict, Verdict::Answered, "{r:?}");
    assert_eq!(
        r.name.as_deref(),
        Some(format!("{NAME}.").as_str()),
        "{r:?}"
    );
    assert_eq!(r.id, 41010);
}

// Scenario: client0 sends queries whose header does not describe one question (qdcount 0, 2)
// and a query whose UDP length claims more than the datagram holds. None is one DNS question a
// client asked; each must be counted unparseable, not recorded as a query.
#[test]
fn bad_counts_and_lying_lengths_are_counted_and_never_a_query() {
    let lab = LabGuard::up("hb4", Backend::Nft);
    let cases = [
        (
            41021,
            "qdcount 0",
            packet(&lab, 41021, |p| p.payload = dns_query(41021, 0)),
        ),
        (
            41022,
            "qdcount 2",
            packet(&lab, 41022, |p| p.payload = dns_query(41022, 2)),
        ),
        (
            41023,
            "UDP length past the datagram",
            packet(&lab, 41023, |p| p.udp_len = Some(400)),
        ),
    ];
    let all: Vec<Vec<u8>> = cases.iter().map(|(_, _, p)| p.clone()).collect();
    let ports: Vec<u16> = cases.iter().map(|(p, _, _)| *p).collect();
    let (records, summary) = sent_traced(&lab, &all, &ports);
    assert_counted_never_a_query(&records, &summary, &cases);
}
