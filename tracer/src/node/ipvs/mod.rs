//! IPVS (kube-proxy's ipvs mode) over generic netlink, without `ipvsadm`: resolve the `IPVS`
//! family, dump virtual services with their real servers, and create or delete them (the lab).
//! Like ctnetlink, a socket works in the network namespace of the thread that opened it: call
//! these inside [`crate::netns::run_in`].
//!
//! # Layout
//! - this file: [`Service`], [`Destination`], the calls, and the request/answer loop.
//! - `nla`: the family's message and attributes, typed.

mod nla;

use std::{io, net::Ipv4Addr};

use netlink_packet_core::{
    DecodeError, Emitable, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage,
    NetlinkPayload, ParseableParametrized,
};
use netlink_packet_generic::{
    GenlFamily, GenlHeader, GenlMessage,
    ctrl::{GenlCtrl, GenlCtrlCmd, nlas::GenlCtrlAttrs},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_GENERIC};

use self::nla::{CmdAttr, DestAttr, IpvsMessage, SvcAttr};

/// AF_INET as IPVS spells it (u16).
const AF_INET: u16 = libc::AF_INET as u16;
/// `IP_VS_CONN_F_FWD_MASK` and the forwarding methods under it.
const FWD_MASK: u32 = 0x7;
/// One receive call; a dump of many services spans several.
const RECV_LEN: usize = 64 << 10;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to open a generic netlink socket: {source}")]
    Socket { source: io::Error },
    #[error(
        "this kernel has no IPVS: the generic netlink family IPVS is not registered (load the ip_vs module; kernel {release})"
    )]
    Unavailable { release: String },
    #[error("failed to send {what} over generic netlink: {source}")]
    Send {
        what: &'static str,
        source: io::Error,
    },
    #[error("failed to receive the answer to {what}: {source}")]
    Recv {
        what: &'static str,
        source: io::Error,
    },
    #[error("failed to decode the answer to {what}: {source}")]
    Decode {
        what: &'static str,
        source: DecodeError,
    },
    #[error("the kernel refused {what}: {source}")]
    Refused {
        what: &'static str,
        source: io::Error,
    },
}

/// How IPVS sends a connection to a real server (`IP_VS_CONN_F_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Forward {
    /// NAT: the destination is rewritten (kube-proxy's only method).
    Masquerade,
    Local,
    Tunnel,
    DirectRoute,
    Bypass,
}

impl Forward {
    /// The name as the JSON spells it (`masquerade`).
    pub fn name(self) -> &'static str {
        match self {
            Forward::Masquerade => "masquerade",
            Forward::Local => "local",
            Forward::Tunnel => "tunnel",
            Forward::DirectRoute => "direct-route",
            Forward::Bypass => "bypass",
        }
    }

    fn of(flags: u32) -> Forward {
        match flags & FWD_MASK {
            0 => Forward::Masquerade,
            1 => Forward::Local,
            2 => Forward::Tunnel,
            3 => Forward::DirectRoute,
            _ => Forward::Bypass,
        }
    }

    fn flags(self) -> u32 {
        match self {
            Forward::Masquerade => 0,
            Forward::Local => 1,
            Forward::Tunnel => 2,
            Forward::DirectRoute => 3,
            Forward::Bypass => 4,
        }
    }
}

/// A real server of a virtual service.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Destination {
    /// Its address.
    pub addr: Ipv4Addr,
    /// Its port.
    pub port: u16,
    /// How connections reach it.
    pub forward: Forward,
    /// Its scheduling weight (0: no new connections).
    pub weight: u32,
    /// Active connections (TCP established).
    pub active: u32,
    /// Inactive connections (UDP flows count here).
    pub inactive: u32,
}

impl Destination {
    /// A masqueraded real server of weight 1, as kube-proxy adds them.
    pub fn masquerade(addr: Ipv4Addr, port: u16) -> Destination {
        Destination {
            addr,
            port,
            forward: Forward::Masquerade,
            weight: 1,
            active: 0,
            inactive: 0,
        }
    }
}

/// An IPv4 virtual service (address, protocol, port) and its real servers.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Service {
    /// The virtual address (a ClusterIP).
    pub addr: Ipv4Addr,
    /// IP protocol number (17 udp, 6 tcp).
    pub protocol: u8,
    /// The virtual port.
    pub port: u16,
    /// The scheduler (`rr`).
    pub scheduler: String,
    /// Its real servers, as a dump returns them.
    pub destinations: Vec<Destination>,
}

/// The IPVS family of the calling thread's namespace, resolved; `Error::Unavailable` without IPVS.
pub struct Ipvs {
    socket: Socket,
    family: u16,
    seq: u32,
    buf: Vec<u8>,
}

fn addr16(addr: Ipv4Addr) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..4].copy_from_slice(&addr.octets());
    out
}

fn ipv4(addr: &[u8; 16]) -> Ipv4Addr {
    Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3])
}

fn service_key(s: &Service) -> Vec<SvcAttr> {
    vec![
        SvcAttr::Af(AF_INET),
        SvcAttr::Protocol(u16::from(s.protocol)),
        SvcAttr::Addr(addr16(s.addr)),
        SvcAttr::Port(s.port),
    ]
}

