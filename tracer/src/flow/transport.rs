//! DNS over UDP and TCP: which one a query used, and the link between a truncated UDP answer and
//! the TCP query the client retried it with (RFC 7766 section 5).

use std::{
    collections::VecDeque,
    net::{IpAddr, SocketAddr},
};

use tracer_common::flow::proto;

use super::record::QueryRecord;

/// How long after a truncated UDP answer a TCP query from the same client counts as its retry
/// (microseconds). Resolvers retry at once; 5 s covers a SYN retransmitted once.
pub const RETRY_WINDOW_US: u64 = 5_000_000;
/// Truncated answers remembered for linking (oldest forgotten first).
const REMEMBERED: usize = 1024;

/// The transport a query used.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// UDP (reports written before TCP was followed have only these).
    #[default]
    Udp,
    /// TCP: length-prefixed messages, several per connection.
    Tcp,
}

impl Transport {
    /// The transport of a kernel packet's IP protocol number.
    pub fn of(protocol: u8) -> Self {
        if protocol == proto::TCP {
            Self::Tcp
        } else {
            Self::Udp
        }
    }
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Udp => "udp",
            Self::Tcp => "tcp",
        })
    }
}

/// The UDP query whose truncated answer a TCP query retried.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UdpLeg {
    /// Its client socket.
    pub client: SocketAddr,
    /// Its DNS id.
    pub id: u16,
    /// When it was sent (Unix time, microseconds).
    pub time_us: u64,
}

impl std::fmt::Display for UdpLeg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "retries the truncated udp answer to {} id {:#06x}",
            self.client, self.id
        )
    }
}

struct Truncated {
    client: IpAddr,
    name: Option<String>,
    qtype: Option<String>,
    leg: UdpLeg,
}

/// The truncated UDP answers seen lately, to link each TCP query to the one it retried.
#[derive(Default)]
pub struct Retries {
    truncated: VecDeque<Truncated>,
}

impl Retries {
    /// Takes a record in time order: remembers a truncated UDP answer; names on a TCP record the
    /// truncated UDP answer it retried: the latest one to the same client address, at most
    /// `RETRY_WINDOW_US` before, for the same name and type (a failed connection carried no
    /// question: the latest one to that client). Each UDP answer links one TCP record.
    pub fn link(&mut self, r: &mut QueryRecord) {
        match r.transport {
            Transport::Udp if r.truncated => {
                if self.truncated.len() == REMEMBERED {
                    self.truncated.pop_front();
                }
                self.truncated.push_back(Truncated {
                    client: r.client.ip(),
                    name: r.name.clone(),
                    qtype: r.qtype.clone(),
                    leg: UdpLeg {
                        client: r.client,
                        id: r.id,
                        time_us: r.time_us,
                    },
                });
            }
            Transport::Udp => {}
            Transport::Tcp => {
                let found = self.truncated.iter().rposition(|t| {
                    t.client == r.client.ip()
                        && t.leg.time_us <= r.time_us
                        && r.time_us - t.leg.time_us <= RETRY_WINDOW_US
                        && (r.connection || (t.name == r.name && t.qtype == r.qtype))
                });
                if let Some(i) = found
                    && let Some(t) = self.truncated.remove(i)
                {
                    r.retry_of = Some(t.leg);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::record::Stage;

    fn record(transport: Transport, port: u16, time_us: u64, name: &str) -> QueryRecord {
        QueryRecord {
            client: SocketAddr::new("10.244.0.20".parse().unwrap(), port),
            time_us,
            transport,
            name: Some(name.to_owned()),
            qtype: Some("TXT".to_owned()),
            ..QueryRecord::dropped(1, Stage::Netfilter)
        }
    }

    #[test]
    fn a_tcp_query_names_the_truncated_udp_answer_it_retried_once() {
        let mut retries = Retries::default();
        let mut udp = record(Transport::Udp, 40000, 1_000_000, "big.lab.");
        udp.truncated = true;
        retries.link(&mut udp);
        let mut other = record(Transport::Tcp, 40001, 1_100_000, "small.lab.");
        retries.link(&mut other);
        assert_eq!(other.retry_of, None, "another name");
        let mut tcp = record(Transport::Tcp, 40002, 1_200_000, "big.lab.");
        retries.link(&mut tcp);
        let leg = tcp.retry_of.expect("linked");
        assert_eq!((leg.client.port(), leg.time_us), (40000, 1_000_000));
        let mut again = record(Transport::Tcp, 40003, 1_300_000, "big.lab.");
        retries.link(&mut again);
        assert_eq!(again.retry_of, None, "one UDP answer links one retry");
    }

    #[test]
    fn a_failed_connection_links_by_client_within_the_window() {
        let mut retries = Retries::default();
        let mut udp = record(Transport::Udp, 40000, 1_000_000, "big.lab.");
        udp.truncated = true;
        retries.link(&mut udp);
        let mut late = record(Transport::Tcp, 40001, 1_000_000 + RETRY_WINDOW_US + 1, "");
        late.connection = true;
        late.name = None;
        retries.link(&mut late);
        assert_eq!(late.retry_of, None, "outside the window");
        let mut syn = record(Transport::Tcp, 40002, 1_500_000, "");
        syn.connection = true;
        syn.name = None;
        retries.link(&mut syn);
        assert!(syn.retry_of.is_some());
    }
}
