//! The lab's writes to a conntrack table over ctnetlink: bulk create (conntrack-full fills the
//! node's table with it), bulk delete and flush. Reading the table is `node::conntrack`'s; both go
//! through the same transport (`node::conntrack::netlink`).
//!
//! Every function works on the network namespace of the calling thread; call them inside
//! [`crate::netns::run_in`] for the lab's node.

use std::net::{IpAddr, SocketAddrV4};

use netlink_packet_core::{DefaultNla, NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_netfilter::conntrack::{ConntrackAttribute, Status};

use crate::node::conntrack::{
    self, CTA_ID, Entry, Error, Tuple,
    netlink::{Answer, Ctnetlink, IPCTNL_MSG_CT_DELETE, IPCTNL_MSG_CT_NEW, Request, refused},
    nl_tuple_of, status,
};

/// Requests per `sendmsg` in bulk operations. Each request gets its own ack skb (about 1 KiB of
/// receive buffer each), so a batch must fit the ctnetlink socket's receive buffer (8 MiB).
const BATCH: usize = 512;

/// Creates ASSURED, SEEN_REPLY UDP entries `src -> dst` (reply `dst -> src`) that live `timeout_s`
/// seconds, in bulk: [`BATCH`] requests per `sendmsg`, every ack checked. Fast enough to fill a
/// namespace's table (262144 entries in a few seconds), which is how the lab makes a full table: in a
/// non-initial namespace `nf_conntrack_max` is read-only, while the namespace's count is checked
/// against the global maximum, and assured entries are never early-dropped.
///
/// Returns how many entries were created. Entries that already exist (`EEXIST`) and entries a full
/// table refused (`ENOMEM`) are skipped and not counted; any other refusal is an error.
pub fn create_udp_assured(
    entries: impl Iterator<Item = (SocketAddrV4, SocketAddrV4)>,
    timeout_s: u32,
) -> Result<usize, Error> {
    let requests = entries.map(|(src, dst)| Request {
        message_type: IPCTNL_MSG_CT_NEW,
        flags: NLM_F_CREATE | NLM_F_EXCL,
        attributes: vec![
            ConntrackAttribute::CtaTupleOrig(nl_tuple_of(&udp(src, dst))),
            ConntrackAttribute::CtaTupleReply(nl_tuple_of(&udp(dst, src))),
            // CONFIRMED too, as conntrack-tools sends it: the kernel marks a created entry confirmed
            // before applying the status, and refuses (EBUSY) a status that would clear the bit.
            ConntrackAttribute::CtaStatus(Status::from_bits_retain(
                status::ASSURED | status::SEEN_REPLY | status::CONFIRMED,
            )),
            ConntrackAttribute::CtaTimeout(timeout_s),
        ],
    });
    bulk(
        "a bulk conntrack create",
        requests,
        &[libc::EEXIST, libc::ENOMEM],
    )
}

/// Deletes every IPv4 entry of the calling thread's namespace for which `matches` is true (by
/// original tuple and id, batched). Entries that vanished meanwhile are not counted. Returns how
/// many were deleted.
pub fn delete_matching(matches: impl Fn(&Entry) -> bool) -> Result<usize, Error> {
    let doomed: Vec<Entry> = conntrack::dump()?
        .into_iter()
        .filter(|e| e.orig.src.is_ipv4() && matches(e))
        .collect();
    let requests = doomed.iter().map(|e| {
        let mut attributes = vec![ConntrackAttribute::CtaTupleOrig(nl_tuple_of(&e.orig))];
        if let Some(id) = e.id {
            attributes.push(ConntrackAttribute::Other(DefaultNla::new(
                CTA_ID,
                id.to_be_bytes().to_vec(),
            )));
        }
        Request {
            message_type: IPCTNL_MSG_CT_DELETE,
            flags: 0,
            attributes,
        }
    });
    bulk("a bulk conntrack delete", requests, &[libc::ENOENT])
}

/// Removes every IPv4 entry of the calling thread's namespace (`conntrack -F -f ipv4`).
pub fn flush() -> Result<(), Error> {
    let request = Request {
        message_type: IPCTNL_MSG_CT_DELETE,
        flags: 0,
        attributes: Vec::new(),
    };
    Ctnetlink::open()?
        .request("a table flush", request)
        .map(drop)
}

fn udp(src: SocketAddrV4, dst: SocketAddrV4) -> Tuple {
    Tuple {
        src: IpAddr::V4(*src.ip()),
        dst: IpAddr::V4(*dst.ip()),
        proto: libc::IPPROTO_UDP as u8,
        sport: src.port(),
        dport: dst.port(),
    }
}

/// Sends `requests` in batches of [`BATCH`] per `sendmsg` and checks every ack before the next
/// batch. Errors listed in `tolerated` are skipped; any other fails. Returns how many succeeded.
fn bulk(
    what: &'static str,
    mut requests: impl Iterator<Item = Request>,
    tolerated: &[i32],
) -> Result<usize, Error> {
    let mut nl = Ctnetlink::open()?;
    let mut ok = 0;
    loop {
        let sent = nl.exchange(what, requests.by_ref().take(BATCH), |answer| {
            match answer {
                Answer::Ack(None) => ok += 1,
                Answer::Ack(Some(errno)) if !tolerated.contains(&errno) => {
                    return Err(refused(what, errno));
                }
                Answer::Ack(Some(_)) | Answer::Reply(_) => {}
            }
            Ok(())
        })?;
        if sent == 0 {
            return Ok(ok);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::node::conntrack::{CpuStats, EventKind, Events, count, dump_udp, stats, table};

    /// Runs `f` on a thread in a fresh, unnamed network namespace that disappears with the thread
    /// (and its conntrack entries with it).
    fn in_fresh_netns<T: Send>(f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            s.spawn(|| {
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                    .expect("unshare(CLONE_NEWNET) needs root");
                f()
            })
            .join()
            .expect("namespace thread panicked")
        })
    }

    fn flows(n: u32) -> impl Iterator<Item = (SocketAddrV4, SocketAddrV4)> {
        (0..n).map(|i| {
            let src = SocketAddrV4::new(
                Ipv4Addr::new(10, 1, (i >> 16) as u8, (i >> 8) as u8),
                (i & 0xff) as u16 + 1024,
            );
            (src, SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 10), 53))
        })
    }

    // Scenario (root): a fresh namespace; bulk-create assured UDP/53 entries, see them counted,
    // dumped with their status, announced as events, then deleted and flushed.
    #[test]
    fn create_dump_events_delete_in_a_fresh_namespace() {
        in_fresh_netns(|| {
            assert_eq!(count().unwrap(), 0);
            let mut events = Events::subscribe().unwrap();
            events.set_nonblocking(true).unwrap();
            assert_eq!(create_udp_assured(flows(3000), 600).unwrap(), 3000);
            // Creating the same flows again skips them instead of failing.
            assert_eq!(create_udp_assured(flows(10), 600).unwrap(), 0);
            let t = table().unwrap();
            assert_eq!(t.count, 3000);
            assert!(t.max >= 3000 && t.buckets > 0, "{t:?}");

            let entries = dump_udp(53).unwrap();
            assert_eq!(entries.len(), 3000);
            let e = &entries[0];
            assert!(e.assured() && e.seen_reply() && !e.dnat(), "{e:?}");
            assert_eq!(e.orig.dst, IpAddr::V4(Ipv4Addr::new(10, 96, 0, 10)));
            assert_eq!((e.reply.src, e.reply.dport), (e.orig.dst, e.orig.sport));
            assert!(
                e.timeout.is_some_and(|t| t > 500 && t <= 600) && e.id.is_some(),
                "{e:?}"
            );
            assert!(dump_udp(5353).unwrap().is_empty());

            let mut new = Vec::new();
            loop {
                let batch = events.recv().unwrap();
                if batch.is_empty() {
                    break;
                }
                new.extend(batch.into_iter().filter(|ev| ev.kind == EventKind::New));
            }
            assert_eq!(
                (new.len(), events.lost()),
                (3000, 0),
                "one NEW event per created entry, none lost"
            );
            assert!(
                new.iter().any(|ev| ev.entry.orig == e.orig),
                "no NEW event for {e:?}"
            );

            let low = delete_matching(|e| e.orig.sport < 1024 + 16).unwrap();
            assert_eq!(low as u32, 3000u32.div_ceil(256) * 16);
            assert_eq!(count().unwrap(), 3000 - low as u32);
            let destroyed: usize = std::iter::from_fn(|| Some(events.recv().unwrap()))
                .take_while(|b| !b.is_empty())
                .map(|b| b.iter().filter(|ev| ev.kind == EventKind::Destroy).count())
                .sum();
            assert!(destroyed > 0 || events.lost() > 0);

            flush().unwrap();
            assert_eq!(count().unwrap(), 0);
            let total = CpuStats::sum(&stats().unwrap());
            assert_eq!(total.insert, 3000, "{total:?}");
            assert_eq!(total.drop + total.insert_failed, 0, "{total:?}");
        });
    }

    // Scenario (root): the lab's conntrack-full fault: fill a fresh namespace's table up to the
    // global maximum with assured entries; then the full table refuses more.
    #[test]
    fn fill_a_namespace_table_to_the_global_max() {
        in_fresh_netns(|| {
            let max = table().unwrap().max;
            let started = std::time::Instant::now();
            let created = create_udp_assured(flows(max + 100), 120).unwrap();
            eprintln!("created {created} of max {max} in {:?}", started.elapsed());
            assert!(
                created as u32 >= max - 1 && created as u32 <= max + 1,
                "created {created}, max {max}"
            );
            assert_eq!(count().unwrap(), created as u32);
            assert_eq!(
                create_udp_assured(flows(max + 200).skip(max as usize + 100), 120).unwrap(),
                0
            );
            flush().unwrap();
            assert_eq!(count().unwrap(), 0);
        });
    }
}
