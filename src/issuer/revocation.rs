//! Revocation, the same for both CAs (the cluster CA's node certificates, the etcd peer CA's
//! member certificates): each revoked certificate listed under `revoked/` in the CA's etcd
//! namespace, and a CRL that lists them all, written in the same transaction. A list is
//! reissued before its nextUpdate ([`reissue_if_due`]), numbered one past the list it replaces,
//! and without the certificates that have expired since: an expired certificate is refused
//! for its date, so its entry would only grow every CRL.

use std::time::Duration;

use crate::consensus::{ConsensusError, NamespacedKv};
use crate::pki::{
    hex, not_after, read_crl, serial_of, unix_now, CertificateAuthority, CrlInfo, PkiError,
    BACKDATE, DEFAULT_CRL_VALIDITY,
};

/// Where revoked certificates are listed, under the CA's namespace.
const REVOKED: &str = "revoked/";

/// Why a certificate could not be revoked or a CRL reissued.
#[derive(Debug, thiserror::Error)]
pub enum RevocationError {
    /// etcd failed.
    #[error(transparent)]
    Consensus(#[from] ConsensusError),
    /// The CRL could not be signed or read, or the certificate does not parse.
    #[error(transparent)]
    Pki(#[from] PkiError),
}

/// Revoke `certificate` (DER): list it and store at `crl_key` a CRL of `ca` listing every
/// revoked certificate, current for as long as the CRL it replaces was. Answers the CRL now in
/// force. Concurrent revocations cannot drop each other's entry (each write is guarded by the
/// CRL's revision, and retried on conflict); revoking a certificate again changes nothing.
pub async fn revoke(
    kv: &mut NamespacedKv,
    ca: &CertificateAuthority,
    crl_key: &str,
    certificate: &[u8],
) -> Result<Vec<u8>, RevocationError> {
    let serial = serial_of(certificate)?;
    let entry = format!("{REVOKED}{}", hex(&serial));
    loop {
        let list = List::read(kv, crl_key).await?;
        if let (Some((crl, _)), true) = (&list.crl, list.lists(&serial)) {
            return Ok(crl.clone());
        }
        let validity = list.validity().unwrap_or(DEFAULT_CRL_VALIDITY);
        let mut serials = list.current_serials(unix_now());
        if !list.lists(&serial) {
            serials.push(serial.clone());
        }
        if let Some(crl) = list
            .replace(
                kv,
                ca,
                crl_key,
                &serials,
                validity,
                &[(&entry, certificate)],
            )
            .await?
        {
            return Ok(crl);
        }
    }
}

/// Revoke each certificate of `recorded` (`(key, DER)`, as listed from `kv`) into the CRL at
/// `crl_key`, then delete its key: a record of certificates still to revoke is emptied as they
/// are. Repeatable, as [`revoke`] is.
pub async fn revoke_recorded(
    kv: &mut NamespacedKv,
    ca: &CertificateAuthority,
    crl_key: &str,
    recorded: &[(String, Vec<u8>)],
) -> Result<(), RevocationError> {
    for (key, certificate) in recorded {
        revoke(kv, ca, crl_key, certificate).await?;
        kv.delete(key).await?;
    }
    Ok(())
}

/// Reissue the CRL at `crl_key` if it is due ([`crate::pki::CrlInfo::due`] for `validity`), or
/// issue the first one if there is none: numbered one past it, current for `validity`, listing
/// the revoked certificates that have not expired. Answers the new CRL, if one was written;
/// issuers running this at once agree (the write is guarded by the CRL's revision).
pub async fn reissue_if_due(
    kv: &mut NamespacedKv,
    ca: &CertificateAuthority,
    crl_key: &str,
    validity: Duration,
) -> Result<Option<Vec<u8>>, RevocationError> {
    let validity_s = i64::try_from(validity.as_secs()).unwrap_or(i64::MAX);
    loop {
        let list = List::read(kv, crl_key).await?;
        if let Some((_, info)) = &list.crl {
            if !info.due(validity_s, unix_now()) {
                return Ok(None);
            }
        }
        let serials = list.current_serials(unix_now());
        if let Some(crl) = list
            .replace(kv, ca, crl_key, &serials, validity, &[])
            .await?
        {
            return Ok(Some(crl));
        }
    }
}

/// A revocation list as etcd holds it: the CRL and the revoked certificates.
struct List {
    /// The CRL (DER) and what it says of itself.
    crl: Option<(Vec<u8>, CrlInfo)>,
    /// The CRL's revision, which guards a replacement.
    revision: i64,
    entries: Vec<Entry>,
}

/// One revoked certificate.
struct Entry {
    key: String,
    serial: Vec<u8>,
    /// Its notAfter, Unix seconds; `None` for an entry that holds only the serial (as entries
    /// were first written), which is kept for ever.
    not_after: Option<i64>,
}

impl List {
    async fn read(kv: &mut NamespacedKv, crl_key: &str) -> Result<List, RevocationError> {
        let (crl, revision) = kv.get_versioned(crl_key).await?;
        let crl = crl
            .map(|der| read_crl(&der).map(|info| (der, info)))
            .transpose()?;
        let entries = kv
            .list(REVOKED)
            .await?
            .into_iter()
            .map(
                |(key, value)| match (serial_of(&value), not_after(&value)) {
                    (Ok(serial), Ok(not_after)) => Entry {
                        key,
                        serial,
                        not_after: Some(not_after),
                    },
                    _ => Entry {
                        key,
                        serial: value,
                        not_after: None,
                    },
                },
            )
            .collect();
        Ok(List {
            crl,
            revision,
            entries,
        })
    }

    fn lists(&self, serial: &[u8]) -> bool {
        self.entries.iter().any(|e| e.serial == serial)
    }

    /// How long the current CRL was issued to be current for.
    fn validity(&self) -> Option<Duration> {
        self.crl
            .as_ref()
            .map(|(_, i)| Duration::from_secs((i.next_update - i.issued).max(0) as u64))
    }

    fn expired(entry: &Entry, now: i64) -> bool {
        entry
            .not_after
            .is_some_and(|at| at.saturating_add(BACKDATE.whole_seconds()) < now)
    }

    /// The serials of the entries whose certificates have not expired at `now`.
    fn current_serials(&self, now: i64) -> Vec<Vec<u8>> {
        self.entries
            .iter()
            .filter(|e| !Self::expired(e, now))
            .map(|e| e.serial.clone())
            .collect()
    }

    /// Write a CRL of `ca` numbered one past the current one, listing `serials`, with `puts`,
    /// and drop the expired entries, if the CRL is still the one read. Answers the CRL written,
    /// or `None` if another writer came first.
    async fn replace(
        &self,
        kv: &mut NamespacedKv,
        ca: &CertificateAuthority,
        crl_key: &str,
        serials: &[Vec<u8>],
        validity: Duration,
        puts: &[(&str, &[u8])],
    ) -> Result<Option<Vec<u8>>, RevocationError> {
        let number = self.crl.as_ref().map_or(1, |(_, info)| info.number + 1);
        let crl = ca.crl(number, serials, validity)?;
        let now = unix_now();
        let expired: Vec<&str> = self
            .entries
            .iter()
            .filter(|e| Self::expired(e, now))
            .map(|e| e.key.as_str())
            .collect();
        let mut puts = puts.to_vec();
        puts.push((crl_key, &crl));
        let written = kv
            .swap(crl_key, self.revision, &[], &puts, &expired)
            .await?;
        Ok(written.then_some(crl))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(serial: u8, not_after: Option<i64>) -> Entry {
        Entry {
            key: format!("{REVOKED}{serial:02x}"),
            serial: vec![serial],
            not_after,
        }
    }

    #[test]
    fn an_entry_is_dropped_an_hour_after_its_certificate_expired_and_an_undated_one_never() {
        let list = List {
            crl: None,
            revision: 0,
            entries: vec![entry(1, Some(1000)), entry(2, Some(5000)), entry(3, None)],
        };
        let grace = BACKDATE.whole_seconds();
        assert_eq!(list.current_serials(1000 + grace), [[1], [2], [3]]);
        assert_eq!(list.current_serials(1001 + grace), [[2], [3]]);
        assert_eq!(list.current_serials(i64::MAX), [[3]]);
    }
}
