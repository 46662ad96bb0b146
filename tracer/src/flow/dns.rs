//! The DNS question, decoded with hickory-proto from the bytes the kernel copied: up to the
//! datagram's end, at most `QUESTION_LEN` bytes (room for the longest name the protocol allows).
//! A name cut by a short packet decodes as `None`, never as a guess; the correlator counts it.

use hickory_proto::{
    rr::{Name, RecordType},
    serialize::binary::{BinDecodable as _, BinDecoder},
};

/// Name and type of a query, as far as the copied bytes hold them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Question {
    /// The queried name (fully qualified, with the trailing dot).
    pub name: Option<String>,
    /// The query type (A, AAAA, SRV ...).
    pub qtype: Option<String>,
}

/// Decodes the question from raw bytes (all zero means the kernel copied nothing).
pub fn question(raw: &[u8]) -> Question {
    if raw.iter().all(|b| *b == 0) {
        return Question::default();
    }
    let mut d = BinDecoder::new(raw);
    let Ok(name) = Name::read(&mut d) else {
        return Question::default();
    };
    let qtype = d
        .read_u16()
        .ok()
        .map(|t| RecordType::from(t.unverified()).to_string());
    Question {
        name: Some(name.to_ascii()),
        qtype,
    }
}

#[cfg(test)]
mod tests {
    use tracer_common::flow::QUESTION_LEN;

    use super::*;

    fn wire(name: &str, qtype: u16) -> Vec<u8> {
        let mut v = Vec::new();
        for label in name.trim_end_matches('.').split('.') {
            v.push(label.len() as u8);
            v.extend_from_slice(label.as_bytes());
        }
        v.push(0);
        v.extend_from_slice(&qtype.to_be_bytes());
        v.extend_from_slice(&1u16.to_be_bytes());
        assert!(v.len() <= QUESTION_LEN, "{name} does not fit");
        v.resize(QUESTION_LEN, 0);
        v
    }

    /// A name of `len` characters (without the trailing dot): labels of 63 and a shorter last.
    fn long_name(len: usize) -> String {
        let mut name = String::new();
        let mut label = b'a';
        while name.len() < len {
            if !name.is_empty() {
                name.push('.');
            }
            let n = (len - name.len()).min(63);
            name.extend(std::iter::repeat_n(label as char, n));
            label += 1;
        }
        name
    }

    #[test]
    fn decodes_name_and_type() {
        let q = question(&wire("kubernetes.default.svc.cluster.local", 28));
        assert_eq!(
            q.name.as_deref(),
            Some("kubernetes.default.svc.cluster.local.")
        );
        assert_eq!(q.qtype.as_deref(), Some("AAAA"));
    }

    #[test]
    fn the_longest_name_round_trips() {
        // 253 characters is the most a name may have: 255 bytes on the wire.
        let name = long_name(253);
        assert_eq!(name.len(), 253);
        let raw = wire(&name, 1);
        assert_eq!(
            raw[255..259],
            [0, 1, 0, 1],
            "type and class after 255 name bytes"
        );
        let q = question(&raw);
        assert_eq!(q.name, Some(format!("{name}.")));
        assert_eq!(q.qtype.as_deref(), Some("A"));
        // As the kernel copies it: up to the datagram's end, here the class's last byte.
        assert_eq!(question(&raw[..259]).name, Some(format!("{name}.")));
    }

    #[test]
    fn a_long_name_cut_by_the_packet_decodes_to_nothing() {
        let raw = wire(&long_name(200), 1);
        for cut in [64, 150, 201] {
            assert_eq!(question(&raw[..cut]).name, None, "cut at {cut}");
        }
    }

    #[test]
    fn cut_or_garbage_bytes_decode_to_nothing() {
        assert_eq!(question(&[0; 64]), Question::default());
        // A label claiming 63 bytes that are not there.
        let mut cut = vec![63u8];
        cut.extend_from_slice(&[b'a'; 10]);
        assert_eq!(question(&cut).name, None);
    }
}