fn service_of(attrs: &[SvcAttr]) -> Option<Service> {
    let mut s = Service {
        addr: Ipv4Addr::UNSPECIFIED,
        protocol: 0,
        port: 0,
        scheduler: String::new(),
        destinations: Vec::new(),
    };
    let mut af = 0;
    for a in attrs {
        match a {
            SvcAttr::Af(v) => af = *v,
            SvcAttr::Protocol(v) => s.protocol = u8::try_from(*v).ok()?,
            SvcAttr::Addr(v) => s.addr = ipv4(v),
            SvcAttr::Port(v) => s.port = *v,
            SvcAttr::SchedName(v) => s.scheduler.clone_from(v),
            _ => {}
        }
    }
    // IPv6 and firewall-mark services are not the lab's or kube-proxy's IPv4 ClusterIPs.
    (af == AF_INET && s.protocol != 0).then_some(s)
}

fn destination_of(attrs: &[DestAttr]) -> Destination {
    let mut d = Destination::masquerade(Ipv4Addr::UNSPECIFIED, 0);
    for a in attrs {
        match a {
            DestAttr::Addr(v) => d.addr = ipv4(v),
            DestAttr::Port(v) => d.port = *v,
            DestAttr::FwdMethod(v) => d.forward = Forward::of(*v),
            DestAttr::Weight(v) => d.weight = *v,
            DestAttr::ActiveConns(v) => d.active = *v,
            DestAttr::InactConns(v) => d.inactive = *v,
            _ => {}
        }
    }
    d
}

impl Ipvs {
    /// Opens a generic netlink socket in the calling thread's namespace and resolves IPVS.
    pub fn open() -> Result<Ipvs, Error> {
        let err = |source| Error::Socket { source };
        let mut socket = Socket::new(NETLINK_GENERIC).map_err(err)?;
        socket.bind_auto().map_err(err)?;
        socket.connect(&SocketAddr::new(0, 0)).map_err(err)?;
        let mut ipvs = Ipvs {
            socket,
            family: 0,
            seq: 0,
            buf: vec![0; RECV_LEN],
        };
        let ctrl = GenlCtrl {
            cmd: GenlCtrlCmd::GetFamily,
            nlas: vec![GenlCtrlAttrs::FamilyName(nla::FAMILY.to_owned())],
        };
        let ctrl_id = ctrl.family_id();
        let answers = match ipvs.exchange("the IPVS family lookup", ctrl, ctrl_id, false) {
            Err(Error::Refused { source, .. }) if source.raw_os_error() == Some(libc::ENOENT) => {
                return Err(Error::Unavailable {
                    release: nix::sys::utsname::uname()
                        .map(|u| u.release().to_string_lossy().into_owned())
                        .unwrap_or_default(),
                });
            }
            other => other?,
        };
        ipvs.family = answers
            .iter()
            .flat_map(|m| &m.nlas)
            .find_map(|a| match a {
                GenlCtrlAttrs::FamilyId(id) => Some(*id),
                _ => None,
            })
            .ok_or(Error::Decode {
                what: "the IPVS family lookup",
                source: DecodeError::from("no family id in the answer"),
            })?;
        Ok(ipvs)
    }

    /// Every IPv4 virtual service with its real servers.
    pub fn services(&mut self) -> Result<Vec<Service>, Error> {
        let dump = self.ipvs(
            "the IPVS service dump",
            nla::CMD_GET_SERVICE,
            Vec::new(),
            true,
        )?;
        let mut services: Vec<Service> = dump
            .iter()
            .flat_map(|m| &m.attrs)
            .filter_map(|a| match a {
                CmdAttr::Service(attrs) => service_of(attrs),
                _ => None,
            })
            .collect();
        for s in &mut services {
            let key = vec![CmdAttr::Service(service_key(s))];
            let dests = self.ipvs("the IPVS destination dump", nla::CMD_GET_DEST, key, true)?;
            s.destinations = dests
                .iter()
                .flat_map(|m| &m.attrs)
                .filter_map(|a| match a {
                    CmdAttr::Dest(attrs) => Some(destination_of(attrs)),
                    _ => None,
                })
                .collect();
        }
        Ok(services)
    }

    /// Adds a virtual service (no timeout, no persistence) and its destinations.
    pub fn add_service(&mut self, s: &Service) -> Result<(), Error> {
        let mut attrs = service_key(s);
        attrs.extend([
            SvcAttr::SchedName(s.scheduler.clone()),
            SvcAttr::Flags(0, u32::MAX),
            SvcAttr::Timeout(0),
            SvcAttr::Netmask(u32::MAX),
        ]);
        let request = vec![CmdAttr::Service(attrs)];
        self.ipvs("an IPVS service", nla::CMD_NEW_SERVICE, request, false)?;
        for d in &s.destinations {
            self.add_destination(s, d)?;
        }
        Ok(())
    }

