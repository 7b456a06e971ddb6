//! Reading and checking certificate revocation lists (DER), which the CAs sign
//! ([`super::CertificateAuthority::crl`]): their number and validity for whoever reissues them,
//! the serials they list, and whether one handed over by an untrusted server is the CA's and
//! still current.

use x509_parser::prelude::FromDer;
use x509_parser::revocation_list::CertificateRevocationList;

use super::ca::BACKDATE;
use super::PkiError;

/// How long a CRL is current when it is first made, before an issuer reissues it for the
/// cluster's own validity (the node-certificate lifetime; see [`CrlInfo::due`]).
pub const DEFAULT_CRL_VALIDITY: std::time::Duration =
    std::time::Duration::from_secs(30 * 24 * 3600);

/// What a CRL says about itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CrlInfo {
    /// Its CRL number: each reissue of a list takes the previous number plus one.
    pub number: u64,
    /// When it was issued (its thisUpdate, which is backdated by an hour), Unix seconds.
    pub issued: i64,
    /// Its nextUpdate, after which it is stale, Unix seconds.
    pub next_update: i64,
}

impl CrlInfo {
    /// Whether the list should be reissued at `now` (Unix seconds) by an issuer whose CRLs are
    /// current for `validity_s` seconds: half-way into its own validity (a CRL is cheap to
    /// reissue, and every server refuses clients once it is stale), or at once when it is
    /// current for longer than the issuer's (by more than the backdating tolerance, so that
    /// issuers whose clocks differ a little do not reissue each other's lists in turn).
    pub fn due(&self, validity_s: i64, now: i64) -> bool {
        let reissue_at = self.issued + (self.next_update - self.issued) / 2;
        now >= reissue_at || self.next_update - now > validity_s + BACKDATE.whole_seconds()
    }

    /// Whether the list is past its nextUpdate at `now` (Unix seconds).
    pub fn stale(&self, now: i64) -> bool {
        now >= self.next_update
    }
}

fn parse(crl: &[u8]) -> Result<CertificateRevocationList<'_>, PkiError> {
    let (_, list) =
        CertificateRevocationList::from_der(crl).map_err(|e| PkiError::BadCrl(e.to_string()))?;
    Ok(list)
}

fn info(list: &CertificateRevocationList<'_>) -> Result<CrlInfo, PkiError> {
    let number = list
        .crl_number()
        .map(|n| n.to_bytes_be())
        .filter(|bytes| bytes.len() <= 8)
        .ok_or_else(|| PkiError::BadCrl("no CRL number of at most 64 bits".into()))?
        .iter()
        .fold(0u64, |n, byte| n << 8 | u64::from(*byte));
    let next_update = list
        .next_update()
        .ok_or_else(|| PkiError::BadCrl("no nextUpdate".into()))?;
    Ok(CrlInfo {
        number,
        issued: list.last_update().timestamp() + BACKDATE.whole_seconds(),
        next_update: next_update.timestamp(),
    })
}

/// The number and validity of `crl` (DER), unchecked: for the issuer, reading its own list.
pub fn read_crl(crl: &[u8]) -> Result<CrlInfo, PkiError> {
    info(&parse(crl)?)
}

/// Check that `crl` (DER) is signed by the CA whose certificate is `ca` (DER) and is current at
/// `now` (Unix seconds), and answer what it says of itself. A CRL checks itself this way, so it
/// may come from anyone, e.g. a server whose own certificate could not be checked against the
/// stale list it replaces.
pub fn verify_crl(ca: &[u8], crl: &[u8], now: i64) -> Result<CrlInfo, PkiError> {
    let (_, ca) = x509_parser::parse_x509_certificate(ca)
        .map_err(|e| PkiError::BadCertificate(e.to_string()))?;
    let list = parse(crl)?;
    if list.issuer() != ca.subject() {
        return Err(PkiError::BadCrl(format!(
            "issued by {}, not by the CA {}",
            list.issuer(),
            ca.subject()
        )));
    }
    list.verify_signature(ca.public_key())
        .map_err(|e| PkiError::BadCrl(format!("signature: {e}")))?;
    let info = info(&list)?;
    if info.stale(now) {
        return Err(PkiError::StaleCrl {
            number: info.number,
            next_update: info.next_update,
        });
    }
    Ok(info)
}

/// The serial numbers a CRL (DER) lists, as [`super::serial_of`] spells them.
pub fn revoked_serials(crl: &[u8]) -> Result<Vec<Vec<u8>>, PkiError> {
    Ok(parse(crl)?
        .iter_revoked_certificates()
        .map(|r| r.raw_serial().to_vec())
        .collect())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::pki::{unix_now as now, CertificateAuthority};

    #[test]
    fn a_crl_reads_back_its_number_and_validity() {
        let ca = CertificateAuthority::new("test CA").unwrap();
        let before = now();
        let crl = ca.crl(300, &[vec![7]], Duration::from_secs(90)).unwrap();
        let info = read_crl(&crl).unwrap();
        assert_eq!(info.number, 300);
        assert!((before..=now()).contains(&info.issued), "{info:?}");
        assert_eq!(info.next_update - info.issued, 90);
        assert_eq!(revoked_serials(&crl).unwrap(), vec![vec![7]]);
        assert!(matches!(read_crl(b"not a CRL"), Err(PkiError::BadCrl(_))));
    }

    #[test]
    fn a_crl_is_due_half_way_or_when_it_outlives_the_issuers_validity() {
        let info = CrlInfo {
            number: 1,
            issued: 1000,
            next_update: 1090,
        };
        assert!(!info.due(90, 1044));
        assert!(info.due(90, 1045));
        // A list current for longer than the issuer's validity (a default one from bootstrap)
        // is reissued at once; a little longer, from a clock ahead, is not.
        assert!(info.due(30, 1000 - BACKDATE.whole_seconds()));
        assert!(!info.due(90, 1000 - BACKDATE.whole_seconds()));
        assert!(!info.stale(1089));
        assert!(info.stale(1090));
    }

    #[test]
    fn only_a_current_crl_of_the_ca_verifies() {
        let ca = CertificateAuthority::new("test CA").unwrap();
        let crl = ca.crl(2, &[], Duration::from_secs(60)).unwrap();
        assert_eq!(verify_crl(ca.certificate(), &crl, now()).unwrap().number, 2);
        assert!(matches!(
            verify_crl(ca.certificate(), &crl, now() + 60),
            Err(PkiError::StaleCrl { number: 2, .. })
        ));
        // Same name, another key: the signature gives it away.
        let other = CertificateAuthority::new("test CA").unwrap();
        assert!(matches!(
            verify_crl(other.certificate(), &crl, now()),
            Err(PkiError::BadCrl(_))
        ));
        let mut tampered = crl.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(verify_crl(ca.certificate(), &tampered, now()).is_err());
    }
}
