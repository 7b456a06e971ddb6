//! This member's etcd peer PKI: the files etcd reads (the peer CA's certificate, the member's
//! certificate and key, the CRL), the member's own copy of the peer CA, and the record in etcd
//! of the certificates the member was issued.
//!
//! The files etcd's first start reads are written without an fsync, and made durable while etcd
//! first elects itself ([`sync_peer_pki`]), before that first start counts as done: a crash
//! before then starts etcd's data over, and these files with it (see the consensus actor).
//!
//! Every member keeps the peer CA's key (owner-only, on the encrypted data partition beside
//! etcd's data, which holds it too). The first member writes it before its etcd first starts,
//! so a crash before the CA is committed to etcd loses nothing; every other member copies it
//! from etcd once its etcd is ready ([`keep_peer_ca`]). With it a member renews its own peer
//! certificate two thirds into its life, for as long again ([`renew_if_due`]), also at start
//! before etcd runs: a cluster whose every member was off past its peer certificates' expiry
//! comes back, where asking a Curator would need the quorum those certificates prevent. etcd
//! reads the certificate file at every handshake, so a renewal needs no restart.
//!
//! Each member records in etcd the certificate it serves and the ones it replaced
//! ([`record_served`]); the issuer revokes replaced ones ([`replaced`]), and decommissioning
//! revokes every one a member was issued ([`issued_to`]).

use std::path::PathBuf;
use std::time::Duration;

use super::etcd::{ConsensusError, Member, PEER_CA_NAME};
use super::{NamespacedKv, PEER_CA_CERTIFICATE, PEER_CA_KEY, PEER_CRL_KEY};
use crate::fsutil::{self, Durability, FsError, PUBLIC_MODE, SECRET_MODE};
use crate::pki::{
    certificate_key, hex, lifetime, read_pem, renewal_due, serial_of, to_pem, CertificateAuthority,
    Template,
};
use crate::storage::NodeRoot;

/// This member's peer certificate (PEM) in its peer PKI directory.
pub const PEER_CERTIFICATE_FILE: &str = "cert.pem";
/// The peer CA's certificate (PEM) in the peer PKI directory.
const CA_FILE: &str = "ca.pem";
/// This member's peer key (PEM, owner-only) in its peer PKI directory.
pub const KEY_FILE: &str = "key.pem";
/// This member's copy of the peer CA's key (PEM, owner-only) in its peer PKI directory.
pub const LOCAL_CA_KEY_FILE: &str = "ca-key.pem";
/// Under the consensus namespace, per member name: `current`, the certificate it serves, and
/// `replaced/<serial>`, each it served before and that is not yet revoked (DER).
const ISSUED: &str = "peer-certificates/";

/// What a peer certificate for `member` says: its name and the address it listens on.
pub fn peer_template(member: &Member) -> Template {
    Template::Peer {
        name: member.name.clone(),
        ip: member.peer_listen.ip(),
    }
}

/// Create the peer PKI of a new cluster on disk, not yet durably ([`sync_peer_pki`]): a fresh
/// peer CA (its key kept first, see the module), this member's certificate and key, and an
/// empty CRL, both current for `lifetime` (the issuer keeps CRLs current for as long). Returns
/// the CA, which the caller commits to etcd once it runs ([`keep_peer_ca`]).
pub fn bootstrap_peer_pki(
    root: &NodeRoot,
    member: &Member,
    lifetime: Duration,
) -> Result<CertificateAuthority, ConsensusError> {
    let ca = CertificateAuthority::new(PEER_CA_NAME)?;
    let key = crate::pki::generate_key()?;
    let cert = ca.issue_valid_for(&peer_template(member), &key.verifying_key(), lifetime)?;
    write_peer_files(
        root,
        Some(&ca.key_pkcs8()?),
        ca.certificate(),
        &cert.der,
        &crate::pki::pkcs8(&key)?,
        &ca.crl(1, &[], lifetime)?,
    )?;
    Ok(ca)
}

/// Write the peer PKI files etcd reads, not yet durably ([`sync_peer_pki`]): CA, certificate
/// and key (owner-only) as PEM, CRL as DER.
pub fn write_peer_pki(
    root: &NodeRoot,
    ca: &[u8],
    cert: &[u8],
    key: &[u8],
    crl: &[u8],
) -> Result<(), FsError> {
    write_peer_files(root, None, ca, cert, key, crl)
}

