//! The PKI issuer: the cluster CA kept in etcd under `/cluster-pki/`, created with *Ensure*
//! semantics (create-if-absent in one transaction: two concurrent starts agree on one CA), every
//! issued certificate recorded, and revocation ([`revoke`]) through a CRL stored
//! beside it. It keeps both CRLs current, the cluster CA's and the etcd peer CA's: each is
//! valid for the cluster's node-certificate lifetime and reissued half-way into it
//! ([`reissue_if_due`]); every issuer of the cluster looks, and the first to write wins. At
//! each look it also revokes the etcd peer certificates members replaced by renewing them
//! ([`crate::consensus::peer_pki`]). It issues a new member's first peer certificate from the
//! peer CA, for the node-certificate lifetime.
//!
//! It also keeps the cluster's PCR policy key ([`crate::tpm::policy`]) beside the CA, created
//! the same way, and signs with it the PCR 7 values nodes may unseal at ([`ApprovePcr`]).
//!
//! Bootstrap needs no exception but one input: the lifecycle starts the first node's etcd and
//! this issuer before it asks for the node's certificate, and hands this issuer the certificate
//! lifetimes the bootstrap parameters ask for, which it stores as it starts ([`Issuer::new`]).

use std::future::Future;
use std::rc::Rc;
use std::time::Duration;

use ed25519_dalek::VerifyingKey;
use polis_actors::{
    Actor, ActorRef, Ctx, Failure, Handler, Message, Reply, SendError, Started, Timer,
};
use tokio::sync::oneshot;

use crate::consensus::{
    peer_ca, peer_pki, Consensus, ConsensusError, Kv, NamespacedKv,
    NAMESPACE as CONSENSUS_NAMESPACE, PEER_CRL_KEY,
};
use crate::pki::{hex, CertificateAuthority, Issued, PkiError, Template};
use crate::retry::Retry;
use crate::tpm::policy::{PolicyError, PolicyKey};

mod revocation;

pub use revocation::{reissue_if_due, revoke, revoke_recorded, RevocationError};

/// The etcd namespace of the cluster PKI.
pub const NAMESPACE: &str = "/cluster-pki/";
const CA_NAME: &str = "Polis cluster CA";
const CA_CERTIFICATE: &str = "ca/certificate";
const CA_KEY: &str = "ca/key";
/// The cluster's PCR policy-signing key (PKCS#8, P-256) under [`NAMESPACE`].
const PCR_POLICY_KEY: &str = "pcr-policy/key";
/// The cluster CRL (DER) under [`NAMESPACE`], which servers check clients against.
pub const CRL_KEY: &str = "crl";
/// The cluster's certificate lifetimes under [`NAMESPACE`] (seconds, decimal), set once, by the
/// bootstrap node's issuer as it starts ([`Issuer::new`]): node (also Curator certificates and
/// CRLs) and owner.
const NODE_LIFETIME: &str = "lifetimes/node";
const OWNER_LIFETIME: &str = "lifetimes/owner";
/// How long a node certificate is valid when the cluster names no lifetime.
pub const DEFAULT_NODE_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);
/// How long the owner certificate is valid when the cluster names no lifetime.
pub const DEFAULT_OWNER_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);
/// The shortest certificate lifetime a cluster may name. Holders renew at two thirds of it, so
/// anything shorter is a renewal storm; lifetimes of seconds are for tests.
pub const MIN_LIFETIME: Duration = Duration::from_secs(10);

/// How long the certificates the cluster issues are valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lifetimes {
    /// Node and Curator certificates; also how long CRLs are current.
    pub node: Duration,
    /// The owner certificate.
    pub owner: Duration,
}

impl Default for Lifetimes {
    fn default() -> Self {
        Lifetimes {
            node: DEFAULT_NODE_LIFETIME,
            owner: DEFAULT_OWNER_LIFETIME,
        }
    }
}