    /// Deletes a virtual service with its destinations.
    pub fn del_service(&mut self, s: &Service) -> Result<(), Error> {
        let request = vec![CmdAttr::Service(service_key(s))];
        self.ipvs(
            "an IPVS service deletion",
            nla::CMD_DEL_SERVICE,
            request,
            false,
        )
        .map(drop)
    }

    /// Adds a real server to a virtual service.
    pub fn add_destination(&mut self, s: &Service, d: &Destination) -> Result<(), Error> {
        let request = vec![
            CmdAttr::Service(service_key(s)),
            CmdAttr::Dest(vec![
                DestAttr::AddrFamily(AF_INET),
                DestAttr::Addr(addr16(d.addr)),
                DestAttr::Port(d.port),
                DestAttr::FwdMethod(d.forward.flags()),
                DestAttr::Weight(d.weight),
                DestAttr::UThresh(0),
                DestAttr::LThresh(0),
            ]),
        ];
        self.ipvs("an IPVS destination", nla::CMD_NEW_DEST, request, false)
            .map(drop)
    }

    /// Removes a real server from a virtual service.
    pub fn del_destination(&mut self, s: &Service, d: &Destination) -> Result<(), Error> {
        let request = vec![
            CmdAttr::Service(service_key(s)),
            CmdAttr::Dest(vec![
                DestAttr::AddrFamily(AF_INET),
                DestAttr::Addr(addr16(d.addr)),
                DestAttr::Port(d.port),
            ]),
        ];
        self.ipvs(
            "an IPVS destination deletion",
            nla::CMD_DEL_DEST,
            request,
            false,
        )
        .map(drop)
    }

    fn ipvs(
        &mut self,
        what: &'static str,
        cmd: u8,
        attrs: Vec<CmdAttr>,
        dump: bool,
    ) -> Result<Vec<IpvsMessage>, Error> {
        let family = self.family;
        self.exchange(what, IpvsMessage { cmd, attrs }, family, dump)
    }

    /// Sends one request and receives its answers until the ack (or a dump's `NLMSG_DONE`).
    fn exchange<F>(
        &mut self,
        what: &'static str,
        payload: F,
        family_id: u16,
        dump: bool,
    ) -> Result<Vec<F>, Error>
    where
        F: GenlFamily + Emitable + ParseableParametrized<[u8], GenlHeader> + std::fmt::Debug,
    {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | if dump { NLM_F_DUMP } else { NLM_F_ACK };
        header.sequence_number = self.seq;
        let genl = GenlMessage::new(
            GenlHeader {
                cmd: payload.command(),
                version: payload.version(),
            },
            payload,
            family_id,
        );
        let mut msg = NetlinkMessage::new(header, NetlinkPayload::from(genl));
        msg.finalize();
        let mut out = vec![0; msg.buffer_len()];
        msg.serialize(&mut out);
        self.socket
            .send(&out, 0)
            .map_err(|source| Error::Send { what, source })?;
        let mut answers = Vec::new();
        loop {
            let n = self
                .socket
                .recv(&mut &mut self.buf[..], 0)
                .map_err(|source| Error::Recv { what, source })?;
            for m in crate::netlink::split::<GenlMessage<F>>(&self.buf[..n.min(self.buf.len())]) {
                let m = m.map_err(|source| Error::Decode { what, source })?;
                if m.header.sequence_number != self.seq {
                    continue;
                }
                match m.payload {
                    NetlinkPayload::InnerMessage(genl) => answers.push(genl.payload),
                    NetlinkPayload::Done(_) => return Ok(answers),
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(answers),
                            Some(code) => Err(Error::Refused {
                                what,
                                source: io::Error::from_raw_os_error(-code.get()),
                            }),
                        };
                    }
                    _ => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_and_destinations_decode_from_attributes() {
        let key = service_key(&Service {
            addr: Ipv4Addr::new(10, 96, 0, 10),
            protocol: 17,
            port: 53,
            scheduler: String::new(),
            destinations: Vec::new(),
        });
        let mut attrs = key.clone();
        attrs.push(SvcAttr::SchedName("rr".to_owned()));
        let s = service_of(&attrs).unwrap();
        assert_eq!(
            (s.addr, s.protocol, s.port),
            (Ipv4Addr::new(10, 96, 0, 10), 17, 53)
        );
        assert_eq!(s.scheduler, "rr");
        // An IPv6 service is not an IPv4 ClusterIP.
        let mut v6 = key;
        v6[0] = SvcAttr::Af(10);
        assert!(service_of(&v6).is_none());
        let d = destination_of(&[
            DestAttr::Addr(addr16(Ipv4Addr::new(10, 244, 0, 11))),
            DestAttr::Port(53),
            DestAttr::FwdMethod(0),
            DestAttr::InactConns(4),
        ]);
        assert_eq!(d.addr, Ipv4Addr::new(10, 244, 0, 11));
        assert_eq!((d.forward, d.inactive), (Forward::Masquerade, 4));
        assert_eq!(
            Forward::of(Forward::DirectRoute.flags()),
            Forward::DirectRoute
        );
    }
}
