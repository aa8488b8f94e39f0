//! The server's side of chain-of-custody receipts: the signing key. The receipt format, its
//! signed bytes and offline verification live in sync-core ([`doorstep_sync_core::receipt`]),
//! shared with the phones that verify receipts before recording them.

use std::fmt;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};

pub use doorstep_sync_core::receipt::{RECEIPT_FORMAT, Receipt, ReceiptError, verify_receipt};

use crate::auth::jwt::KeyError;

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

    /// The signer's side; the format and verification are tested in sync-core.
    #[test]
    fn what_the_signer_signs_verifies_with_its_public_key() {
        let signer = ReceiptSigner::new(SigningKey::from_bytes(&[7u8; 32]));
        let mut signed = receipt();
        signer.sign(&mut signed).unwrap();
        assert_eq!(verify_receipt(&signed, &signer.public_key()), Ok(()));
    }
}