/// Why the issuer could not serve.
#[derive(Debug, thiserror::Error)]
pub enum IssuerError {
    /// etcd failed.
    #[error(transparent)]
    Consensus(#[from] ConsensusError),
    /// A certificate could not be made.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// The consensus actor is not running.
    #[error("consensus unavailable: {0}")]
    Unavailable(#[from] SendError),
    /// A revocation failed.
    #[error(transparent)]
    Revocation(#[from] RevocationError),
    /// The PCR policy key is unusable, or a PCR value malformed.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// The issuer stopped before it had loaded the cluster CA (a request made meanwhile).
    #[error("the issuer stopped before it had loaded the cluster CA")]
    NotReady,
    /// The record of a certificate [`IssueRecording`] answered was never written: the node is
    /// stopping (its event loop ended the write).
    #[error("the issued certificate was not recorded in etcd: the node is stopping")]
    Unrecorded,
    /// A certificate lifetime stored in etcd does not read as seconds of at least
    /// [`MIN_LIFETIME`].
    #[error("the certificate lifetime in etcd ({NAMESPACE}{key}) is {value:?}, not a number of seconds of at least {}", MIN_LIFETIME.as_secs())]
    BadLifetime {
        /// Its key under [`NAMESPACE`].
        key: &'static str,
        /// What is stored.
        value: String,
    },
}

/// Load the cluster CA from etcd, or store `candidate` as it if there is none, with its CRL
/// `first_crl`; returns the CA that is committed now.
async fn ensure_ca(
    kv: &mut NamespacedKv,
    candidate: &CertificateAuthority,
    first_crl: &[u8],
) -> Result<CertificateAuthority, IssuerError> {
    let key = candidate.key_pkcs8()?;
    let values = kv
        .ensure_all_with(
            &[(CA_CERTIFICATE, candidate.certificate()), (CA_KEY, &key)],
            &[(CRL_KEY, first_crl)],
        )
        .await?;
    let [certificate, key] =
        <[Vec<u8>; 2]>::try_from(values).map_err(|_| ConsensusError::Vanished(CA_KEY.into()))?;
    Ok(CertificateAuthority::from_parts(
        CA_NAME,
        &key,
        certificate,
    )?)
}

/// Load the cluster's PCR policy key from etcd, or store a new one if there is none (a cluster
/// made before Polis sealed under a PCR policy gets one at its issuers' next start).
async fn ensure_policy_key(kv: &mut NamespacedKv) -> Result<PolicyKey, IssuerError> {
    let stored = kv.ensure(PCR_POLICY_KEY, &PolicyKey::generate()?).await?;
    Ok(PolicyKey::from_pkcs8(&stored)?)
}

/// The cluster's certificate lifetimes: `candidate` stored where none is (`None`: only read),
/// the defaults where none is stored.
async fn lifetimes(
    kv: &mut NamespacedKv,
    candidate: Option<Lifetimes>,
) -> Result<Lifetimes, IssuerError> {
    let defaults = Lifetimes::default();
    let mut owner_kv = kv.clone();
    let (node, owner) = futures::try_join!(
        lifetime(kv, NODE_LIFETIME, candidate.map(|c| c.node), defaults.node),
        lifetime(
            &mut owner_kv,
            OWNER_LIFETIME,
            candidate.map(|c| c.owner),
            defaults.owner,
        ),
    )?;
    Ok(Lifetimes { node, owner })
}

async fn lifetime(
    kv: &mut NamespacedKv,
    key: &'static str,
    candidate: Option<Duration>,
    default: Duration,
) -> Result<Duration, IssuerError> {
    let stored = match candidate {
        Some(lifetime) => Some(
            kv.ensure(key, lifetime.as_secs().to_string().as_bytes())
                .await?,
        ),
        None => kv.get(key).await?,
    };
    match stored {
        Some(stored) => stored_lifetime(key, &stored),
        None => Ok(default),
    }
}

/// The lifetime stored at `key`: decimal seconds, at least [`MIN_LIFETIME`].
fn stored_lifetime(key: &'static str, stored: &[u8]) -> Result<Duration, IssuerError> {
    let text = String::from_utf8_lossy(stored);
    text.parse()
        .ok()
        .and_then(bounded_lifetime)
        .ok_or_else(|| IssuerError::BadLifetime {
            key,
            value: text.into_owned(),
        })
}

/// A bootstrap's PKI, stored in one transaction: the CA `candidate` with its first CRL, a new
/// PCR policy key and the lifetimes `asked`, unless a CA is stored already; answers what is
/// stored now. Four transactions at once (one per [`ensure_ca`], [`ensure_policy_key`] and
/// lifetime) loaded the CA 2.7 ms (1.7–5.4) after etcd's election, one 2.2 ms (1.4–3.4): etcd
/// syncs what arrives together, and four requests did not always arrive together (issue 12).
/// `None` if a CA is stored without all the rest (a cluster from before policy keys, or a
/// bootstrap interrupted between older code's transactions): the caller ensures them one by one.
async fn genesis(
    kv: &NamespacedKv,
    candidate: &CertificateAuthority,
    first_crl: &[u8],
    asked: Lifetimes,
) -> Result<Option<(CertificateAuthority, PolicyKey, Lifetimes)>, IssuerError> {
    let (key, policy_key) = (candidate.key_pkcs8()?, PolicyKey::generate()?);
    let (node, owner) = (
        asked.node.as_secs().to_string(),
        asked.owner.as_secs().to_string(),
    );
    let entries: [(&str, &[u8]); 5] = [
        (CA_CERTIFICATE, candidate.certificate()),
        (CA_KEY, &key),
        (PCR_POLICY_KEY, &policy_key),
        (NODE_LIFETIME, node.as_bytes()),
        (OWNER_LIFETIME, owner.as_bytes()),
    ];
    let companions: [(&str, &[u8]); 1] = [(CRL_KEY, first_crl)];
    let ensured = kv
        .clone()
        .expecting_absent()
        .ensure_all_with(&entries, &companions)
        .await;
    let stored = match ensured {
        Ok(stored) => stored,
        Err(ConsensusError::Vanished(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let [certificate, key, policy_key, node, owner] =
        <[Vec<u8>; 5]>::try_from(stored).map_err(|_| ConsensusError::Vanished(CA_KEY.into()))?;
    let ca = CertificateAuthority::from_parts(CA_NAME, &key, certificate)?;
    let lifetimes = Lifetimes {
        node: stored_lifetime(NODE_LIFETIME, &node)?,
        owner: stored_lifetime(OWNER_LIFETIME, &owner)?,
    };
    Ok(Some((ca, PolicyKey::from_pkcs8(&policy_key)?, lifetimes)))
}

/// `seconds` as a certificate lifetime, if it is no shorter than [`MIN_LIFETIME`]: the one
/// rule for what bootstrap may ask and what the issuer reads back.
pub fn bounded_lifetime(seconds: u64) -> Option<Duration> {
    let lifetime = Duration::from_secs(seconds);
    (lifetime >= MIN_LIFETIME).then_some(lifetime)
}

/// Sign a certificate of `template` for `public` with the CA `loaded` holds (a peer
/// certificate: with the peer CA); answers it, and where its record goes (none for a peer
/// certificate: its member records the one it serves, `consensus::peer_pki`).
async fn sign(
    loaded: Loaded,
    consensus: &ActorRef<Consensus>,
    template: &Template,
    public: &VerifyingKey,
) -> Result<(Issued, Option<NamespacedKv>), IssuerError> {
    let Loaded {
        kv, ca, lifetimes, ..
    } = loaded;
    Ok(match template {
        Template::Node { .. } | Template::Curator { .. } => (
            ca.issue_valid_for(template, public, lifetimes.node)?,
            Some(kv),
        ),
        Template::Client { .. } => (
            ca.issue_valid_for(template, public, lifetimes.owner)?,
            Some(kv),
        ),
        Template::Peer { .. } => {
            let ca = peer_ca(&mut peer_kv(consensus).await?).await?;
            (ca.issue_valid_for(template, public, lifetimes.node)?, None)
        }
    })
}

/// Record an issued certificate in etcd (`issued/<serial>`).
async fn record(kv: &mut NamespacedKv, issued: &Issued) -> Result<(), IssuerError> {
    kv.put(&format!("issued/{}", hex(&issued.serial)), &issued.der)
        .await?;
    Ok(())
}

// ---- messages ----

/// Issue a certificate of `template` for a public key; answered once etcd records it.
pub struct Issue(pub Template, pub VerifyingKey);
impl Message for Issue {
    type Reply = Result<Issued, IssuerError>;
}

/// [`Issue`], answered as soon as the certificate is signed, its record in etcd still being
/// written: for a caller that writes the certificate into a transaction of its own and awaits
/// both at once, which etcd syncs to disk together (one after the other cost a round trip more
/// on a bootstrap's and an escrow's path, issue 12). The certificate must not leave the node
/// before its [`Recording`] answers. A failed write is retried, with backoff, for as long as
/// the caller waits.
pub struct IssueRecording(pub Template, pub VerifyingKey);
impl Message for IssueRecording {
    type Reply = Result<(Issued, Recording), IssuerError>;
}

/// The record of a certificate [`IssueRecording`] answered, being written to etcd.
pub struct Recording(oneshot::Receiver<()>);

impl Recording {
    /// Wait until etcd has recorded the certificate.
    pub async fn done(self) -> Result<(), IssuerError> {
        self.0.await.map_err(|_| IssuerError::Unrecorded)
    }
}

/// The cluster CA certificate (DER).
pub struct GetCaCertificate;
impl Message for GetCaCertificate {
    type Reply = Result<Vec<u8>, IssuerError>;
}

/// The cluster's first CRL (DER), if this issuer created the cluster CA and stored the CRL with
/// it (a new cluster's bootstrap), answered once it has: what the CRL is until a first
/// revocation, for a bootstrap's Curator to start on without reading it back.
pub struct FirstCrl;
impl Message for FirstCrl {
    type Reply = Result<Option<Vec<u8>>, IssuerError>;
}

/// Approve PCR 7 value `pcr7` for node `node_id`: its TPM may unseal where PCR 7 holds it.
/// Only enrolment (the value a node enrolled with) and the owner's decision ask for this.
pub struct ApprovePcr {
    /// The node.
    pub node_id: String,
    /// The PCR 7 value (SHA-256 bank).
    pub pcr7: Vec<u8>,
}
impl Message for ApprovePcr {
    type Reply = Result<PcrApproval, IssuerError>;
}

/// The policy key's approval of a PCR 7 value for a node.
#[derive(Clone, Debug)]
pub struct PcrApproval {
    /// The cluster's PCR policy key (uncompressed P-256 point).
    pub policy_key: Vec<u8>,
    /// Its signature (`r ‖ s`).
    pub signature: Vec<u8>,
}

/// Revoke this certificate (DER); answers the new CRL (DER).
pub struct Revoke(pub Vec<u8>);
impl Message for Revoke {
    type Reply = Result<Vec<u8>, IssuerError>;
}

// ---- state ----

/// The issuer actor. It is healthy as soon as it starts, so that the Curator starts while it
/// loads its CA from etcd (issue 12); requests that come meanwhile wait for the load.
pub struct Issuer {
    consensus: ActorRef<Consensus>,
    /// What it loaded as it started, once it has.
    loaded: Option<Loaded>,
    /// Requests that came before the load, answered when it ends (or refused as `NotReady`
    /// when this incarnation ends first).
    waiting: Vec<oneshot::Sender<Loaded>>,
    /// The lifetimes a bootstrap asks for, stored at start unless some are stored already.
    asked: Option<Lifetimes>,
    /// The next look at whether a CRL is due, while none is under way.
    crl_check: Option<Timer>,
}

/// What the issuer loads from etcd as it starts.
#[derive(Clone)]
struct Loaded {
    kv: NamespacedKv,
    ca: Rc<CertificateAuthority>,
    /// The PCR policy key.
    policy_key: Rc<PolicyKey>,
    /// How long the certificates it issues are valid; CRLs are current for the node lifetime.
    lifetimes: Lifetimes,
    /// The first CRL, if this issuer created the cluster CA and stored it with it.
    first_crl: Option<Rc<[u8]>>,
}

impl Issuer {
    /// An issuer keeping its state through `consensus`. A bootstrap passes the lifetimes its
    /// parameters ask for (`asked`): the issuer stores them with the CA as it starts, in the
    /// same round trip, so they bound the first certificate and CRL (repeatable after a crash:
    /// stored ones win). Every other start passes `None` and reads them.
    pub fn new(consensus: ActorRef<Consensus>, asked: Option<Lifetimes>) -> Self {
        Issuer {
            consensus,
            loaded: None,
            waiting: Vec::new(),
            asked,
            crl_check: None,
        }
    }
}

// ---- handlers ----

impl Actor for Issuer {
    fn started(&mut self, ctx: &mut Ctx<'_, Self>) -> Result<Started, Failure> {
        let (consensus, asked) = (self.consensus.clone(), self.asked);
        let load = async move {
            let kv = consensus
                .ask(Kv(NAMESPACE.into()))
                .await
                .map_err(IssuerError::from)??;
            let candidate = CertificateAuthority::new(CA_NAME)?;
            // Stored with it if it becomes the CA (a bootstrap's): its first CRL, current for
            // the lifetime asked, so that no issuer's first look finds a CRL to write.
            let first_crl = candidate.crl(1, &[], asked.unwrap_or_default().node)?;
            if let Some(asked) = asked {
                if let Some(stored) = genesis(&kv, &candidate, &first_crl, asked).await? {
                    return Ok::<_, IssuerError>((kv, stored, candidate, first_crl));
                }
            }
            // At once: they read what every start but the first finds.
            let (mut ca_kv, mut key_kv, mut lifetimes_kv) = (kv.clone(), kv.clone(), kv.clone());
            let stored = futures::try_join!(
                ensure_ca(&mut ca_kv, &candidate, &first_crl),
                ensure_policy_key(&mut key_kv),
                lifetimes(&mut lifetimes_kv, asked),
            )?;
            Ok((kv, stored, candidate, first_crl))
        };
        ctx.spawn(load, |loaded, issuer: &mut Self, ctx| {
            let (kv, (ca, policy_key, lifetimes), candidate, first_crl) = loaded?;
            // The CA it made became the cluster's: the first CRL was stored with it.
            let first_crl = (ca.certificate() == candidate.certificate()).then(|| first_crl.into());
            slog::info!(ctx.log(), "cluster CA loaded";
                "node_certificate_lifetime_s" => lifetimes.node.as_secs(),
                "owner_certificate_lifetime_s" => lifetimes.owner.as_secs());
            let loaded = Loaded {
                kv,
                ca: Rc::new(ca),
                policy_key: Rc::new(policy_key),
                lifetimes,
                first_crl,
            };
            for waiting in issuer.waiting.drain(..) {
                let _ = waiting.send(loaded.clone());
            }
            issuer.loaded = Some(loaded);
            issuer.check_crls(ctx);
            Ok(())
        });
        Ok(Started::Healthy)
    }
}

impl Handler<Issue> for Issuer {
    fn handle(
        &mut self,
        Issue(template, public): Issue,
        ctx: &mut Ctx<'_, Self>,
    ) -> Result<Reply<Self, <Issue as Message>::Reply>, Failure> {
        slog::info!(ctx.log(), "issuing"; "template" => ?template);
        let consensus = self.consensus.clone();
        Ok(self.on_loaded(move |loaded| async move {
            let (issued, recorder) = sign(loaded, &consensus, &template, &public).await?;
            if let Some(mut kv) = recorder {
                record(&mut kv, &issued).await?;
            }
            Ok(issued)
        }))
    }
}

impl Handler<IssueRecording> for Issuer {
    fn handle(
        &mut self,
        IssueRecording(template, public): IssueRecording,
        ctx: &mut Ctx<'_, Self>,
    ) -> Result<Reply<Self, <IssueRecording as Message>::Reply>, Failure> {
        slog::info!(ctx.log(), "issuing"; "template" => ?template);
        let (consensus, log) = (self.consensus.clone(), ctx.log().clone());
        Ok(self.on_loaded(move |loaded| async move {
            let (issued, recorder) = sign(loaded, &consensus, &template, &public).await?;
            let (tx, rx) = oneshot::channel();
            let recorded = issued.clone();
            actix_rt::spawn(async move {
                let Some(mut kv) = recorder else {
                    let _ = tx.send(());
                    return;
                };
                let mut retry = Retry::new();
                loop {
                    match record(&mut kv, &recorded).await {
                        Ok(()) => break,
                        Err(_) if tx.is_closed() => return,
                        Err(e) => retry.wait(&log, "recording a certificate", &e).await,
                    }
                }
                let _ = tx.send(());
            });
            Ok((issued, Recording(rx)))
        }))
    }
}

impl Handler<GetCaCertificate> for Issuer {
    fn handle(
        &mut self,
        _: GetCaCertificate,
        _: &mut Ctx<'_, Self>,
    ) -> Result<Reply<Self, <GetCaCertificate as Message>::Reply>, Failure> {
        Ok(self.on_loaded(|loaded| async move { Ok(loaded.ca.certificate().to_vec()) }))
    }
}

impl Handler<FirstCrl> for Issuer {
    fn handle(
        &mut self,
        _: FirstCrl,
        _: &mut Ctx<'_, Self>,
    ) -> Result<Reply<Self, <FirstCrl as Message>::Reply>, Failure> {
        Ok(self.on_loaded(|loaded| async move { Ok(loaded.first_crl.map(|crl| crl.to_vec())) }))
    }
}

impl Handler<ApprovePcr> for Issuer {
    fn handle(
        &mut self,
        ApprovePcr { node_id, pcr7 }: ApprovePcr,
        ctx: &mut Ctx<'_, Self>,
    ) -> Result<Reply<Self, <ApprovePcr as Message>::Reply>, Failure> {
        slog::info!(ctx.log(), "approving a PCR 7 value"; "node" => &node_id, "pcr7" => hex(&pcr7));
        Ok(self.on_loaded(move |loaded| async move {
            let key = loaded.policy_key;
            let signature = key.approve(&node_id, &pcr7)?;
            Ok(PcrApproval {
                policy_key: key.public(),
                signature,
            })
        }))
    }
}

impl Handler<Revoke> for Issuer {
    fn handle(
        &mut self,
        Revoke(certificate): Revoke,
        ctx: &mut Ctx<'_, Self>,
    ) -> Result<Reply<Self, <Revoke as Message>::Reply>, Failure> {
        let serial = match crate::pki::serial_of(&certificate) {
            Ok(serial) => serial,
            Err(e) => return Ok(Reply::now(Err(e.into()))),
        };
        slog::warn!(ctx.log(), "revoking"; "serial" => hex(&serial));
        Ok(self.on_loaded(move |loaded| async move {
            let Loaded { mut kv, ca, .. } = loaded;
            Ok(revoke(&mut kv, &ca, CRL_KEY, &certificate).await?)
        }))
    }
}

// ---- helpers ----

impl Issuer {
    /// Answer with `work` on what the issuer loaded. Once it has loaded, one such request at a
    /// time, the mailbox paused ([`Reply::later`]); before, once the load ends, beside the
    /// mailbox ([`Reply::detached`]: the load's own ending needs it). This incarnation ending
    /// before the load answers `NotReady`.
    fn on_loaded<T, F, Fut>(&mut self, work: F) -> Reply<Self, Result<T, IssuerError>>
    where
        T: 'static,
        F: FnOnce(Loaded) -> Fut + 'static,
        Fut: Future<Output = Result<T, IssuerError>> + 'static,
    {
        if let Some(loaded) = self.loaded.clone() {
            return Reply::later(async move { Ok(work(loaded).await) });
        }
        let (tx, rx) = oneshot::channel();
        self.waiting.push(tx);
        Reply::detached(async move {
            Ok(match rx.await {
                Ok(loaded) => work(loaded).await,
                Err(_) => Err(IssuerError::NotReady),
            })
        })
    }

    /// Reissue whichever of the two CRLs is due (issue the cluster's first), then look again
    /// after [`crl_check_period`]. A failure is logged and retried then: each CRL is current
    /// for half its validity past the point it is due.
    fn check_crls(&mut self, ctx: &mut Ctx<'_, Self>) {
        let Some(Loaded {
            mut kv,
            ca,
            lifetimes,
            ..
        }) = self.loaded.clone()
        else {
            return;
        };
        let (consensus, validity) = (self.consensus.clone(), lifetimes.node);
        let check = async move {
            let mut reissued = Vec::new();
            if reissue_if_due(&mut kv, &ca, CRL_KEY, validity)
                .await?
                .is_some()
            {
                reissued.push("cluster");
            }
            let mut peer_kv = peer_kv(&consensus).await?;
            let peer_ca = peer_ca(&mut peer_kv).await?;
            if reissue_if_due(&mut peer_kv, &peer_ca, PEER_CRL_KEY, validity)
                .await?
                .is_some()
            {
                reissued.push("etcd peer");
            }
            let retired = revoke_replaced_peer_certificates(&mut peer_kv, &peer_ca).await?;
            Ok::<_, IssuerError>((reissued, retired))
        };
        ctx.spawn(check, move |checked, issuer: &mut Self, ctx| {
            match checked {
                Ok((reissued, retired)) => {
                    if !reissued.is_empty() {
                        slog::info!(ctx.log(), "CRLs reissued"; "lists" => ?reissued,
                            "valid_s" => validity.as_secs());
                    }
                    if retired > 0 {
                        slog::info!(ctx.log(), "replaced etcd peer certificates revoked";
                            "count" => retired);
                    }
                }
                Err(e) => slog::warn!(ctx.log(), "a CRL could not be reissued; trying again";
                    "error" => %e),
            }
            let period = crl_check_period(validity);
            issuer.crl_check = Some(ctx.run_later(period, |issuer: &mut Self, ctx| {
                issuer.crl_check = None;
                issuer.check_crls(ctx);
                Ok(())
            }));
            Ok(())
        });
    }
}

/// A client for the consensus actor's namespace, where the peer CA and its CRL are.
async fn peer_kv(consensus: &ActorRef<Consensus>) -> Result<NamespacedKv, IssuerError> {
    Ok(consensus
        .ask(Kv(CONSENSUS_NAMESPACE.into()))
        .await
        .map_err(IssuerError::from)??)
}

/// Revoke every etcd peer certificate a member recorded as replaced by a renewal, and forget
/// it once it is listed; answers how many. Issuers doing this at once agree: a revocation is
/// repeatable.
async fn revoke_replaced_peer_certificates(
    peer_kv: &mut NamespacedKv,
    peer_ca: &CertificateAuthority,
) -> Result<usize, IssuerError> {
    let replaced = peer_pki::replaced(peer_kv).await?;
    revoke_recorded(peer_kv, peer_ca, PEER_CRL_KEY, &replaced).await?;
    Ok(replaced.len())
}

/// How often an issuer looks whether a CRL current for `validity` is due: twelve times in it
/// (so it is reissued early in the half of its validity left when due), at most hourly.
fn crl_check_period(validity: Duration) -> Duration {
    (validity / 12).min(Duration::from_secs(3600))
}
