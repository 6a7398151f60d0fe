//! Canonical signing bytes for operator tasks.
//!
//! A signature covers a domain-separation prefix followed by the exact
//! payload bytes carried in `SignedTask.payload`. Verifiers never re-encode
//! the payload, so differences between protobuf encoders cannot change what
//! was signed, and a signature made for another purpose (another prefix)
//! cannot be replayed as a task signature.

/// Prefix that separates task signatures from any other use of the keys.
pub const TASK_SIGNING_DOMAIN: &[u8] = b"starling.v1.task\0";

/// The bytes an operator key signs for a task payload.
pub fn signing_bytes(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(TASK_SIGNING_DOMAIN.len() + payload.len());
    out.extend_from_slice(TASK_SIGNING_DOMAIN);
    out.extend_from_slice(payload);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signing_bytes_are_prefixed_payload() {
        let b = signing_bytes(b"abc");
        assert!(b.starts_with(TASK_SIGNING_DOMAIN));
        assert_eq!(&b[TASK_SIGNING_DOMAIN.len()..], b"abc");
        assert_ne!(signing_bytes(b"abc"), signing_bytes(b"abd"));
    }
}
