//! The question of a DNS query, read from the first bytes of a UDP
//! datagram sent to port 53. The kernel captures only the header and what
//! fits a question, so a whole-message parser (which wants every section)
//! would refuse what we have: this reads the header and the first
//! question, and nothing else. The bytes come from any process on the
//! host and are hostile: every length is checked, names are escaped.

use thiserror::Error;

/// Size of the DNS header.
const HEADER_LEN: usize = 12;
/// Longest name on the wire (RFC 1035 2.3.4), length bytes included.
const NAME_MAX: usize = 255;
/// Longest label.
const LABEL_MAX: usize = 63;

/// The first question of a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsQuestion {
    /// Transaction id.
    pub id: u16,
    /// The name, labels joined by dots (see [`parse_query`] for escaping).
    pub name: String,
    /// QTYPE (1 A, 28 AAAA, ...).
    pub qtype: u16,
    /// QCLASS (1 IN).
    pub qclass: u16,
}

/// Why a datagram to port 53 has no readable question.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum DnsError {
    #[error("shorter than a DNS header ({0} bytes)")]
    Short(usize),
    #[error("no question (QDCOUNT is 0)")]
    NoQuestion,
    #[error("the question runs past the captured bytes")]
    Truncated,
    #[error("label type {0:#04x} is not a plain label")]
    BadLabel(u8),
    #[error("the name is longer than 255 bytes")]
    NameTooLong,
}

/// Reads the header and first question of a DNS message. Label bytes
/// other than letters, digits, `-` and `_` are written as `\DDD` (decimal,
/// as in zone files), and a dot or backslash inside a label as `\.` or
/// `\\`, so a name cannot pretend to have other labels than it has. The
/// root name is ".".
pub fn parse_query(b: &[u8]) -> Result<DnsQuestion, DnsError> {
    if b.len() < HEADER_LEN {
        return Err(DnsError::Short(b.len()));
    }
    let id = u16::from_be_bytes([b[0], b[1]]);
    if u16::from_be_bytes([b[4], b[5]]) == 0 {
        return Err(DnsError::NoQuestion);
    }
    let mut name = String::new();
    let mut at = HEADER_LEN;
    loop {
        let len = *b.get(at).ok_or(DnsError::Truncated)?;
        at += 1;
        if len == 0 {
            break;
        }
        // A query's question never needs compression (nothing precedes
        // it); 0x40 and 0x80 are reserved label types.
        if usize::from(len) > LABEL_MAX {
            return Err(DnsError::BadLabel(len & 0xC0));
        }
        if at - HEADER_LEN + usize::from(len) >= NAME_MAX {
            return Err(DnsError::NameTooLong);
        }
        let label = b
            .get(at..at + usize::from(len))
            .ok_or(DnsError::Truncated)?;
        at += usize::from(len);
        if !name.is_empty() {
            name.push('.');
        }
        escape_label(label, &mut name);
    }
    if name.is_empty() {
        name.push('.');
    }
    let fixed = b.get(at..at + 4).ok_or(DnsError::Truncated)?;
    Ok(DnsQuestion {
        id,
        name,
        qtype: u16::from_be_bytes([fixed[0], fixed[1]]),
        qclass: u16::from_be_bytes([fixed[2], fixed[3]]),
    })
}

fn escape_label(label: &[u8], out: &mut String) {
    for &c in label {
        match c {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' => out.push(char::from(c)),
            b'.' | b'\\' => {
                out.push('\\');
                out.push(char::from(c));
            }
            _ => out.push_str(&format!("\\{c:03}")),
        }
    }
}

/// The mnemonic of a query type, or `TYPE<n>` (RFC 3597) for the rest.
pub fn type_name(qtype: u16) -> String {
    let name = match qtype {
        1 => "A",
        2 => "NS",
        5 => "CNAME",
        6 => "SOA",
        12 => "PTR",
        13 => "HINFO",
        15 => "MX",
        16 => "TXT",
        28 => "AAAA",
        33 => "SRV",
        35 => "NAPTR",
        43 => "DS",
        48 => "DNSKEY",
        64 => "SVCB",
        65 => "HTTPS",
        99 => "SPF",
        252 => "AXFR",
        255 => "ANY",
        257 => "CAA",
        n => return format!("TYPE{n}"),
    };
    name.to_owned()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A query as a resolver sends it: header, one question, and (as glibc
    /// and most stubs add) an OPT record that the parser must ignore.
    pub(crate) fn query(id: u16, labels: &[&[u8]], qtype: u16) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&id.to_be_bytes());
        b.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 1]);
        for l in labels {
            b.push(l.len() as u8);
            b.extend_from_slice(l);
        }
        b.push(0);
        b.extend_from_slice(&qtype.to_be_bytes());
        b.extend_from_slice(&1u16.to_be_bytes());
        b.extend_from_slice(&[0, 0, 41, 4, 208, 0, 0, 0, 0, 0, 0]);
        b
    }

    #[test]
    fn reads_the_first_question() {
        let q = parse_query(&query(0xbeef, &[b"www", b"example", b"com"], 28)).unwrap();
        assert_eq!(q.id, 0xbeef);
        assert_eq!(q.name, "www.example.com");
        assert_eq!((q.qtype, q.qclass), (28, 1));
        assert_eq!(type_name(q.qtype), "AAAA");
        assert_eq!(type_name(65280), "TYPE65280");
        let root = parse_query(&query(1, &[], 2)).unwrap();
        assert_eq!(root.name, ".");
    }

    #[test]
    fn hostile_labels_are_escaped() {
        let q = parse_query(&query(1, &[b"a.b", b"c\\d", b"\x00\xff\n", b"ok_-"], 16)).unwrap();
        assert_eq!(q.name, "a\\.b.c\\\\d.\\000\\255\\010.ok_-");
    }

    #[test]
    fn broken_messages_are_errors() {
        assert_eq!(parse_query(&[0; 5]), Err(DnsError::Short(5)));
        let mut none = query(1, &[b"x"], 1);
        none[5] = 0;
        assert_eq!(parse_query(&none), Err(DnsError::NoQuestion));
        let full = query(1, &[b"example", b"com"], 1);
        for cut in HEADER_LEN..HEADER_LEN + 17 {
            assert_eq!(parse_query(&full[..cut]), Err(DnsError::Truncated), "{cut}");
        }
        let mut pointer = query(1, &[b"x"], 1);
        pointer[HEADER_LEN] = 0xC0;
        assert_eq!(parse_query(&pointer), Err(DnsError::BadLabel(0xC0)));
        let long = [[b'a'; 63]; 4];
        let labels: Vec<&[u8]> = long.iter().map(|l| &l[..]).collect();
        assert_eq!(
            parse_query(&query(1, &labels, 1)),
            Err(DnsError::NameTooLong)
        );
        // 253 characters of name (the most a name can have) still parse.
        let most: Vec<&[u8]> = vec![&long[0], &long[1], &long[2], &long[3][..61]];
        assert_eq!(parse_query(&query(1, &most, 1)).unwrap().name.len(), 253);
    }
}
