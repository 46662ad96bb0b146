//! The IPVS generic netlink family's message and attributes (include/uapi/linux/ip_vs.h), typed:
//! no maintained crate covers them. Unknown attributes are kept as they came.

use netlink_packet_core::{
    DecodeError, DefaultNla, Emitable, NLA_F_NESTED, Nla, NlaBuffer, NlasIterator, Parseable,
    ParseableParametrized, emit_u16, emit_u16_be, emit_u32, parse_string, parse_u16, parse_u16_be,
    parse_u32,
};
use netlink_packet_generic::{GenlFamily, GenlHeader};

/// The family's name in the generic netlink controller.
pub const FAMILY: &str = "IPVS";
/// IPVS_GENL_VERSION.
const VERSION: u8 = 1;

// enum IPVS_CMD_*
pub const CMD_NEW_SERVICE: u8 = 1;
pub const CMD_DEL_SERVICE: u8 = 3;
pub const CMD_GET_SERVICE: u8 = 4;
pub const CMD_NEW_DEST: u8 = 5;
pub const CMD_DEL_DEST: u8 = 7;
pub const CMD_GET_DEST: u8 = 8;

// enum IPVS_CMD_ATTR_*
const CMD_ATTR_SERVICE: u16 = 1;
const CMD_ATTR_DEST: u16 = 2;

// enum IPVS_SVC_ATTR_*
const SVC_ATTR_AF: u16 = 1;
const SVC_ATTR_PROTOCOL: u16 = 2;
const SVC_ATTR_ADDR: u16 = 3;
const SVC_ATTR_PORT: u16 = 4;
const SVC_ATTR_SCHED_NAME: u16 = 6;
const SVC_ATTR_FLAGS: u16 = 7;
const SVC_ATTR_TIMEOUT: u16 = 8;
const SVC_ATTR_NETMASK: u16 = 9;

// enum IPVS_DEST_ATTR_*
const DEST_ATTR_ADDR: u16 = 1;
const DEST_ATTR_PORT: u16 = 2;
const DEST_ATTR_FWD_METHOD: u16 = 3;
const DEST_ATTR_WEIGHT: u16 = 4;
const DEST_ATTR_U_THRESH: u16 = 5;
const DEST_ATTR_L_THRESH: u16 = 6;
const DEST_ATTR_ACTIVE_CONNS: u16 = 7;
const DEST_ATTR_INACT_CONNS: u16 = 8;
const DEST_ATTR_ADDR_FAMILY: u16 = 11;

/// One IPVS request or answer: a command and its top-level attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpvsMessage {
    pub cmd: u8,
    pub attrs: Vec<CmdAttr>,
}

/// `IPVS_CMD_ATTR_*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CmdAttr {
    Service(Vec<SvcAttr>),
    Dest(Vec<DestAttr>),
    Other(DefaultNla),
}

/// `IPVS_SVC_ATTR_*`. Addresses are the kernel's 16-byte `union nf_inet_addr`; the port is in
/// network byte order on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SvcAttr {
    Af(u16),
    Protocol(u16),
    Addr([u8; 16]),
    Port(u16),
    SchedName(String),
    /// `struct ip_vs_flags`: flags, mask.
    Flags(u32, u32),
    Timeout(u32),
    Netmask(u32),
    Other(DefaultNla),
}

/// `IPVS_DEST_ATTR_*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DestAttr {
    Addr([u8; 16]),
    Port(u16),
    FwdMethod(u32),
    Weight(u32),
    UThresh(u32),
    LThresh(u32),
    ActiveConns(u32),
    InactConns(u32),
    AddrFamily(u16),
    Other(DefaultNla),
}

impl GenlFamily for IpvsMessage {
    fn family_name() -> &'static str {
        FAMILY
    }

    fn command(&self) -> u8 {
        self.cmd
    }

    fn version(&self) -> u8 {
        VERSION
    }
}

impl Emitable for IpvsMessage {
    fn buffer_len(&self) -> usize {
        self.attrs.as_slice().buffer_len()
    }

