//! The one TLS configuration builder of Polis. Every gRPC connection is TLS 1.3 with Ed25519
//! certificates only, and checks CRLs, refusing a CRL past its nextUpdate (which no longer says
//! what is revoked). tonic's built-in TLS would accept revoked and non-Ed25519 peers, so tonic
//! gets these rustls configurations instead.
//!
//! Trust is pinned: a client trusts exactly the cluster CA it was given, not the system's roots.
//! No session is ever resumed, so every connection checks the peer's certificate and the CRL.

use std::fmt;
use std::sync::Arc;

use ed25519_dalek::SigningKey;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{ring, CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime,
};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig,
    SignatureScheme,
};

use crate::pki::{
    is_curator_certificate, self_signed_client, verify_client_certificate, PkiError, CURATOR_URI,
};

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// rustls refused a certificate, key, CRL or setting.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// A verifier could not be built (e.g. an unparsable CA or CRL).
    #[error("TLS verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// A key could not be encoded.
    #[error(transparent)]
    Pki(#[from] PkiError),
}

/// Ed25519 is the only signature algorithm Polis accepts, in certificates and handshakes.
static ED25519_ONLY: WebPkiSupportedAlgorithms = WebPkiSupportedAlgorithms {
    all: &[webpki::ring::ED25519],
    mapping: &[(SignatureScheme::ED25519, &[webpki::ring::ED25519])],
};

/// The crypto provider behind every config: ring, TLS 1.3 suites only, Ed25519 only.
pub fn provider() -> Arc<CryptoProvider> {
    let base = ring::default_provider();
    Arc::new(CryptoProvider {
        cipher_suites: vec![
            ring::cipher_suite::TLS13_AES_256_GCM_SHA384,
            ring::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
            ring::cipher_suite::TLS13_AES_128_GCM_SHA256,
        ],
        signature_verification_algorithms: ED25519_ONLY,
        ..base
    })
}

/// A certificate chain and the Ed25519 key that goes with it.
pub struct Identity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Identity(..)")
    }
}

impl Identity {
    /// `key` with the certificate (DER) the cluster CA issued for it.
    pub fn new(key: &SigningKey, certificate: Vec<u8>) -> Result<Self, TlsError> {
        let pkcs8 = crate::pki::pkcs8(key)?;
        Ok(Identity {
            chain: vec![CertificateDer::from(certificate)],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8.to_vec())),
        })
    }

    /// The same, with the CA's certificate (DER) sent after this one: a Curator's chain, from
    /// which a client meeting the cluster for the first time learns the CA in the handshake.
    pub fn with_ca(mut self, ca: Vec<u8>) -> Self {
        self.chain.push(CertificateDer::from(ca));
        self
    }

    /// `key` with a self-signed certificate: the credential of a node without a certificate.
    pub fn ephemeral(key: &SigningKey) -> Result<Self, TlsError> {
        Identity::new(key, self_signed_client(key)?)
    }
}

/// What a peer's certificate must chain to: the cluster CA and its current CRLs (DER).
#[derive(Clone, Debug)]
pub struct Trust {
    /// The CA certificate.
    pub ca: Vec<u8>,
    /// Revocation lists issued by it.
    pub crls: Vec<Vec<u8>>,
}

impl Trust {
    /// Trust in `ca` alone, before any of its CRLs is known (a client pinning a cluster CA).
    pub fn pinned(ca: Vec<u8>) -> Self {
        Trust {
            ca,
            crls: Vec::new(),
        }
    }

    fn roots(&self) -> Result<Arc<RootCertStore>, TlsError> {
        let mut roots = RootCertStore::empty();
        roots.add(CertificateDer::from(self.ca.clone()))?;
        Ok(Arc::new(roots))
    }

    fn crls(&self) -> Vec<CertificateRevocationListDer<'static>> {
        self.crls
            .iter()
            .map(|c| CertificateRevocationListDer::from(c.clone()))
            .collect()
    }
}

/// Which clients a server admits at the TLS layer.
#[derive(Clone, Debug)]
pub enum ClientAuth {
    /// Only clients with an unrevoked certificate from the CA (nodes, the owner).
    Ca(Trust),
    /// Those, and clients with a valid self-signed Ed25519 certificate (registering and joining
    /// nodes); the service authorizes those by their public key.
    CaOrEphemeral(Trust),
    /// Only clients with a valid self-signed Ed25519 certificate, authorized by their public key
    /// (a consensus member asking for its shares, before any CA can be consulted).
    Ephemeral,
}

