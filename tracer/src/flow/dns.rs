//! The DNS question, decoded with hickory-proto from the bytes the kernel copied (the question
//! may be cut at `QUESTION_LEN` bytes: a cut name decodes as `None`, never as a guess).

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
        v.resize(64, 0);
        v
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
    fn cut_or_garbage_bytes_decode_to_nothing() {
        assert_eq!(question(&[0; 64]), Question::default());
        // A label claiming 63 bytes that are not there.
        let mut cut = vec![63u8];
        cut.extend_from_slice(&[b'a'; 10]);
        assert_eq!(question(&cut).name, None);
    }
}
