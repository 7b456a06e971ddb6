//! The PKI, a leaf library: certificate authorities (cluster and etcd peer), node identities and
//! credentials, serial numbers. The issuer actor that keeps the cluster CA in etcd is
//! [`crate::issuer`], above consensus.

mod ca;
mod credentials;
mod identity;
mod serial;

pub use ca::{self_signed_client, CertificateAuthority, Issued, PkiError, Template, CURATOR_URI};
pub use credentials::{read_pem, to_pem, CredentialsError, NodeCredentials};
pub use identity::{
    certificate_node_id, fingerprint, generate_key, hex, is_curator_certificate, node_id,
    not_after, pkcs8, renew_at, verify_client_certificate, verify_node_certificate,
};
pub use serial::{revoked_serials, serial_of};
