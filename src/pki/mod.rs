//! The PKI: certificate authorities (cluster and etcd peer), node identities, revocation, and the
//! issuer actor that keeps the cluster CA in etcd.

mod ca;
mod credentials;
mod identity;
mod issuer;
mod revocation;

pub use ca::{self_signed_client, CertificateAuthority, Issued, PkiError, Template, CURATOR_URI};
pub use credentials::{read_pem, to_pem, CredentialsError, NodeCredentials};
pub use identity::{
    certificate_node_id, generate_key, hex, is_curator_certificate, node_id,
    verify_client_certificate, verify_node_certificate,
};
pub use issuer::{GetCaCertificate, Issue, Issuer, IssuerError, Revoke, CRL_KEY, NAMESPACE};
pub use revocation::{revoke, revoked_serials, serial_of, RevocationError};