    fn emit(&self, buffer: &mut [u8]) {
        self.attrs.as_slice().emit(buffer)
    }
}

impl ParseableParametrized<[u8], GenlHeader> for IpvsMessage {
    fn parse_with_param(buf: &[u8], header: GenlHeader) -> Result<Self, DecodeError> {
        Ok(IpvsMessage {
            cmd: header.cmd,
            attrs: parse_all(buf, CmdAttr::parse)?,
        })
    }
}

fn parse_all<T>(
    buf: &[u8],
    parse: impl Fn(&NlaBuffer<&[u8]>) -> Result<T, DecodeError>,
) -> Result<Vec<T>, DecodeError> {
    NlasIterator::new(buf)
        .map(|nla| nla.and_then(|nla| parse(&nla)))
        .collect()
}

fn addr16(payload: &[u8]) -> Result<[u8; 16], DecodeError> {
    if payload.len() < 4 || payload.len() > 16 {
        return Err(DecodeError::from(format!(
            "IPVS address of {} bytes",
            payload.len()
        )));
    }
    let mut addr = [0u8; 16];
    addr[..payload.len()].copy_from_slice(payload);
    Ok(addr)
}

fn other(nla: &NlaBuffer<&[u8]>) -> Result<DefaultNla, DecodeError> {
    DefaultNla::parse(nla)
}

impl CmdAttr {
    fn parse(nla: &NlaBuffer<&[u8]>) -> Result<Self, DecodeError> {
        let value = nla.value();
        Ok(match nla.kind() {
            CMD_ATTR_SERVICE => CmdAttr::Service(parse_all(value, SvcAttr::parse)?),
            CMD_ATTR_DEST => CmdAttr::Dest(parse_all(value, DestAttr::parse)?),
            _ => CmdAttr::Other(other(nla)?),
        })
    }
}

impl Nla for CmdAttr {
    fn value_len(&self) -> usize {
        match self {
            CmdAttr::Service(attrs) => attrs.as_slice().buffer_len(),
            CmdAttr::Dest(attrs) => attrs.as_slice().buffer_len(),
            CmdAttr::Other(nla) => nla.value_len(),
        }
    }

    fn kind(&self) -> u16 {
        match self {
            CmdAttr::Service(_) => CMD_ATTR_SERVICE | NLA_F_NESTED,
            CmdAttr::Dest(_) => CMD_ATTR_DEST | NLA_F_NESTED,
            CmdAttr::Other(nla) => nla.kind(),
        }
    }

    fn emit_value(&self, buffer: &mut [u8]) {
        match self {
            CmdAttr::Service(attrs) => attrs.as_slice().emit(buffer),
            CmdAttr::Dest(attrs) => attrs.as_slice().emit(buffer),
            CmdAttr::Other(nla) => nla.emit_value(buffer),
        }
    }
}

impl SvcAttr {
    fn parse(nla: &NlaBuffer<&[u8]>) -> Result<Self, DecodeError> {
        let v = nla.value();
        Ok(match nla.kind() {
            SVC_ATTR_AF => SvcAttr::Af(parse_u16(v)?),
            SVC_ATTR_PROTOCOL => SvcAttr::Protocol(parse_u16(v)?),
            SVC_ATTR_ADDR => SvcAttr::Addr(addr16(v)?),
            SVC_ATTR_PORT => SvcAttr::Port(parse_u16_be(v)?),
            SVC_ATTR_SCHED_NAME => SvcAttr::SchedName(parse_string(v)?),
            SVC_ATTR_FLAGS if v.len() == 8 => {
                SvcAttr::Flags(parse_u32(&v[..4])?, parse_u32(&v[4..])?)
            }
            SVC_ATTR_TIMEOUT => SvcAttr::Timeout(parse_u32(v)?),
            SVC_ATTR_NETMASK => SvcAttr::Netmask(parse_u32(v)?),
            _ => SvcAttr::Other(other(nla)?),
        })
    }
}

