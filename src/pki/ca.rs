//! A certificate authority on Ed25519: the cluster CA (node, owner and client certificates) and
//! etcd's peer CA are both one of these. It issues certificates from templates, numbers them with
//! random serials, and signs revocation lists.

use std::net::IpAddr;

use crate::pki::pkcs8;
use ed25519_dalek::{SigningKey, VerifyingKey};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    PublicKeyData, RevokedCertParams, SanType, SerialNumber, SignatureAlgorithm, PKCS_ED25519,
};
use ring::rand::{SecureRandom, SystemRandom};
use time::{Duration, OffsetDateTime};

/// The URI SAN that marks a Curator's server certificate. Clients of the Curator accept no
/// server certificate without it, so a node certificate (or any other the CA issued) cannot
/// pose as a Curator.
pub const CURATOR_URI: &str = "urn:polis:role:curator";

/// How long certificates are valid unless their issuer bounds them ([`CertificateAuthority::
/// issue_valid_for`]): the CA's own, and ephemeral ones. Every certificate the cluster issues to
/// a holder is bounded.
const VALIDITY: Duration = Duration::days(365 * 20);
/// Tolerance for clocks that run behind the issuer's: certificates and CRLs are valid from this
/// long before their issue, and revoked certificates stay listed this long past their expiry.
pub const BACKDATE: Duration = Duration::hours(1);

/// Why a certificate could not be made or a key not read.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// rcgen refused the parameters or the key.
    #[error("cannot {op}: {source}")]
    Rcgen {
        /// What was being done.
        op: &'static str,
        /// rcgen's error.
        source: rcgen::Error,
    },
    /// A stored key is not a valid Ed25519 PKCS#8 key.
    #[error("stored CA key is not a valid Ed25519 key: {0}")]
    BadKey(String),
    /// A certificate does not parse.
    #[error("certificate does not parse: {0}")]
    BadCertificate(String),
    /// A CRL does not parse, or is not signed by the CA it is checked against.
    #[error("CRL refused: {0}")]
    BadCrl(String),
    /// A CRL is past its nextUpdate: it no longer says what is revoked.
    #[error("the CRL (number {number}) is stale: its nextUpdate was {next_update} (Unix time)")]
    StaleCrl {
        /// The CRL's number.
        number: u64,
        /// When it stopped being current, in seconds since the Unix epoch.
        next_update: i64,
    },
    /// The operating system's random generator failed.
    #[error("the operating system's random generator failed")]
    Rng,
}

fn rcgen_err(op: &'static str) -> impl FnOnce(rcgen::Error) -> PkiError {
    move |source| PkiError::Rcgen { op, source }
}

/// What kind of certificate to issue for a public key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Template {
    /// A node's identity: SAN = node ID, for calling the Curator (client authentication only:
    /// a node certificate never serves as a Curator).
    Node {
        /// `metropolis-…` from the node's public key.
        node_id: String,
    },
    /// A Curator's server certificate: names the node like its node certificate and carries
    /// [`CURATOR_URI`], the mark clients require of a Curator. Only consensus members get one.
    Curator {
        /// The node ID of the consensus member serving the Curator.
        node_id: String,
    },
    /// An etcd peer: served and presented on the peer port, named by its name (as common name
    /// and DNS name) and its address.
    Peer {
        /// The member's name (its node ID).
        name: String,
        /// The address other members reach it at.
        ip: IpAddr,
    },
    /// A client only (the owner, a tool): common name, client authentication.
    Client {
        /// Who it is, e.g. `owner`.
        common_name: String,
    },
}

/// An issued certificate: its serial (for revocation) and DER.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issued {
    /// The serial number, big-endian.
    pub serial: Vec<u8>,
    /// The certificate.
    pub der: Vec<u8>,
}

/// A certificate authority with its key.
pub struct CertificateAuthority {
    name: String,
    key: SigningKey,
    certificate: Vec<u8>,
}

impl CertificateAuthority {
    /// A new, self-signed CA called `name`, with a fresh key.
    pub fn new(name: &str) -> Result<Self, PkiError> {
        let key = crate::pki::generate_key()?;
        let params = ca_params(name, random_serial()?);
        let certificate = params
            .self_signed(&rcgen_key(&key)?)
            .map_err(rcgen_err("self-sign the CA"))?;
        Ok(CertificateAuthority {
            name: name.to_owned(),
            key,
            certificate: certificate.der().to_vec(),
        })
    }

    /// A CA restored from its stored key (PKCS#8 DER) and certificate (DER).
    pub fn from_parts(
        name: &str,
        key_pkcs8: &[u8],
        certificate: Vec<u8>,
    ) -> Result<Self, PkiError> {
        use ed25519_dalek::pkcs8::DecodePrivateKey;
        let key =
            SigningKey::from_pkcs8_der(key_pkcs8).map_err(|e| PkiError::BadKey(e.to_string()))?;
        Ok(CertificateAuthority {
            name: name.to_owned(),
            key,
            certificate,
        })
    }

    /// The CA's certificate (DER), the trust anchor its users pin.
    pub fn certificate(&self) -> &[u8] {
        &self.certificate
    }

    /// The CA's key as PKCS#8 DER, for storing it (in etcd, never on the ESP).
    pub fn key_pkcs8(&self) -> Result<Vec<u8>, PkiError> {
        Ok(pkcs8(&self.key)?.to_vec())
    }

