//! Access tokens: short-lived JWTs signed with Ed25519 (EdDSA). Only EdDSA is accepted, with
//! this server's issuer and audience and an expiry; anything else is refused.

use std::fmt;
use std::io::Write;
use std::path::Path;

use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::storage::Role;

pub const ISSUER: &str = "doorstep-server";
pub const AUDIENCE: &str = "doorstep-api";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read or write the signing key file {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the signing key file {0} is not an Ed25519 PKCS#8 PEM key")]
    Format(String),
}

/// What an access token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    /// The device id the token was issued to.
    pub did: String,
    pub role: Role,
    pub iss: String,
    pub aud: String,
    pub iat: i64,
    pub exp: i64,
}

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("expired")]
    Expired,
    #[error("invalid")]
    Invalid,
}

/// The signing key pair. Lives in the app state, never in a global.
#[derive(Clone)]
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenKeys([redacted])")
    }
}

impl TokenKeys {
    pub fn from_signing_key(key: &SigningKey) -> Result<Self, KeyError> {
        let der = key
            .to_pkcs8_der()
            .map_err(|_| KeyError::Format("(generated key)".into()))?;
        let encoding = EncodingKey::from_ed_der(der.as_bytes());
        let decoding = DecodingKey::from_ed_der(key.verifying_key().as_bytes());
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.algorithms = vec![Algorithm::EdDSA];
        validation.set_audience(&[AUDIENCE]);
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = 5;
        Ok(TokenKeys {
            encoding,
            decoding,
            validation,
        })
    }

    /// Loads the key from `path`, or generates one there (readable by this user only).
    pub fn load_or_generate(path: &Path) -> Result<Self, KeyError> {
        let io = |source| KeyError::Io {
            path: path.display().to_string(),
            source,
        };
        match std::fs::read_to_string(path) {
            Ok(pem) => {
                let key = SigningKey::from_pkcs8_pem(&pem)
                    .map_err(|_| KeyError::Format(path.display().to_string()))?;
                Self::from_signing_key(&key)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut secret = [0u8; 32];
                rand::rngs::OsRng.fill_bytes(&mut secret);
                let key = SigningKey::from_bytes(&secret);
                let pem = key
                    .to_pkcs8_pem(LineEnding::LF)
                    .map_err(|_| KeyError::Format(path.display().to_string()))?;
                let mut file = open_private(path).map_err(io)?;
                file.write_all(pem.as_bytes()).map_err(io)?;
                file.sync_all().map_err(io)?;
                tracing::info!(path = %path.display(), "generated a new token signing key");
                Self::from_signing_key(&key)
            }
            Err(e) => Err(io(e)),
        }
    }

    pub fn sign(&self, claims: &Claims) -> Result<String, TokenError> {
        jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), claims, &self.encoding)
            .map_err(|_| TokenError::Invalid)
    }

    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        match jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation) {
            Ok(data) => Ok(data.claims),
            Err(e) if matches!(e.kind(), jsonwebtoken::errors::ErrorKind::ExpiredSignature) => {
                Err(TokenError::Expired)
            }
            Err(_) => Err(TokenError::Invalid),
        }
    }
}

/// Creates a new file only this user may read (never overwrites a key).
fn open_private(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}

/// Writes a secret into a new file only this user may read.
pub fn write_private_file(path: &Path, contents: &str) -> std::io::Result<()> {
    let mut file = open_private(path)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: i64) -> Claims {
        Claims {
            sub: "u1".into(),
            did: "d1".into(),
            role: Role::AttendanceOfficer,
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
            iat: 0,
            exp,
        }
    }

    #[test]
    fn a_key_is_generated_once_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.pem");
        let first = TokenKeys::load_or_generate(&path).unwrap();
        let second = TokenKeys::load_or_generate(&path).unwrap();
        let token = first.sign(&claims(i64::MAX / 2)).unwrap();
        assert_eq!(second.verify(&token).unwrap(), claims(i64::MAX / 2));
        assert_eq!(format!("{first:?}"), "TokenKeys([redacted])");
    }

    #[test]
    fn expired_and_foreign_tokens_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let keys = TokenKeys::load_or_generate(&dir.path().join("a.pem")).unwrap();
        let other = TokenKeys::load_or_generate(&dir.path().join("b.pem")).unwrap();
        assert_eq!(
            keys.verify(&keys.sign(&claims(1_000)).unwrap()),
            Err(TokenError::Expired)
        );
        let foreign = other.sign(&claims(i64::MAX / 2)).unwrap();
        assert_eq!(keys.verify(&foreign), Err(TokenError::Invalid));
    }
}