impl Nla for SvcAttr {
    fn value_len(&self) -> usize {
        match self {
            SvcAttr::Af(_) | SvcAttr::Protocol(_) | SvcAttr::Port(_) => 2,
            SvcAttr::Addr(_) => 16,
            SvcAttr::SchedName(s) => s.len() + 1,
            SvcAttr::Flags(..) => 8,
            SvcAttr::Timeout(_) | SvcAttr::Netmask(_) => 4,
            SvcAttr::Other(nla) => nla.value_len(),
        }
    }

    fn kind(&self) -> u16 {
        match self {
            SvcAttr::Af(_) => SVC_ATTR_AF,
            SvcAttr::Protocol(_) => SVC_ATTR_PROTOCOL,
            SvcAttr::Addr(_) => SVC_ATTR_ADDR,
            SvcAttr::Port(_) => SVC_ATTR_PORT,
            SvcAttr::SchedName(_) => SVC_ATTR_SCHED_NAME,
            SvcAttr::Flags(..) => SVC_ATTR_FLAGS,
            SvcAttr::Timeout(_) => SVC_ATTR_TIMEOUT,
            SvcAttr::Netmask(_) => SVC_ATTR_NETMASK,
            SvcAttr::Other(nla) => nla.kind(),
        }
    }

    fn emit_value(&self, buffer: &mut [u8]) {
        // The buffers are exactly value_len() long: the emitters cannot fail.
        match self {
            SvcAttr::Af(v) | SvcAttr::Protocol(v) => emit_u16(buffer, *v).unwrap_or_default(),
            SvcAttr::Port(v) => emit_u16_be(buffer, *v).unwrap_or_default(),
            SvcAttr::Addr(a) => buffer[..16].copy_from_slice(a),
            SvcAttr::SchedName(s) => {
                buffer[..s.len()].copy_from_slice(s.as_bytes());
                buffer[s.len()] = 0;
            }
            SvcAttr::Flags(flags, mask) => {
                emit_u32(&mut buffer[..4], *flags).unwrap_or_default();
                emit_u32(&mut buffer[4..8], *mask).unwrap_or_default();
            }
            SvcAttr::Timeout(v) | SvcAttr::Netmask(v) => emit_u32(buffer, *v).unwrap_or_default(),
            SvcAttr::Other(nla) => nla.emit_value(buffer),
        }
    }
}

impl DestAttr {
    fn parse(nla: &NlaBuffer<&[u8]>) -> Result<Self, DecodeError> {
        let v = nla.value();
        Ok(match nla.kind() {
            DEST_ATTR_ADDR => DestAttr::Addr(addr16(v)?),
            DEST_ATTR_PORT => DestAttr::Port(parse_u16_be(v)?),
            DEST_ATTR_FWD_METHOD => DestAttr::FwdMethod(parse_u32(v)?),
            DEST_ATTR_WEIGHT => DestAttr::Weight(parse_u32(v)?),
            DEST_ATTR_U_THRESH => DestAttr::UThresh(parse_u32(v)?),
            DEST_ATTR_L_THRESH => DestAttr::LThresh(parse_u32(v)?),
            DEST_ATTR_ACTIVE_CONNS => DestAttr::ActiveConns(parse_u32(v)?),
            DEST_ATTR_INACT_CONNS => DestAttr::InactConns(parse_u32(v)?),
            DEST_ATTR_ADDR_FAMILY => DestAttr::AddrFamily(parse_u16(v)?),
            _ => DestAttr::Other(other(nla)?),
        })
    }
}

impl Nla for DestAttr {
    fn value_len(&self) -> usize {
        match self {
            DestAttr::Addr(_) => 16,
            DestAttr::Port(_) | DestAttr::AddrFamily(_) => 2,
            DestAttr::Other(nla) => nla.value_len(),
            _ => 4,
        }
    }

