//! What every netlink family the tracer speaks (ctnetlink, rtnetlink) shares: splitting a received
//! datagram into its messages, bounded by the datagram, never panicking on a bad length.

use netlink_packet_core::{DecodeError, NetlinkDeserializable, NetlinkMessage};

/// The netlink messages in one datagram; a message whose length runs past the datagram (or is
/// shorter than a header) ends the iteration with an error.
pub fn split<T: NetlinkDeserializable>(
    mut bytes: &[u8],
) -> impl Iterator<Item = Result<NetlinkMessage<T>, DecodeError>> + '_ {
    std::iter::from_fn(move || {
        if bytes.len() < 16 {
            return None;
        }
        let len = u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        if len < 16 || len > bytes.len() {
            bytes = &[];
            return Some(Err(DecodeError::from(format!(
                "netlink message length {len} out of bounds"
            ))));
        }
        let message = NetlinkMessage::<T>::deserialize(&bytes[..len]);
        // Messages are 4-byte aligned.
        bytes = &bytes[((len + 3) & !3).min(bytes.len())..];
        Some(message)
    })
}