/// [`write_peer_pki`], with the peer CA's key (PKCS#8) first among the files of the peer PKI
/// directory if this member keeps it now (a new cluster's first member).
fn write_peer_files(
    root: &NodeRoot,
    local_ca_key: Option<&[u8]>,
    ca: &[u8],
    cert: &[u8],
    key: &[u8],
    crl: &[u8],
) -> Result<(), FsError> {
    let mut files = Vec::with_capacity(4);
    if let Some(ca_key) = local_ca_key {
        files.push((
            LOCAL_CA_KEY_FILE,
            to_pem("PRIVATE KEY", ca_key),
            SECRET_MODE,
        ));
    }
    files.push((CA_FILE, to_pem("CERTIFICATE", ca), PUBLIC_MODE));
    files.push((
        PEER_CERTIFICATE_FILE,
        to_pem("CERTIFICATE", cert),
        PUBLIC_MODE,
    ));
    files.push((KEY_FILE, to_pem("PRIVATE KEY", key), SECRET_MODE));
    fsutil::write_atomic_in(&root.etcd_peer_pki(), &files, Durability::Volatile)?;
    fsutil::write_ephemeral(&root.etcd_peer_crl(), crl, PUBLIC_MODE)
}

/// Make the files [`bootstrap_peer_pki`] or [`write_peer_pki`] wrote durable, with their
/// directories' entries.
pub fn sync_peer_pki(root: &NodeRoot) -> Result<(), FsError> {
    let dir = root.etcd_peer_pki();
    let mut names = vec![CA_FILE, PEER_CERTIFICATE_FILE, KEY_FILE];
    if dir.join(LOCAL_CA_KEY_FILE).exists() {
        names.push(LOCAL_CA_KEY_FILE);
    }
    let mut files: Vec<PathBuf> = names.iter().map(|name| dir.join(name)).collect();
    files.push(root.etcd_peer_crl());
    fsutil::sync_files(&files)
}

/// The peer certificate this member serves (DER), as etcd reads it.
pub fn served(root: &NodeRoot) -> Result<Vec<u8>, ConsensusError> {
    Ok(read_pem(
        &root.etcd_peer_pki().join(PEER_CERTIFICATE_FILE),
        "CERTIFICATE",
    )?)
}

/// This member's copy of the peer CA, if it keeps one.
pub fn local_peer_ca(root: &NodeRoot) -> Result<Option<CertificateAuthority>, ConsensusError> {
    let dir = root.etcd_peer_pki();
    let key_file = dir.join(LOCAL_CA_KEY_FILE);
    if !key_file.exists() {
        return Ok(None);
    }
    let key = read_pem(&key_file, "PRIVATE KEY")?;
    let certificate = read_pem(&dir.join(CA_FILE), "CERTIFICATE")?;
    Ok(Some(CertificateAuthority::from_parts(
        PEER_CA_NAME,
        &key,
        certificate,
    )?))
}

/// Once etcd is ready: make etcd and this member's copy of the peer CA agree. A copy etcd does
/// not hold yet (a new cluster's, whose commit a crash may have interrupted) is committed,
/// certificate, key and the CRL etcd reads in one create-if-absent transaction; a member without
/// a copy (one that joined) takes one from etcd. A copy that is not etcd's CA is refused.
pub async fn keep_peer_ca(root: &NodeRoot, kv: &mut NamespacedKv) -> Result<(), ConsensusError> {
    match local_peer_ca(root)? {
        Some(ca) => {
            let crl = fsutil::read(&root.etcd_peer_crl())?;
            let stored = kv
                .ensure_all_with(
                    &[
                        (PEER_CA_CERTIFICATE, ca.certificate()),
                        (PEER_CA_KEY, &ca.key_pkcs8()?),
                    ],
                    &[(PEER_CRL_KEY, &crl)],
                )
                .await?;
            if stored.first().map(Vec::as_slice) != Some(ca.certificate()) {
                return Err(ConsensusError::PeerCaConflict);
            }
        }
        None => keep_local_ca_key(root, &super::peer_ca(kv).await?)?,
    }
    Ok(())
}

/// Renew this member's peer certificate if it is due ([`crate::pki::renewal_due`]): a new one
/// from the member's copy of the peer CA, for the same key and as long as the one it replaces,
/// written over it. Answers the new certificate (DER), or `None` if none was due.
pub fn renew_if_due(root: &NodeRoot, member: &Member) -> Result<Option<Vec<u8>>, ConsensusError> {
    let current = served(root)?;
    if !renewal_due(&current) {
        return Ok(None);
    }
    let dir = root.etcd_peer_pki();
    let ca = local_peer_ca(root)?.ok_or_else(|| ConsensusError::NoLocalPeerCa {
        certificate: dir.join(PEER_CERTIFICATE_FILE).display().to_string(),
        ca: dir.join(LOCAL_CA_KEY_FILE).display().to_string(),
    })?;
    let issued = ca.issue_valid_for(
        &peer_template(member),
        &certificate_key(&current)?,
        lifetime(&current)?,
    )?;
    write_certificate(root, &issued.der)?;
    Ok(Some(issued.der))
}

