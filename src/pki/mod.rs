//! The PKI, a leaf library: certificate authorities (cluster and etcd peer), node identities and
//! credentials, serial numbers, revocation lists. The issuer actor that keeps the cluster CA in etcd is
//! [`crate::issuer`], above consensus.

mod ca;
mod credentials;
mod crl;
mod identity;
mod serial;

pub use ca::{
    self_signed_client, CertificateAuthority, Issued, PkiError, Template, BACKDATE, CURATOR_URI,
};
pub use credentials::{read_pem, to_pem, CredentialsError, NodeCredentials};
pub use crl::{read_crl, revoked_serials, verify_crl, CrlInfo, DEFAULT_CRL_VALIDITY};
pub use identity::{
    certificate_key, certificate_node_id, fingerprint, generate_key, hex, instant_at,
    is_curator_certificate, lifetime, node_id, not_after, pkcs8, renew_at, renewal_due, unix_now,
    verify_client_certificate, verify_node_certificate,
};
pub use serial::serial_of;
