//! Serial numbers of certificates, as revocation records them: pure parsing,
//! used by the issuer and by whoever checks a certificate against a CRL.

use crate::pki::PkiError;

/// The serial number of a DER certificate, as revocation records it.
pub fn serial_of(der: &[u8]) -> Result<Vec<u8>, PkiError> {
    let (_, certificate) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| PkiError::BadCertificate(e.to_string()))?;
    Ok(certificate.raw_serial().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{generate_key, CertificateAuthority, Template};

    #[test]
    fn the_serial_of_an_issued_certificate_is_the_one_it_was_issued_with() {
        let ca = CertificateAuthority::new("test CA").unwrap();
        let issued = ca
            .issue(
                &Template::Node {
                    node_id: "metropolis-x".into(),
                },
                &generate_key().unwrap().verifying_key(),
            )
            .unwrap();
        assert_eq!(serial_of(&issued.der).unwrap(), issued.serial);
        assert!(serial_of(b"not a certificate").is_err());
    }
}