/// Record that member `name` serves `certificate` (DER), and keep the one it served before as
/// replaced, for the issuer to revoke. Repeatable; one transaction, retried on a conflict.
pub async fn record_served(
    kv: &mut NamespacedKv,
    name: &str,
    certificate: &[u8],
) -> Result<(), ConsensusError> {
    let key = format!("{ISSUED}{name}/current");
    loop {
        let (recorded, revision) = kv.get_versioned(&key).await?;
        if recorded.as_deref() == Some(certificate) {
            return Ok(());
        }
        let replaced = match &recorded {
            Some(old) => Some((
                format!("{ISSUED}{name}/replaced/{}", hex(&serial_of(old)?)),
                old,
            )),
            None => None,
        };
        let mut puts = vec![(key.as_str(), certificate)];
        puts.extend(replaced.iter().map(|(k, v)| (k.as_str(), v.as_slice())));
        if kv.swap(&key, revision, &[], &puts, &[]).await? {
            return Ok(());
        }
    }
}

/// Every replaced peer certificate still recorded, of every member: `(key, DER)`.
pub async fn replaced(kv: &mut NamespacedKv) -> Result<Vec<(String, Vec<u8>)>, ConsensusError> {
    let mut listed = kv.list(ISSUED).await?;
    listed.retain(|(key, _)| key.contains("/replaced/"));
    Ok(listed)
}

/// Every peer certificate recorded for member `name`, served or replaced: `(key, DER)`.
pub async fn issued_to(
    kv: &mut NamespacedKv,
    name: &str,
) -> Result<Vec<(String, Vec<u8>)>, ConsensusError> {
    kv.list(&format!("{ISSUED}{name}/")).await
}

/// Keep `ca`'s key as this member's copy (owner-only; its certificate is `ca.pem`, which etcd
/// reads).
fn keep_local_ca_key(root: &NodeRoot, ca: &CertificateAuthority) -> Result<(), ConsensusError> {
    fsutil::write_atomic(
        &root.etcd_peer_pki().join(LOCAL_CA_KEY_FILE),
        to_pem("PRIVATE KEY", &ca.key_pkcs8()?).as_bytes(),
        SECRET_MODE,
    )?;
    Ok(())
}

fn write_certificate(root: &NodeRoot, der: &[u8]) -> Result<(), FsError> {
    fsutil::write_atomic(
        &root.etcd_peer_pki().join(PEER_CERTIFICATE_FILE),
        to_pem("CERTIFICATE", der).as_bytes(),
        PUBLIC_MODE,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{not_after, unix_now};

    fn member() -> Member {
        Member {
            name: "metropolis-00112233445566778899aabbccddeeff".into(),
            advertise_host: "198.18.0.7".into(),
            peer_listen: "198.18.0.7:7834".parse().unwrap(),
        }
    }

    #[test]
    fn a_due_certificate_is_renewed_for_the_same_key_and_lifetime_and_one_not_due_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let root = NodeRoot::new(dir.path());
        let ca = bootstrap_peer_pki(&root, &member(), Duration::from_secs(3600)).unwrap();
        let first = served(&root).unwrap();
        assert_eq!(renew_if_due(&root, &member()).unwrap(), None);
        assert_eq!(
            served(&root).unwrap(),
            first,
            "a certificate not due was replaced"
        );

        // A certificate valid for no time at all is due at once.
        let key = certificate_key(&first).unwrap();
        let lapsed = ca
            .issue_valid_for(&peer_template(&member()), &key, Duration::ZERO)
            .unwrap();
        write_certificate(&root, &lapsed.der).unwrap();
        let renewed = renew_if_due(&root, &member()).unwrap().expect("renewed");
        assert_eq!(served(&root).unwrap(), renewed);
        assert_eq!(certificate_key(&renewed).unwrap(), key);
        assert_eq!(lifetime(&renewed).unwrap(), Duration::ZERO);
        assert!(not_after(&renewed).unwrap() >= unix_now() - 1);
        assert_ne!(serial_of(&renewed).unwrap(), lapsed.serial);
    }

    #[test]
    fn a_due_certificate_without_a_copy_of_the_ca_names_both_files() {
        let dir = tempfile::tempdir().unwrap();
        let root = NodeRoot::new(dir.path());
        let ca = CertificateAuthority::new(PEER_CA_NAME).unwrap();
        let key = crate::pki::generate_key().unwrap();
        let lapsed = ca
            .issue_valid_for(
                &peer_template(&member()),
                &key.verifying_key(),
                Duration::ZERO,
            )
            .unwrap();
        let key_der = crate::pki::pkcs8(&key).unwrap();
        write_peer_pki(&root, ca.certificate(), &lapsed.der, &key_der, &[]).unwrap();
        let refused = renew_if_due(&root, &member()).unwrap_err().to_string();
        assert!(
            refused.contains("cert.pem") && refused.contains(LOCAL_CA_KEY_FILE),
            "{refused}"
        );
        assert_eq!(served(&root).unwrap(), lapsed.der);
    }
}
