//! The PKI: certificate authorities (cluster and etcd peer), and node identities.

mod ca;
mod identity;

pub use ca::{CertificateAuthority, Issued, PkiError, Template};
pub use identity::{generate_key, node_id};
