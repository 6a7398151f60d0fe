//! Canonical signing bytes for operator tasks and trust roots.
//!
//! A signature covers a domain-separation prefix followed by the exact
//! payload bytes carried in `SignedTask.payload` (or `SignedRoot.root`). Verifiers never re-encode
//! the payload, so differences between protobuf encoders cannot change what
//! was signed, and a signature made for another purpose (another prefix)
//! cannot be replayed as a task signature.

/// Prefix that separates task signatures from any other use of the keys.
pub const TASK_SIGNING_DOMAIN: &[u8] = b"starling.v1.task\0";

/// Prefix that separates trust-root signatures from task signatures.
pub const ROOT_SIGNING_DOMAIN: &[u8] = b"starling.v1.root\0";

/// The bytes an operator key signs for a task payload.
pub fn signing_bytes(payload: &[u8]) -> Vec<u8> {
    prefixed(TASK_SIGNING_DOMAIN, payload)
}

/// The bytes an operator key signs for an encoded trust root.
pub fn root_signing_bytes(root: &[u8]) -> Vec<u8> {
    prefixed(ROOT_SIGNING_DOMAIN, root)
}

fn prefixed(domain: &[u8], bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(domain.len() + bytes.len());
    out.extend_from_slice(domain);
    out.extend_from_slice(bytes);
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
        assert_ne!(signing_bytes(b"abc"), root_signing_bytes(b"abc"));
    }
}