    /// Issue a certificate of kind `template` for `public`, valid for the long default: for
    /// tests and tools whose certificates outlive them; the cluster bounds every one it issues.
    pub fn issue(&self, template: &Template, public: &VerifyingKey) -> Result<Issued, PkiError> {
        self.issue_valid_for(template, public, VALIDITY.unsigned_abs())
    }

    /// Issue a certificate of kind `template` for `public`, valid from now for `lifetime`
    /// (and from an hour before, for clocks that run behind).
    pub fn issue_valid_for(
        &self,
        template: &Template,
        public: &VerifyingKey,
        lifetime: std::time::Duration,
    ) -> Result<Issued, PkiError> {
        let serial = random_serial()?;
        let mut params = CertificateParams::default();
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + lifetime;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        let mut dn = DistinguishedName::new();
        match template {
            Template::Node { node_id } => {
                dn.push(DnType::CommonName, node_id.as_str());
                params.subject_alt_names = vec![dns(node_id)?];
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            }
            Template::Curator { node_id } => {
                dn.push(DnType::CommonName, node_id.as_str());
                let mark = CURATOR_URI
                    .try_into()
                    .map_err(rcgen_err("name the Curator role"))?;
                params.subject_alt_names = vec![dns(node_id)?, SanType::URI(mark)];
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            }
            Template::Peer { name, ip } => {
                dn.push(DnType::CommonName, name.as_str());
                params.subject_alt_names = vec![dns(name)?, SanType::IpAddress(*ip)];
                params.extended_key_usages = vec![
                    ExtendedKeyUsagePurpose::ServerAuth,
                    ExtendedKeyUsagePurpose::ClientAuth,
                ];
            }
            Template::Client { common_name } => {
                dn.push(DnType::CommonName, common_name.as_str());
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            }
        }
        params.distinguished_name = dn;
        let certificate = params
            .signed_by(&Ed25519Public(*public), &self.issuer()?)
            .map_err(rcgen_err("sign a certificate"))?;
        Ok(Issued {
            serial,
            der: certificate.der().to_vec(),
        })
    }

    /// A CRL numbered `number` that revokes `serials`, current from now for `validity` (its
    /// nextUpdate; and from an hour before, for clocks that run behind).
    pub fn crl(
        &self,
        number: u64,
        serials: &[Vec<u8>],
        validity: std::time::Duration,
    ) -> Result<Vec<u8>, PkiError> {
        let now = OffsetDateTime::now_utc();
        let params = CertificateRevocationListParams {
            this_update: now - BACKDATE,
            next_update: now + validity,
            crl_number: SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|serial| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(serial),
                    revocation_time: now - BACKDATE,
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params
            .signed_by(&self.issuer()?)
            .map_err(rcgen_err("sign the CRL"))?;
        Ok(crl.der().to_vec())
    }

    fn issuer(&self) -> Result<Issuer<'static, KeyPair>, PkiError> {
        // The issuer's name and key identifier are derived the same way every time, so a CA
        // restored from storage signs exactly like the one that was created.
        Ok(Issuer::new(
            ca_params(&self.name, vec![1]),
            rcgen_key(&self.key)?,
        ))
    }
}

/// A self-signed client certificate for `key`: the ephemeral credential of a node that has no
/// certificate yet (registering with its node key, joining with its join key). Whoever accepts
/// it authorizes by the public key alone.
pub fn self_signed_client(key: &SigningKey) -> Result<Vec<u8>, PkiError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "polis ephemeral");
    params.distinguished_name = dn;
    params.serial_number = Some(SerialNumber::from_slice(&random_serial()?));
    params.not_before = OffsetDateTime::now_utc() - BACKDATE;
    params.not_after = OffsetDateTime::now_utc() + VALIDITY;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let certificate = params
        .self_signed(&rcgen_key(key)?)
        .map_err(rcgen_err("self-sign an ephemeral certificate"))?;
    Ok(certificate.der().to_vec())
}

fn ca_params(name: &str, serial: Vec<u8>) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.key_identifier_method = KeyIdMethod::Sha256;
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    params.not_before = OffsetDateTime::now_utc() - BACKDATE;
    params.not_after = OffsetDateTime::now_utc() + VALIDITY;
    params
}

/// An Ed25519 public key as rcgen's subject key.
struct Ed25519Public(VerifyingKey);

impl PublicKeyData for Ed25519Public {
    fn der_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &PKCS_ED25519
    }
}

fn rcgen_key(key: &SigningKey) -> Result<KeyPair, PkiError> {
    let der = pkcs8(key)?;
    KeyPair::from_pkcs8_der_and_sign_algo(&der.as_slice().into(), &PKCS_ED25519)
        .map_err(rcgen_err("load the CA key"))
}

fn dns(name: &str) -> Result<SanType, PkiError> {
    Ok(SanType::DnsName(
        name.try_into().map_err(rcgen_err("use a DNS name"))?,
    ))
}

/// 16 random bytes with the top bit clear: a positive, unguessable serial.
fn random_serial() -> Result<Vec<u8>, PkiError> {
    let mut serial = vec![0u8; 16];
    SystemRandom::new()
        .fill(&mut serial)
        .map_err(|_| PkiError::Rng)?;
    serial[0] &= 0x7f;
    serial[0] |= 0x01;
    Ok(serial)
}
