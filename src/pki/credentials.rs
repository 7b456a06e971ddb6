//! A node's credentials on its data partition (`data/node/credentials/{ca,cert,key}.pem`): the
//! cluster CA it pins, its node certificate, and its node key (owner-only). The node key is also
//! its etcd peer key, so the Curator can issue a peer certificate for it without a new secret.

use ed25519_dalek::pkcs8::DecodePrivateKey;
use ed25519_dalek::SigningKey;

use crate::fsutil::{self, Durability, FsError, PUBLIC_MODE, SECRET_MODE};
use crate::pki::{pkcs8, PkiError};
use crate::storage::NodeRoot;

/// Why credentials could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// A file could not be read or written (the error names it).
    #[error(transparent)]
    Fs(#[from] FsError),
    /// A file is not the PEM it should be.
    #[error("{path} is not a PEM {tag}: {reason}")]
    Pem {
        /// The file.
        path: String,
        /// The PEM tag expected.
        tag: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The key could not be encoded.
    #[error(transparent)]
    Pki(#[from] PkiError),
}

/// PEM text of `der` under `tag` (`CERTIFICATE`, `PRIVATE KEY`).
pub fn to_pem(tag: &str, der: &[u8]) -> String {
    pem::encode(&pem::Pem::new(tag, der.to_vec()))
}

/// The DER contents of the PEM file at `path`, which must hold one `tag` block.
pub fn read_pem(path: &std::path::Path, tag: &'static str) -> Result<Vec<u8>, CredentialsError> {
    let text = fsutil::read(path)?;
    let bad = |reason: String| CredentialsError::Pem {
        path: path.display().to_string(),
        tag,
        reason,
    };
    let parsed = pem::parse(text).map_err(|e| bad(e.to_string()))?;
    if parsed.tag() != tag {
        return Err(bad(format!("found {}", parsed.tag())));
    }
    Ok(parsed.into_contents())
}

/// What a node proves itself with.
#[derive(Clone)]
pub struct NodeCredentials {
    /// The cluster CA certificate (DER).
    pub ca: Vec<u8>,
    /// The node certificate (DER).
    pub certificate: Vec<u8>,
    /// The node key.
    pub key: SigningKey,
}

impl std::fmt::Debug for NodeCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeCredentials(..)")
    }
}

const CA: (&str, &str) = ("ca.pem", "CERTIFICATE");
const CERT: (&str, &str) = ("cert.pem", "CERTIFICATE");
const KEY: (&str, &str) = ("key.pem", "PRIVATE KEY");

impl NodeCredentials {
    /// Write them below `root`'s data partition, each file atomically, the key owner-only;
    /// durably if `durability` asks, else made durable later by [`NodeCredentials::sync`].
    pub fn save(&self, root: &NodeRoot, durability: Durability) -> Result<(), CredentialsError> {
        let key = pkcs8(&self.key)?;
        let pem = |(file, tag): (&'static str, &'static str), der: &[u8], mode| {
            (file, to_pem(tag, der), mode)
        };
        let files = [
            pem(CA, &self.ca, PUBLIC_MODE),
            pem(CERT, &self.certificate, PUBLIC_MODE),
            pem(KEY, &key, SECRET_MODE),
        ];
        Ok(fsutil::write_atomic_in(
            &root.node_credentials(),
            &files,
            durability,
        )?)
    }

    /// Make durable the credentials that [`NodeCredentials::save`] wrote below `root` without
    /// syncing ([`Durability::Volatile`]), with their directory's entries.
    pub fn sync(root: &NodeRoot) -> Result<(), CredentialsError> {
        let dir = root.node_credentials();
        let files = [CA, CERT, KEY].map(|(file, _)| dir.join(file));
        Ok(fsutil::sync_files(&files)?)
    }

    /// Read them back; `Ok(None)` if the node has none yet (no key file).
    pub fn load(root: &NodeRoot) -> Result<Option<Self>, CredentialsError> {
        let dir = root.node_credentials();
        if !dir.join(KEY.0).exists() {
            return Ok(None);
        }
        let read = |(file, tag): (&str, &'static str)| read_pem(&dir.join(file), tag);
        let key_der = read(KEY)?;
        let key = SigningKey::from_pkcs8_der(&key_der).map_err(|e| CredentialsError::Pem {
            path: dir.join(KEY.0).display().to_string(),
            tag: KEY.1,
            reason: e.to_string(),
        })?;
        Ok(Some(NodeCredentials {
            ca: read(CA)?,
            certificate: read(CERT)?,
            key,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn credentials_round_trip_with_an_owner_only_key_and_a_wrong_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let root = NodeRoot::new(dir.path());
        assert!(NodeCredentials::load(&root).unwrap().is_none());
        let err = NodeCredentials::sync(&root).unwrap_err().to_string();
        assert!(err.contains("ca.pem"), "{err}");
        let creds = NodeCredentials {
            ca: vec![1, 2, 3],
            certificate: vec![4, 5],
            key: crate::pki::generate_key().unwrap(),
        };
        creds.save(&root, Durability::Volatile).unwrap();
        NodeCredentials::sync(&root).unwrap();
        let back = NodeCredentials::load(&root).unwrap().unwrap();
        assert_eq!(back.ca, creds.ca);
        assert_eq!(back.certificate, creds.certificate);
        assert_eq!(back.key.to_bytes(), creds.key.to_bytes());
        let key_file = root.node_credentials().join("key.pem");
        let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o400);
        let cert_file = root.node_credentials().join("cert.pem");
        std::fs::write(&cert_file, to_pem("PRIVATE KEY", &[1])).unwrap();
        let err = NodeCredentials::load(&root).unwrap_err().to_string();
        assert!(err.contains("cert.pem"), "{err}");
    }
}