/// A server config presenting `identity`, admitting clients as `clients` says.
pub fn server_config(identity: Identity, clients: ClientAuth) -> Result<ServerConfig, TlsError> {
    let ca_verifier = |trust: &Trust| {
        WebPkiClientVerifier::builder_with_provider(trust.roots()?, provider())
            .with_crls(trust.crls())
            .enforce_revocation_expiration()
            .build()
            .map_err(TlsError::from)
    };
    let verifier: Arc<dyn ClientCertVerifier> = match &clients {
        ClientAuth::Ca(trust) => ca_verifier(trust)?,
        ClientAuth::CaOrEphemeral(trust) => Arc::new(CaOrEphemeral {
            ca: Some(ca_verifier(trust)?),
        }),
        ClientAuth::Ephemeral => Arc::new(CaOrEphemeral { ca: None }),
    };
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(identity.chain, identity.key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    // A resumed session skips the client's certificate and the CRL: every connection must do
    // a full handshake, so that a certificate revoked since the last one is refused.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(config)
}

/// A client config for calling a Curator: it accepts only a server certificate from `server`'s
/// CA, not revoked by its CRLs, naming the dialled node, and marked as a Curator's
/// ([`crate::pki::CURATOR_URI`]); it presents `identity` if any.
pub fn curator_client_config(
    identity: Option<Identity>,
    server: &Trust,
) -> Result<ClientConfig, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(curator_verifier(server)?);
    let mut config = match identity {
        Some(identity) => builder.with_client_auth_cert(identity.chain, identity.key)?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    no_resumption(&mut config);
    Ok(config)
}

/// Check `certificate` (DER) as a client pinning `ca` checks a Curator's
/// ([`curator_client_config`]: chain, validity, server use, the Curator mark, naming `node_id`).
/// For a first-use connection, whose handshake bound the server to that certificate: once the
/// caller accepts `ca`, the connection is then as good as a pinned one.
pub fn verify_curator_certificate(
    ca: &[u8],
    certificate: &[u8],
    node_id: &str,
) -> Result<(), TlsError> {
    use rustls::client::danger::ServerCertVerifier;
    let name = rustls::pki_types::ServerName::try_from(node_id.to_owned())
        .map_err(|e| rustls::Error::General(format!("{node_id:?} is not a server name: {e}")))?;
    curator_verifier(&Trust::pinned(ca.to_vec()))?.verify_server_cert(
        &CertificateDer::from(certificate.to_vec()),
        &[],
        &name,
        &[],
        UnixTime::now(),
    )?;
    Ok(())
}

/// What a Curator's client accepts of `server`'s CA ([`CuratorOnly`]).
fn curator_verifier(server: &Trust) -> Result<Arc<CuratorOnly>, TlsError> {
    let webpki =
        rustls::client::WebPkiServerVerifier::builder_with_provider(server.roots()?, provider())
            .with_crls(server.crls())
            .enforce_revocation_expiration()
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
    Ok(Arc::new(CuratorOnly { webpki }))
}

/// A client config for trust on first use (an owner meeting a new cluster): it accepts any
/// server certificate whose Ed25519 handshake signature verifies, and keeps it and the chain
/// sent with it in the returned cell, so the caller can learn who answered and the CA that
/// server names (a Curator sends it, [`Identity::with_ca`]). Nothing should be asked over such
/// a connection but what the caller can check by itself (a share of a CUK, by the CUK's
/// digest), or, once the certificate kept passes [`verify_curator_certificate`] for an accepted
/// CA, anything.
pub fn first_use_client_config(
    identity: Identity,
) -> Result<(ClientConfig, SeenCertificate), TlsError> {
    let seen = Arc::new(std::sync::Mutex::new(None));
    let verifier = Arc::new(FirstUse { seen: seen.clone() });
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(identity.chain, identity.key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    no_resumption(&mut config);
    Ok((config, seen))
}

/// What a first-use connection was shown, once it has been.
pub type SeenCertificate = Arc<std::sync::Mutex<Option<Shown>>>;

/// A server's certificate (DER) and the CA certificate sent after it, if one was.
#[derive(Clone, Debug, Default)]
pub struct Shown {
    /// The server's certificate.
    pub certificate: Vec<u8>,
    /// The next certificate of its chain: a Curator's CA.
    pub ca: Option<Vec<u8>>,
}

/// Accepts and records the server's certificate; only the handshake signature is checked.
#[derive(Debug)]
struct FirstUse {
    seen: SeenCertificate,
}

impl rustls::client::danger::ServerCertVerifier for FirstUse {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *seen = Some(Shown {
            certificate: end_entity.to_vec(),
            ca: intermediates.first().map(|ca| ca.to_vec()),
        });
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(tls12_refused())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &ED25519_ONLY)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

/// Accepts what the CA-pinned WebPKI verifier accepts (chain, validity, server use, CRLs, the
/// dialled name), and of that only a certificate with the Curator mark.
#[derive(Debug)]
struct CuratorOnly {
    webpki: Arc<rustls::client::WebPkiServerVerifier>,
}

impl rustls::client::danger::ServerCertVerifier for CuratorOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let verified = self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        match is_curator_certificate(end_entity) {
            Ok(true) => Ok(verified),
            Ok(false) => Err(rustls::Error::General(format!(
                "{server_name:?} presented a certificate of the cluster CA that is not a \
                 Curator's (no {CURATOR_URI})"
            ))),
            Err(e) => Err(rustls::Error::General(e.to_string())),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

/// Admits a CA-issued client certificate (if there is a CA to check against), or else a
/// self-signed Ed25519 one that verifies against itself (valid signature, in its validity
/// period, for client authentication).
#[derive(Debug)]
struct CaOrEphemeral {
    ca: Option<Arc<dyn ClientCertVerifier>>,
}

impl ClientCertVerifier for CaOrEphemeral {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.ca.as_ref().map_or(&[], |ca| ca.root_hint_subjects())
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let ca_error = match &self.ca {
            Some(ca) => match ca.verify_client_cert(end_entity, intermediates, now) {
                Ok(verified) => return Ok(verified),
                Err(e) => e,
            },
            None => rustls::Error::General("not a valid self-signed Ed25519 certificate".into()),
        };
        verify_client_certificate(end_entity, end_entity, now)
            .map(|_| ClientCertVerified::assertion())
            .map_err(|_| ca_error)
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(tls12_refused())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &ED25519_ONLY)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

/// A client never offers to resume a session: a resumed session skips the server's
/// certificate, so a Curator revoked since the last connection would still be believed.
fn no_resumption(config: &mut ClientConfig) {
    config.resumption = rustls::client::Resumption::disabled();
}

/// What a verifier answers if asked about TLS 1.2, which the provider never negotiates.
fn tls12_refused() -> rustls::Error {
    rustls::Error::General("TLS 1.2 is never negotiated: Polis speaks TLS 1.3 only".into())
}
