//! Chain-of-custody receipts: for each accepted evidence file the server signs what it received,
//! from whom and when, with its Ed25519 key. Anyone with the public key (the server's
//! `GET /api/v1/evidence/public-key`) can check a receipt offline: the phone does so before it
//! records one. The format is defined here, once, for the server that signs and the phones
//! that verify.
//!
//! # The signed bytes
//!
//! The signature is Ed25519 (RFC 8032, pure, no pre-hash) over this UTF-8 text: nine lines,
//! each ending in `\n` (0x0A), no other whitespace, integers in decimal without leading zeros:
//!
//! ```text
//! doorstep-evidence-receipt-v1
//! receipt_id=<receipt id>
//! case_id=<case id>
//! sha256=<SHA-256 of the file, 64 lower-case hex digits>
//! size=<file size in bytes>
//! media_type=<media type declared by the uploader>
//! uploader_user_id=<user id>
//! uploader_device_id=<device id>
//! received_at=<Unix time in milliseconds when the server accepted the file>
//! ```
//!
//! The receipt's `signature` field is the 64-byte signature in standard base64 (with padding).
//! No value may contain a line break; the server refuses to sign one that does.
//!
//! To verify with OpenSSL 3 (`pub.pem` from the endpoint's `public_key_pem`):
//!
//! ```text
//! printf 'doorstep-evidence-receipt-v1\nreceipt_id=...\n...received_at=...\n' > receipt.txt
//! base64 -d <<< "$SIGNATURE" > receipt.sig
//! openssl pkeyutl -verify -pubin -inkey pub.pem -rawin -in receipt.txt -sigfile receipt.sig
//! ```
//!
//! In Rust: [`verify_receipt`]. The server signs in `doorstep_server::evidence::receipt`.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
pub use ed25519_dalek::VerifyingKey;
use ed25519_dalek::{Signature, Verifier};
use serde::{Deserialize, Serialize};

/// The first line of the signed text: names the format and its version.
pub const RECEIPT_FORMAT: &str = "doorstep-evidence-receipt-v1";

/// A receipt as the server returns it and as anyone can verify it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    pub format: String,
    pub receipt_id: String,
    pub case_id: String,
    pub sha256: String,
    pub size: u64,
    pub media_type: String,
    pub uploader_user_id: String,
    pub uploader_device_id: String,
    /// Unix milliseconds.
    pub received_at: i64,
    /// Ed25519 signature over [`Receipt::signed_bytes`], standard base64.
    pub signature: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReceiptError {
    #[error("a receipt field contains a line break")]
    LineBreak,
    #[error("unknown receipt format")]
    Format,
    #[error("the signature is malformed")]
    MalformedSignature,
    #[error("the signature does not match the receipt")]
    BadSignature,
    #[error("the public key is not 32 bytes of standard base64")]
    MalformedKey,
}

/// Reads the server's public key as `GET /api/v1/evidence/public-key` gives it (`public_key`:
/// the raw 32 bytes in standard base64).
pub fn public_key_from_base64(text: &str) -> Result<VerifyingKey, ReceiptError> {
    let bytes = STANDARD
        .decode(text.trim())
        .map_err(|_| ReceiptError::MalformedKey)?;
    let bytes: [u8; 32] = bytes.try_into().map_err(|_| ReceiptError::MalformedKey)?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| ReceiptError::MalformedKey)
}

impl Receipt {
    /// The exact bytes that are signed (see the module documentation).
    pub fn signed_bytes(&self) -> Result<Vec<u8>, ReceiptError> {
        let values = [
            &self.receipt_id,
            &self.case_id,
            &self.sha256,
            &self.media_type,
            &self.uploader_user_id,
            &self.uploader_device_id,
        ];
        if values.iter().any(|value| value.contains(['\n', '\r'])) {
            return Err(ReceiptError::LineBreak);
        }
        if self.format != RECEIPT_FORMAT {
            return Err(ReceiptError::Format);
        }
        Ok(format!(
            "{RECEIPT_FORMAT}\nreceipt_id={}\ncase_id={}\nsha256={}\nsize={}\nmedia_type={}\n\
             uploader_user_id={}\nuploader_device_id={}\nreceived_at={}\n",
            self.receipt_id,
            self.case_id,
            self.sha256,
            self.size,
            self.media_type,
            self.uploader_user_id,
            self.uploader_device_id,
            self.received_at,
        )
        .into_bytes())
    }
}

/// Checks a receipt against the server's public key, offline.
pub fn verify_receipt(receipt: &Receipt, public_key: &VerifyingKey) -> Result<(), ReceiptError> {
    let message = receipt.signed_bytes()?;
    let bytes = STANDARD
        .decode(&receipt.signature)
        .map_err(|_| ReceiptError::MalformedSignature)?;
    let signature = Signature::from_slice(&bytes).map_err(|_| ReceiptError::MalformedSignature)?;
    public_key
        .verify(&message, &signature)
        .map_err(|_| ReceiptError::BadSignature)
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::{Signer, SigningKey};

    use super::*;

    fn signed(key: &SigningKey) -> Receipt {
        let mut receipt = Receipt {
            format: RECEIPT_FORMAT.into(),
            receipt_id: "r-1".into(),
            case_id: "case-demo-1".into(),
            sha256: "ab".repeat(32),
            size: 42,
            media_type: "image/jpeg".into(),
            uploader_user_id: "u-1".into(),
            uploader_device_id: "d-1".into(),
            received_at: 1_790_000_000_000,
            signature: String::new(),
        };
        let message = receipt.signed_bytes().unwrap();
        receipt.signature = STANDARD.encode(key.sign(&message).to_bytes());
        receipt
    }

    #[test]
    fn the_signed_bytes_are_the_documented_text() {
        let text = String::from_utf8(
            signed(&SigningKey::from_bytes(&[7u8; 32]))
                .signed_bytes()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(
            text,
            format!(
                "doorstep-evidence-receipt-v1\nreceipt_id=r-1\ncase_id=case-demo-1\nsha256={}\n\
                 size=42\nmedia_type=image/jpeg\nuploader_user_id=u-1\nuploader_device_id=d-1\n\
                 received_at=1790000000000\n",
                "ab".repeat(32)
            )
        );
    }

    #[test]
    fn a_signed_receipt_verifies_and_an_altered_one_does_not() {
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let good = signed(&key);
        assert_eq!(verify_receipt(&good, &key.verifying_key()), Ok(()));
        let other = SigningKey::from_bytes(&[8u8; 32]);
        assert_eq!(
            verify_receipt(&good, &other.verifying_key()),
            Err(ReceiptError::BadSignature),
            "another key's receipt"
        );
        let mut altered = good.clone();
        altered.size = 43;
        assert_eq!(
            verify_receipt(&altered, &key.verifying_key()),
            Err(ReceiptError::BadSignature)
        );
        let mut broken = good.clone();
        broken.case_id = "case\nsize=1".into();
        assert_eq!(
            verify_receipt(&broken, &key.verifying_key()),
            Err(ReceiptError::LineBreak)
        );
        let key_text = STANDARD.encode(key.verifying_key().as_bytes());
        assert_eq!(public_key_from_base64(&key_text), Ok(key.verifying_key()));
        assert_eq!(
            public_key_from_base64("c2hvcnQ="),
            Err(ReceiptError::MalformedKey)
        );
        let mut garbled = good;
        garbled.signature = "not base64!".into();
        assert_eq!(
            verify_receipt(&garbled, &key.verifying_key()),
            Err(ReceiptError::MalformedSignature)
        );
    }
}
