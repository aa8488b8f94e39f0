//! Chain-of-custody receipts: for each accepted file the server signs what it received, from
//! whom and when, with its Ed25519 key (the same key that signs access tokens). Anyone with the
//! public key (`GET /api/v1/evidence/public-key`) can check a receipt offline.
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
//! In Rust: [`verify_receipt`].

use std::fmt;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::auth::jwt::KeyError;

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

/// The server's receipt-signing key. Lives in the app state, never in a global.
#[derive(Clone)]
pub struct ReceiptSigner {
    key: SigningKey,
}

impl fmt::Debug for ReceiptSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ReceiptSigner([redacted])")
    }
}

impl ReceiptSigner {
    pub fn new(key: SigningKey) -> Self {
        ReceiptSigner { key }
    }

    /// Loads the server's Ed25519 key (PKCS#8 PEM), the one the token keys were loaded from.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let pem = std::fs::read_to_string(path).map_err(|source| KeyError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let key = SigningKey::from_pkcs8_pem(&pem)
            .map_err(|_| KeyError::Format(path.display().to_string()))?;
        Ok(ReceiptSigner { key })
    }

    pub fn public_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// The public key as SubjectPublicKeyInfo PEM (what `openssl` reads).
    pub fn public_key_pem(&self) -> String {
        self.public_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap_or_default()
    }

    /// Fills in `receipt.signature`.
    pub fn sign(&self, receipt: &mut Receipt) -> Result<(), ReceiptError> {
        let message = receipt.signed_bytes()?;
        receipt.signature = STANDARD.encode(self.key.sign(&message).to_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receipt() -> Receipt {
        Receipt {
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
        }
    }

    #[test]
    fn the_signed_bytes_are_the_documented_text() {
        let text = String::from_utf8(receipt().signed_bytes().unwrap()).unwrap();
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

    /// The documented OpenSSL command verifies what the server signs (skipped without openssl).
    #[test]
    fn openssl_verifies_a_receipt_as_documented() {
        use std::process::Command;
        if Command::new("openssl").arg("version").output().is_err() {
            eprintln!("SKIPPED openssl_verifies_a_receipt_as_documented: no openssl here");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let signer = ReceiptSigner::new(SigningKey::from_bytes(&[7u8; 32]));
        let mut signed = receipt();
        signer.sign(&mut signed).unwrap();
        let public = dir.path().join("pub.pem");
        let text = dir.path().join("receipt.txt");
        let signature = dir.path().join("receipt.sig");
        std::fs::write(&public, signer.public_key_pem()).unwrap();
        std::fs::write(&signature, STANDARD.decode(&signed.signature).unwrap()).unwrap();
        let verify = || {
            Command::new("openssl")
                .args(["pkeyutl", "-verify", "-pubin", "-rawin", "-inkey"])
                .arg(&public)
                .arg("-in")
                .arg(&text)
                .arg("-sigfile")
                .arg(&signature)
                .output()
                .unwrap()
                .status
                .success()
        };
        std::fs::write(&text, signed.signed_bytes().unwrap()).unwrap();
        assert!(verify(), "openssl refused a good receipt");
        signed.size += 1;
        std::fs::write(&text, signed.signed_bytes().unwrap()).unwrap();
        assert!(!verify(), "openssl accepted an altered receipt");
    }

    #[test]
    fn a_signed_receipt_verifies_and_an_altered_one_does_not() {
        let signer = ReceiptSigner::new(SigningKey::from_bytes(&[7u8; 32]));
        let mut signed = receipt();
        signer.sign(&mut signed).unwrap();
        assert_eq!(verify_receipt(&signed, &signer.public_key()), Ok(()));
        let mut altered = signed.clone();
        altered.size = 43;
        assert_eq!(
            verify_receipt(&altered, &signer.public_key()),
            Err(ReceiptError::BadSignature)
        );
        let mut broken = signed;
        broken.case_id = "case\nsize=1".into();
        assert_eq!(
            verify_receipt(&broken, &signer.public_key()),
            Err(ReceiptError::LineBreak)
        );
    }
}