    fn kind(&self) -> u16 {
        match self {
            DestAttr::Addr(_) => DEST_ATTR_ADDR,
            DestAttr::Port(_) => DEST_ATTR_PORT,
            DestAttr::FwdMethod(_) => DEST_ATTR_FWD_METHOD,
            DestAttr::Weight(_) => DEST_ATTR_WEIGHT,
            DestAttr::UThresh(_) => DEST_ATTR_U_THRESH,
            DestAttr::LThresh(_) => DEST_ATTR_L_THRESH,
            DestAttr::ActiveConns(_) => DEST_ATTR_ACTIVE_CONNS,
            DestAttr::InactConns(_) => DEST_ATTR_INACT_CONNS,
            DestAttr::AddrFamily(_) => DEST_ATTR_ADDR_FAMILY,
            DestAttr::Other(nla) => nla.kind(),
        }
    }

    fn emit_value(&self, buffer: &mut [u8]) {
        match self {
            DestAttr::Addr(a) => buffer[..16].copy_from_slice(a),
            DestAttr::Port(v) => emit_u16_be(buffer, *v).unwrap_or_default(),
            DestAttr::AddrFamily(v) => emit_u16(buffer, *v).unwrap_or_default(),
            DestAttr::FwdMethod(v)
            | DestAttr::Weight(v)
            | DestAttr::UThresh(v)
            | DestAttr::LThresh(v)
            | DestAttr::ActiveConns(v)
            | DestAttr::InactConns(v) => emit_u32(buffer, *v).unwrap_or_default(),
            DestAttr::Other(nla) => nla.emit_value(buffer),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn emitted(attrs: &[CmdAttr]) -> Vec<u8> {
        let mut buf = vec![0u8; attrs.buffer_len()];
        attrs.emit(&mut buf);
        buf
    }

    #[test]
    fn service_attributes_have_the_kernels_layout() {
        let mut addr = [0u8; 16];
        addr[..4].copy_from_slice(&[10, 96, 0, 10]);
        let buf = emitted(&[CmdAttr::Service(vec![
            SvcAttr::Af(2),
            SvcAttr::Port(53),
            SvcAttr::Addr(addr),
        ])]);
        // Nested header: len 4 + (8 + 8 + 20), type SERVICE | NESTED.
        assert_eq!(&buf[..4], &[40, 0, 1, 0x80]);
        // AF: len 6, type 1, value 2 (host order), 2 bytes padding.
        assert_eq!(&buf[4..12], &[6, 0, 1, 0, 2, 0, 0, 0]);
        // Port: network byte order.
        assert_eq!(&buf[12..20], &[6, 0, 4, 0, 0, 53, 0, 0]);
        assert_eq!(&buf[24..28], &[10, 96, 0, 10]);
    }

    #[test]
    fn a_dumped_service_with_a_destination_round_trips() {
        let mut addr = [0u8; 16];
        addr[..4].copy_from_slice(&[10, 244, 0, 10]);
        let attrs = vec![
            CmdAttr::Service(vec![
                SvcAttr::Protocol(17),
                SvcAttr::SchedName("rr".to_owned()),
                SvcAttr::Flags(0, u32::MAX),
                SvcAttr::Netmask(u32::MAX),
            ]),
            CmdAttr::Dest(vec![
                DestAttr::Addr(addr),
                DestAttr::Port(53),
                DestAttr::FwdMethod(0),
                DestAttr::Weight(1),
                DestAttr::ActiveConns(3),
                DestAttr::AddrFamily(2),
            ]),
        ];
        let buf = emitted(&attrs);
        let parsed = IpvsMessage::parse_with_param(&buf, GenlHeader { cmd: 5, version: 1 });
        assert_eq!(parsed.unwrap(), IpvsMessage { cmd: 5, attrs });
    }

    #[test]
    fn a_short_address_or_truncated_attribute_is_an_error() {
        let header = GenlHeader { cmd: 5, version: 1 };
        // A destination whose address is 2 bytes long.
        let short = [12u8, 0, 2, 0x80, 6, 0, 1, 0, 10, 244, 0, 0];
        assert!(IpvsMessage::parse_with_param(&short, header).is_err());
        let buf = emitted(&[CmdAttr::Dest(vec![DestAttr::Port(53)])]);
        assert!(IpvsMessage::parse_with_param(&buf[..6], header).is_err());
    }
}
