//! automerge-repo document ids and Doorstep case ids.
//!
//! An automerge-repo document id is 16 bytes written in base58check (base58 of the bytes and
//! the first four bytes of their double SHA-256). Doorstep's cases are created as
//! `case-<uuid>` (lower-case, hyphenated); such a case's document id is the base58check of
//! the UUID's 16 bytes, so `case-4f3c...` and `automerge:<base58check>` name the same case.
//! This is also how automerge-repo reads a bare UUID (`repo.find("4f3c...")`). Cases whose id is
//! not of that form (the fixed demo ids) have no document id and cannot be reached this way.

use uuid::Uuid;

/// Why a string is not an automerge-repo document id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DocumentIdError {
    #[error("document id {0:?} is not valid base58check")]
    NotBase58Check(String),
    #[error("document id {id:?} holds {len} bytes, not 16")]
    WrongLength { id: String, len: usize },
}

/// The case a document id names (`case-<uuid>`).
pub fn case_id(document_id: &str) -> Result<String, DocumentIdError> {
    // Longer input cannot be 16 bytes; refusing it early bounds the decoding work.
    if document_id.len() > 64 {
        return Err(DocumentIdError::NotBase58Check(shorten(document_id)));
    }
    let bytes = bs58::decode(document_id)
        .with_check(None)
        .into_vec()
        .map_err(|_| DocumentIdError::NotBase58Check(shorten(document_id)))?;
    let uuid = Uuid::from_slice(&bytes).map_err(|_| DocumentIdError::WrongLength {
        id: shorten(document_id),
        len: bytes.len(),
    })?;
    Ok(format!("case-{}", uuid.hyphenated()))
}

/// The document id of a case, if its id has the form `case-<uuid>` as the server writes it.
pub fn document_id(case_id: &str) -> Option<String> {
    let text = case_id.strip_prefix("case-")?;
    let uuid = Uuid::try_parse(text).ok()?;
    // Only the canonical spelling maps back to the same case id.
    if uuid.hyphenated().to_string() != text {
        return None;
    }
    Some(bs58::encode(uuid.as_bytes()).with_check().into_string())
}

/// An id quoted in an error message, cut to a readable length.
fn shorten(text: &str) -> String {
    text.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_case_id_and_its_document_id_map_both_ways() {
        let case = "case-0b5f5a0e-8f5e-4d1c-9a57-2f4c1d3e6b7a";
        let document = document_id(case).unwrap();
        assert_eq!(case_id(&document).unwrap(), case);
        // Checked against automerge-repo's own encoding of this UUID (bs58check of its bytes).
        let uuid = Uuid::parse_str("0b5f5a0e-8f5e-4d1c-9a57-2f4c1d3e6b7a").unwrap();
        let mut payload = uuid.as_bytes().to_vec();
        use sha2::{Digest, Sha256};
        let check = Sha256::digest(Sha256::digest(&payload));
        payload.extend_from_slice(&check[..4]);
        assert_eq!(document, bs58::encode(payload).into_string());
    }

    #[test]
    fn ids_that_do_not_map_are_refused() {
        assert_eq!(document_id("case-demo-1"), None);
        assert_eq!(
            document_id("case-0B5F5A0E-8F5E-4D1C-9A57-2F4C1D3E6B7A"),
            None
        );
        assert_eq!(document_id("0b5f5a0e-8f5e-4d1c-9a57-2f4c1d3e6b7a"), None);
        assert!(matches!(
            case_id("not base58 0OIl"),
            Err(DocumentIdError::NotBase58Check(_))
        ));
        // Valid base58, wrong checksum: one character changed.
        let mut good = document_id("case-0b5f5a0e-8f5e-4d1c-9a57-2f4c1d3e6b7a").unwrap();
        let last = good.pop().unwrap();
        good.push(if last == 'a' { 'b' } else { 'a' });
        assert!(matches!(
            case_id(&good),
            Err(DocumentIdError::NotBase58Check(_))
        ));
        let short = bs58::encode([1u8, 2, 3]).with_check().into_string();
        assert_eq!(
            case_id(&short),
            Err(DocumentIdError::WrongLength { id: short, len: 3 })
        );
        assert!(case_id(&"1".repeat(500)).is_err());
    }
}
