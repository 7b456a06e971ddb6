//! Sealing to the TPM, bound to PCR 7 (the Secure Boot state). Blocking calls into tss-esapi: run
//! them on the TPM actor's own thread, never on an arbiter.
//!
//! A TPM sealed object holds at most 128 bytes, so the TPM seals a fresh 32-byte key under a
//! PCR 7 policy, and that key encrypts the secret with AES-256-GCM. The sealed blob is:
//! `u32 len ‖ TPM2B_PUBLIC ‖ u32 len ‖ TPM2B_PRIVATE ‖ u32 len ‖ primary's name ‖ 12-byte nonce
//! ‖ ciphertext+tag`. Every TPM exchange that carries a secret runs in a session salted by the
//! storage primary key, with command and response encryption, so the secrets do not cross the TPM
//! bus in the clear (the connection keeps one such session: starting it is an ECDH in the TPM; a
//! connection's first unseal, a restart's, salts its policy session instead, which then encrypts
//! the answer itself);
//! before unsealing, the primary the TPM presents must be the one the data was sealed under (its
//! name, recorded at sealing), so that something between the node and its TPM cannot offer a
//! key of its own to learn the session salt. The primary is kept in the TPM at a persistent
//! handle ([`KEPT_PRIMARY`]), so a restart derives none; a key found there serves only under that
//! recorded name and only if it was made from the current template.
//!
//! Data is sealed either to the current PCR 7 itself (`TPM2_PolicyPCR`: the enrolment journal,
//! and everything sealed before the cluster had a PCR policy) or, once the node holds its
//! [`PcrAuthority`], under `TPM2_PolicyAuthorize` by the cluster's policy key
//! ([`crate::tpm::policy`]): it then unseals where PCR 7 holds any value the cluster approved for
//! this node, and a changed PCR 7 can be approved by the owner instead of losing the node.

mod recovery;

pub use recovery::RecoveryKey;

use std::str::FromStr;

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use tss_esapi::attributes::{ObjectAttributesBuilder, SessionAttributesBuilder};
use tss_esapi::constants::SessionType;
use tss_esapi::handles::{
    KeyHandle, ObjectHandle, PcrHandle, PersistentTpmHandle, SessionHandle, TpmHandle,
};
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::dynamic_handles::Persistent;
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::resource_handles::{Hierarchy, Provision};
use tss_esapi::interface_types::session_handles::{AuthSession, PolicySession};
use tss_esapi::structures::{
    Digest, DigestValues, EccParameter, EccPoint, EccScheme, EccSignature, HashScheme,
    KeyedHashScheme, Name, Nonce as PolicyNonce, PcrSelectionList, PcrSelectionListBuilder,
    PcrSlot, Private, Public, PublicBuilder, PublicEccParametersBuilder, PublicKeyedHashParameters,
    SensitiveData, Signature, SymmetricDefinition, SymmetricDefinitionObject,
};
use tss_esapi::tcti_ldr::{DeviceConfig, NetworkTPMConfig, TabrmdConfig, TctiNameConf};
use tss_esapi::traits::{Marshall, UnMarshall};
use tss_esapi::Context;
use zeroize::Zeroizing;

use crate::pki::hex;
use crate::proto::private::PcrAuthority;
use crate::tpm::openssl_context::Sealing;
use crate::tpm::policy;

/// What went wrong talking to the TPM or with sealed data.
#[derive(Debug, thiserror::Error)]
pub enum TpmError {
    /// The TCTI configuration string is not valid.
    #[error("invalid TPM configuration {tcti:?}: {reason}")]
    BadTcti {
        /// The configuration.
        tcti: String,
        /// Why.
        reason: String,
    },
    /// No TPM answered.
    #[error("no TPM reachable at {tcti}: {reason}")]
    Unreachable {
        /// Where it was looked for.
        tcti: String,
        /// Why.
        reason: String,
    },
    /// The sealed blob is malformed, tampered with, or from another TPM.
    #[error("sealed data is corrupted: {0}")]
    SealedCorrupted(String),
    /// The TPM refused to unseal: PCR 7 differs from when the data was sealed.
    #[error(
        "the TPM refused to unseal (the Secure Boot state in PCR 7 changed since sealing): {0}"
    )]
    PolicyRejected(String),
    /// PCR 7 holds a value the cluster has not approved for this node (sealed under its PCR
    /// policy): the owner may approve it (`RequestPcrApproval`).
    #[error("PCR 7 holds {pcr7}, a value the cluster has not approved for this node (the Secure Boot state changed since enrolment)")]
    Unapproved {
        /// PCR 7 now (hex).
        pcr7: String,
    },
    /// Something of the PCR policy on the ESP is malformed.
    #[error("the PCR authority is malformed: {0}")]
    BadAuthority(String),
    /// The node runs without a TPM (the insecure flag): it has no PCR 7 and no recovery key.
    #[error("this node runs without a TPM (insecure): it has no PCR 7 and no recovery key")]
    NoTpm,
    /// The PCR authority on the ESP cannot be read.
    #[error(transparent)]
    Esp(Box<crate::storage::EspError>),
    /// Another TPM command failed.
    #[error("TPM {op} failed: {reason}")]
    Command {
        /// The command.
        op: &'static str,
        /// The TPM's or the library's error.
        reason: String,
    },
    /// The TPM's storage primary key is not the one the data was sealed under.
    #[error("the TPM's storage primary key is not the one this data was sealed under (another TPM, a cleared TPM, or something between the node and its TPM): its name is {found}, sealed under {sealed}")]
    PrimaryMismatch {
        /// The name of the primary the TPM presents now (hex).
        found: String,
        /// The name recorded at sealing (hex).
        sealed: String,
    },
    /// The operating system's random generator failed.
    #[error("the operating system's random generator failed")]
    Rng,
}

/// The TCTI `tcti` names (`device:/dev/tpmrm0`, `swtpm:host=…,port=…`). Its kind is read here:
/// tss-esapi's `TctiNameConf::from_str` compiles a regular expression per kind to find it, and
/// its whole parse took 1.0 to 1.4 ms of a node's start before the first TPM command (issue 12).
/// A network TPM's host and port are still parsed by tss-esapi.
fn tcti_name_conf(tcti: &str) -> Result<TctiNameConf, TpmError> {
    let bad = |reason: String| TpmError::BadTcti {
        tcti: tcti.to_owned(),
        reason,
    };
    let (kind, conf) = tcti.split_once(':').unwrap_or((tcti, ""));
    let parsed = match kind {
        "device" => DeviceConfig::from_str(conf).map(TctiNameConf::Device),
        "swtpm" => NetworkTPMConfig::from_str(conf).map(TctiNameConf::Swtpm),
        "mssim" => NetworkTPMConfig::from_str(conf).map(TctiNameConf::Mssim),
        "tabrmd" => TabrmdConfig::from_str(conf).map(TctiNameConf::Tabrmd),
        _ => return Err(bad("not device:, swtpm:, mssim: or tabrmd:".into())),
    };
    parsed.map_err(|e| bad(e.to_string()))
}

fn command(op: &'static str) -> impl FnOnce(tss_esapi::Error) -> TpmError {
    move |e| TpmError::Command {
        op,
        reason: e.to_string(),
    }
}

/// What a sealed object is. Its name is the AES-GCM associated data of its ciphertext, so a
/// sealed object of one kind never opens as another (a journal as a configuration, say).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SealedKind {
    /// The node's SealedConfiguration.
    Configuration,
    /// The EnrolmentJournal of an unfinished bootstrap or register.
    EnrolmentJournal,
    /// The HeldShares of peers' CUKs a consensus member keeps for them.
    HeldShares,
}

impl SealedKind {
    /// Its name, as logs and errors say it.
    pub fn name(self) -> &'static str {
        match self {
            SealedKind::Configuration => "a sealed configuration",
            SealedKind::EnrolmentJournal => "an enrolment journal",
            SealedKind::HeldShares => "held shares",
        }
    }

    fn associated_data(self) -> &'static [u8] {
        match self {
            SealedKind::Configuration => b"polis sealed object: SealedConfiguration",
            SealedKind::EnrolmentJournal => b"polis sealed object: EnrolmentJournal",
            SealedKind::HeldShares => b"polis sealed object: HeldShares",
        }
    }
}

/// Where the [`Primary::Current`] storage primary is kept between connections, in the owner's
/// persistent range (0x81000001, the customary SRK, is left to other software): a restarted
/// node then derives no primary before unsealing, 8 of its 20 ms of TPM work on swtpm and more
/// on a discrete TPM (issue 12). It is used only where its name is the one recorded at sealing.
const KEPT_PRIMARY: u32 = 0x8100_0F01;

/// The [`Primary::Current`] storage primary a connection holds.
struct KeptPrimary {
    handle: KeyHandle,
    name: Vec<u8>,
    /// Found at [`KEPT_PRIMARY`], not derived: closed, not flushed, when the connection ends.
    persistent: bool,
}

/// How many leftover transient objects [`Sealer::flush_leftovers`] looks for (TPMs hold 3 or so).
const LEFTOVERS_MAX: u32 = 16;

/// A connection to one TPM.
pub struct Sealer {
    ctx: Context,
    /// The [`Primary::Current`] storage primary, found at [`KEPT_PRIMARY`] or derived at the
    /// first seal or unseal, and kept while the connection lasts: deriving it took 10 of a
    /// seal's 27 ms on swtpm (issue 12). Flushed (or closed) when the sealer is dropped.
    current: Option<KeptPrimary>,
    /// The session salted by the kept primary, started at its first use and kept while the
    /// connection lasts: starting one took 2 of a seal's 6.5 ms on swtpm (issue 12). Flushed when
    /// the sealer is dropped, or after a command that failed in it.
    salted: Option<AuthSession>,
    /// ESYS's crypto on this thread in one OpenSSL context while the connection lasts; last, so
    /// that it outlives the flushes and `ctx`.
    _sealing: Sealing,
}

impl Drop for Sealer {
    fn drop(&mut self) {
        if let Some(session) = self.salted.take() {
            self.flush_session(session);
        }
        if let Some(kept) = self.current.take() {
            self.let_go(kept);
        }
    }
}

impl Sealer {
    /// Connect through `tcti`, e.g. `device:/dev/tpmrm0` or `swtpm:host=127.0.0.1,port=2321`.
    pub fn connect(tcti: &str) -> Result<Sealer, TpmError> {
        let conf = tcti_name_conf(tcti)?;
        let sealing = Sealing::enter();
        let ctx = Context::new(conf).map_err(|e| TpmError::Unreachable {
            tcti: tcti.to_owned(),
            reason: e.to_string(),
        })?;
        let mut sealer = Sealer {
            ctx,
            current: None,
            salted: None,
            _sealing: sealing,
        };
        sealer.flush_leftovers();
        Ok(sealer)
    }

    /// Flush the transient objects and sessions an earlier connection left behind: a
    /// `polis-node` killed while connected straight to a TPM (swtpm, `/dev/tpm0`; not the
    /// kernel's `tpmrm0`, which flushes them itself) leaves its kept primary and salted session,
    /// and a TPM holds only a few (swtpm three sessions: the fourth kill left a node that could
    /// not seal). Polis is the only user of its node's TPM, so everything found here is a
    /// leftover of its own.
    fn flush_leftovers(&mut self) {
        use tss_esapi::constants::tss::{
            TPM2_ACTIVE_SESSION_FIRST, TPM2_LOADED_SESSION_FIRST, TPM2_TRANSIENT_FIRST,
        };
        for first in [
            TPM2_TRANSIENT_FIRST,
            TPM2_LOADED_SESSION_FIRST,
            TPM2_ACTIVE_SESSION_FIRST,
        ] {
            let listed = self.ctx.get_capability(
                tss_esapi::constants::CapabilityType::Handles,
                first,
                LEFTOVERS_MAX,
            );
            let Ok((tss_esapi::structures::CapabilityData::Handles(handles), _)) = listed else {
                continue;
            };
            for handle in handles.into_inner() {
                if let Ok(leftover) = self.ctx.tr_from_tpm_public(handle) {
                    self.flush(leftover);
                }
            }
        }
    }

    /// Get ready for a first unseal while nothing waits (the TPM actor calls it once it has
    /// reported the connection): take the primary an earlier connection kept in the TPM, if
    /// there is one, and start the session it salts. A restarted node's first unseal, its sealed
    /// configuration's, then starts neither: restart to etcd's spawn 13.0 → 11.1 ms (medians of
    /// 12, issue 12). Derives nothing where no primary is kept (a first seal does, as it must).
    pub fn prepare(&mut self) {
        if self.current.is_some() {
            return;
        }
        let Some(kept) = self.persistent_primary() else {
            return;
        };
        let handle = kept.handle;
        self.current = Some(kept);
        if let Ok(session) = self.salted_session(handle) {
            self.salted = Some(session);
        }
    }

    /// `n` bytes from the TPM's random generator.
    pub fn random(&mut self, n: usize) -> Result<Vec<u8>, TpmError> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let chunk = (n - out.len()).min(32);
            let bytes = self.ctx.get_random(chunk).map_err(command("GetRandom"))?;
            out.extend_from_slice(bytes.value());
        }
        Ok(out)
    }

    /// Seal `secret`, an object of `kind`, to this TPM and the current PCR 7.
    pub fn seal(&mut self, kind: SealedKind, secret: &[u8]) -> Result<Vec<u8>, TpmError> {
        self.seal_under(Primary::Current, kind, secret, Policy::Pcr7)
    }

    /// Seal `secret`, an object of `kind`, to this TPM under the cluster's PCR policy for this
    /// node (`authority`): it unseals wherever PCR 7 holds a value the cluster approved.
    pub fn seal_authorized(
        &mut self,
        kind: SealedKind,
        secret: &[u8],
        authority: &PcrAuthority,
    ) -> Result<Vec<u8>, TpmError> {
        self.seal_under(
            Primary::Current,
            kind,
            secret,
            Policy::Authorized(authority),
        )
    }

    fn seal_under(
        &mut self,
        which: Primary,
        kind: SealedKind,
        secret: &[u8],
        policy: Policy<'_>,
    ) -> Result<Vec<u8>, TpmError> {
        let mut key = [0u8; 32];
        SystemRandom::new()
            .fill(&mut key)
            .map_err(|_| TpmError::Rng)?;
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| TpmError::Rng)?;
        let mut ciphertext = secret.to_vec();
        aead_key(&key)
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(kind.associated_data()),
                &mut ciphertext,
            )
            .map_err(|_| TpmError::Rng)?;

        let (primary, name) = self.primary(which)?;
        let sealed = self.seal_key(primary, &key, policy);
        key.fill(0);
        self.release(primary);
        let (public, private) = sealed?;

        let mut blob = Vec::new();
        for part in [&public, &private, &name] {
            blob.extend_from_slice(&(part.len() as u32).to_be_bytes());
            blob.extend_from_slice(part);
        }
        blob.extend_from_slice(&nonce);
        blob.extend_from_slice(&ciphertext);
        Ok(blob)
    }

    /// Unseal a blob from [`Sealer::seal`] that must hold an object of `kind`: one kind of sealed
    /// object can never be passed off as another.
    /// The plaintext is wiped when dropped, as is every copy made on the way.
    pub fn unseal(
        &mut self,
        kind: SealedKind,
        blob: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, TpmError> {
        self.unseal_with(kind, blob, Policy::Pcr7)
    }

    /// Unseal a blob from [`Sealer::seal_authorized`] with the approval in `authority` of the
    /// value PCR 7 holds now; [`TpmError::Unapproved`] if there is none.
    pub fn unseal_authorized(
        &mut self,
        kind: SealedKind,
        blob: &[u8],
        authority: &PcrAuthority,
    ) -> Result<Zeroizing<Vec<u8>>, TpmError> {
        self.unseal_with(kind, blob, Policy::Authorized(authority))
    }

    fn unseal_with(
        &mut self,
        kind: SealedKind,
        blob: &[u8],
        policy: Policy<'_>,
    ) -> Result<Zeroizing<Vec<u8>>, TpmError> {
        let parts = SealedObject::decode(blob)?;
        let primary = self.primary_named(parts.primary_name)?;
        let key = self.unseal_key(primary, parts.public, parts.private, policy);
        self.release(primary);
        let key = Zeroizing::new(key?);
        let mut plaintext = Zeroizing::new(parts.ciphertext.to_vec());
        let opened = aead_key(&key)
            .open_in_place(
                Nonce::assume_unique_for_key(parts.nonce),
                Aad::from(kind.associated_data()),
                &mut plaintext,
            )
            .map_err(|_| {
                TpmError::SealedCorrupted(format!(
                    "ciphertext fails authentication as {}: altered, or another kind of object",
                    kind.name()
                ))
            })?;
        Ok(Zeroizing::new(opened.to_vec()))
    }

    /// The value PCR 7 holds now (SHA-256 bank).
    pub fn pcr7(&mut self) -> Result<Vec<u8>, TpmError> {
        let (_, _, values) = self.ctx.pcr_read(pcr7()).map_err(command("PCR_Read"))?;
        values
            .value()
            .first()
            .map(|digest| digest.value().to_vec())
            .ok_or_else(|| TpmError::Command {
                op: "PCR_Read",
                reason: "the TPM answered no PCR 7 value in its SHA-256 bank".into(),
            })
    }

    /// Extend PCR 7 with `data`'s SHA-256, as firmware does when the Secure Boot state changes.
    /// After this, data sealed before no longer unseals.
    pub fn extend_pcr7(&mut self, data: &[u8]) -> Result<(), TpmError> {
        let digest = ring::digest::digest(&ring::digest::SHA256, data);
        let mut values = DigestValues::new();
        values.set(
            HashingAlgorithm::Sha256,
            Digest::try_from(digest.as_ref().to_vec()).map_err(command("PCR_Extend"))?,
        );
        with_empty_password(&mut self.ctx, |ctx| ctx.pcr_extend(PcrHandle::Pcr7, values))
            .map_err(command("PCR_Extend"))
    }

    /// The storage primary that data was sealed under, recognised by its `name`: the one kept at
    /// [`KEPT_PRIMARY`] if it has that name (a node's restart then derives nothing), else one of
    /// the templates this code knows (the TPM and its owner seed must be the same, too).
    fn primary_named(&mut self, name: &[u8]) -> Result<KeyHandle, TpmError> {
        if self.current.is_none() {
            if let Some(kept) = self.persistent_primary() {
                if kept.name == name {
                    let handle = kept.handle;
                    self.current = Some(kept);
                    return Ok(handle);
                }
                self.let_go(kept);
            }
        }
        let mut current = None;
        for which in [Primary::Current, Primary::WithoutNoDa] {
            let (primary, found) = self.primary(which)?;
            if found == name {
                return Ok(primary);
            }
            self.release(primary);
            current.get_or_insert(found);
        }
        Err(TpmError::PrimaryMismatch {
            found: hex(&current.unwrap_or_default()),
            sealed: hex(name),
        })
    }

    /// The storage primary key of template `which`, derived from the owner seed (so the same
    /// key every time), and its name; hand it back with [`Sealer::release`].
    fn primary(&mut self, which: Primary) -> Result<(KeyHandle, Vec<u8>), TpmError> {
        if let (Primary::Current, Some(current)) = (which, &self.current) {
            return Ok((current.handle, current.name.clone()));
        }
        let template = storage_key_template(which).map_err(command("CreatePrimary"))?;
        let primary = with_empty_password(&mut self.ctx, |ctx| {
            ctx.create_primary(Hierarchy::Owner, template, None, None, None, None)
        })
        .map(|r| r.key_handle)
        .map_err(command("CreatePrimary"))?;
        match self.ctx.tr_get_name(primary.into()) {
            Ok(name) => {
                let derived = (primary, name.value().to_vec());
                if let Primary::Current = which {
                    self.keep_persistent(primary, &derived.1);
                    self.current = Some(KeptPrimary {
                        handle: primary,
                        name: derived.1.clone(),
                        persistent: false,
                    });
                }
                Ok(derived)
            }
            Err(e) => {
                self.flush(primary.into());
                Err(command("TR_GetName")(e))
            }
        }
    }

    fn seal_key(
        &mut self,
        primary: KeyHandle,
        key: &[u8; 32],
        policy: Policy<'_>,
    ) -> Result<(Vec<u8>, Vec<u8>), TpmError> {
        let digest = match policy {
            // Computed here from PCR 7's value: one command, where a trial session takes four.
            Policy::Pcr7 => {
                let digest = policy::pcr7_policy(&self.pcr7()?);
                Digest::try_from(digest.to_vec()).map_err(command("PolicyPCR"))?
            }
            Policy::Authorized(authority) => {
                let name = policy_key_name(&policy_key_template(&authority.policy_key)?)?;
                let digest = policy::authorized_policy(name.value(), &authority.node_id);
                Digest::try_from(digest.to_vec()).map_err(command("PolicyAuthorize"))?
            }
        };
        let template = sealed_object_template(digest).map_err(command("Create"))?;
        let data = SensitiveData::try_from(key.to_vec()).map_err(command("Create"))?;
        let created = self
            .in_salted_session(primary, None, |ctx| {
                ctx.create(
                    primary,
                    template.clone(),
                    None,
                    Some(data.clone()),
                    None,
                    None,
                )
            })?
            .map_err(command("Create"))?;
        let public = created.out_public.marshall().map_err(command("Create"))?;
        Ok((public, created.out_private.value().to_vec()))
    }

    fn unseal_key(
        &mut self,
        primary: KeyHandle,
        public: Public,
        private: Private,
        policy: Policy<'_>,
    ) -> Result<[u8; 32], TpmError> {
        // Load carries no secret: the private part is encrypted under the primary.
        let loaded = with_empty_password(&mut self.ctx, |ctx| ctx.load(primary, private, public));
        let object = loaded.map_err(|e| {
            TpmError::SealedCorrupted(format!(
                "the TPM refused to load it ({e}): it was sealed by another TPM, or altered"
            ))
        })?;
        // A connection's first unseal (a restart's) salts the policy session itself, which then
        // also encrypts the answer: one session to start and to compute for instead of two
        // (1.8 ms less on swtpm, issue 12). Later ones reuse the kept salted session.
        let salt = self.salted.is_none().then_some(primary);
        let session = match policy {
            Policy::Pcr7 => self.pcr7_policy(salt),
            Policy::Authorized(authority) => self.approved_session(authority, salt),
        };
        let unsealed = session.and_then(|policy| {
            let unseal = |ctx: &mut Context| ctx.unseal(object.into());
            let out = match salt {
                Some(_) => Ok(self
                    .ctx
                    .execute_with_sessions((Some(policy.into()), None, None), unseal)),
                None => self.in_salted_session(primary, Some(policy), unseal),
            };
            let out = out.and_then(|out| out.map_err(|e| TpmError::PolicyRejected(e.to_string())));
            self.flush_session(policy);
            out
        });
        self.flush(object.into());
        let unsealed = unsealed?;
        unsealed
            .value()
            .try_into()
            .map_err(|_| TpmError::SealedCorrupted("sealed key has the wrong length".into()))
    }

    /// A policy session that has asserted the current PCR 7. Salted by `salt` if given, and then
    /// it encrypts the answers of the command it authorizes; unsalted it carries no secret, and a
    /// salted session beside it encrypts.
    fn pcr7_policy(&mut self, salt: Option<KeyHandle>) -> Result<PolicySession, TpmError> {
        let kind = SessionType::Policy;
        let session = match salt {
            Some(_) => {
                let session = self.start_session(salt, kind, SymmetricDefinition::AES_128_CFB)?;
                let encrypting = SessionAttributesBuilder::new()
                    .with_continue_session(true)
                    .with_encrypt(true);
                self.with_attributes(session, encrypting)?
            }
            None => self.start_session(None, kind, SymmetricDefinition::Null)?,
        };
        let policy = PolicySession::try_from(session).map_err(command("StartAuthSession"))?;
        if let Err(e) = self.ctx.policy_pcr(policy, Digest::default(), pcr7()) {
            self.flush_session(session);
            return Err(command("PolicyPCR")(e));
        }
        Ok(policy)
    }

    /// A policy session that has asserted the current PCR 7 and shown the cluster's approval of
    /// it for this node (`TPM2_PolicyAuthorize`).
    fn approved_session(
        &mut self,
        authority: &PcrAuthority,
        salt: Option<KeyHandle>,
    ) -> Result<PolicySession, TpmError> {
        let pcr7 = self.pcr7()?;
        let approval = authority
            .approvals
            .iter()
            .find(|a| a.pcr7 == pcr7)
            .ok_or_else(|| TpmError::Unapproved { pcr7: hex(&pcr7) })?;
        let signature = ecdsa_signature(&approval.signature)?;
        let session = self.pcr7_policy(salt)?;
        let authorized = self.authorize(session, authority, signature);
        if authorized.is_err() {
            self.flush_session(session);
        }
        authorized.map(|()| session)
    }

    /// Show the TPM, in `session` (which asserted PCR 7), the policy key's `signature` over the
    /// session's digest for this node.
    fn authorize(
        &mut self,
        session: PolicySession,
        authority: &PcrAuthority,
        signature: Signature,
    ) -> Result<(), TpmError> {
        let approved = self
            .ctx
            .policy_get_digest(session)
            .map_err(command("PolicyGetDigest"))?;
        let policy_ref = policy::policy_ref(&authority.node_id);
        let mut message = approved.value().to_vec();
        message.extend_from_slice(&policy_ref);
        let signed = Digest::try_from(policy::sha256(&message).to_vec())
            .map_err(command("VerifySignature"))?;
        let (key, name) = self.load_policy_key(&authority.policy_key)?;
        let verified = self.ctx.verify_signature(key, signed, signature);
        self.flush(key.into());
        let ticket = verified.map_err(|e| {
            TpmError::PolicyRejected(format!(
                "the approval of this PCR 7 value is not the cluster policy key's signature: {e}"
            ))
        })?;
        let policy_ref =
            PolicyNonce::try_from(policy_ref.to_vec()).map_err(command("PolicyAuthorize"))?;
        self.ctx
            .policy_authorize(session, approved, policy_ref, &name, ticket)
            .map_err(|e| TpmError::PolicyRejected(e.to_string()))
    }

    /// Load the cluster's policy key (its public part), and its TPM name. In the owner
    /// hierarchy, since the TPM issues no usable ticket for a key of the null one.
    fn load_policy_key(&mut self, point: &[u8]) -> Result<(KeyHandle, Name), TpmError> {
        let public = policy_key_template(point)?;
        let name = policy_key_name(&public)?;
        let key = self
            .ctx
            .load_external_public(public, Hierarchy::Owner)
            .map_err(command("LoadExternal"))?;
        Ok((key, name))
    }

    /// Run `command` with a session salted by `primary` that encrypts its secret parameters,
    /// after `policy` if the command is authorized by one. The kept primary's session is kept
    /// (see [`Sealer::salted`]); a command that fails in it runs once more in a new one, so a
    /// session the TPM dropped is never taken for a refusal. Errs only if no session starts.
    fn in_salted_session<T>(
        &mut self,
        primary: KeyHandle,
        policy: Option<PolicySession>,
        mut command: impl FnMut(&mut Context) -> tss_esapi::Result<T>,
    ) -> Result<tss_esapi::Result<T>, TpmError> {
        let kept = self.current.as_ref().map(|kept| kept.handle) == Some(primary);
        let mut attempts = if kept && self.salted.is_some() { 2 } else { 1 };
        loop {
            let session = match self.salted.filter(|_| kept) {
                Some(session) => session,
                None => self.salted_session(primary)?,
            };
            let sessions = match policy {
                Some(policy) => (Some(AuthSession::from(policy)), Some(session), None),
                None => (Some(session), None, None),
            };
            let result = self.ctx.execute_with_sessions(sessions, &mut command);
            attempts -= 1;
            match (&result, kept) {
                (Ok(_), true) => self.salted = Some(session),
                (Err(_), true) => {
                    self.salted = None;
                    self.flush_session(session);
                }
                // Another primary's session; the kept one stays.
                (_, false) => self.flush_session(session),
            }
            if result.is_ok() || attempts == 0 {
                return Ok(result);
            }
        }
    }

    /// A new HMAC session salted by `primary`, encrypting command and response parameters and
    /// continued across commands.
    fn salted_session(&mut self, primary: KeyHandle) -> Result<AuthSession, TpmError> {
        let session = self.start_session(
            Some(primary),
            SessionType::Hmac,
            SymmetricDefinition::AES_128_CFB,
        )?;
        let encrypting = SessionAttributesBuilder::new()
            .with_continue_session(true)
            .with_decrypt(true)
            .with_encrypt(true);
        self.with_attributes(session, encrypting)
    }

    /// `session` with the attributes `built`; flushed if the TPM refuses them.
    fn with_attributes(
        &mut self,
        session: AuthSession,
        built: SessionAttributesBuilder,
    ) -> Result<AuthSession, TpmError> {
        let (attributes, mask) = built.build();
        if let Err(e) = self.ctx.tr_sess_set_attributes(session, attributes, mask) {
            self.flush_session(session);
            return Err(command("TRSess_SetAttributes")(e));
        }
        Ok(session)
    }

    /// A new session of `kind` (SHA-256), salted by `salt` if given.
    fn start_session(
        &mut self,
        salt: Option<KeyHandle>,
        kind: SessionType,
        symmetric: SymmetricDefinition,
    ) -> Result<AuthSession, TpmError> {
        self.ctx
            .start_auth_session(salt, None, None, kind, symmetric, HashingAlgorithm::Sha256)
            .map_err(command("StartAuthSession"))?
            .ok_or_else(|| TpmError::Command {
                op: "StartAuthSession",
                reason: "no session returned".into(),
            })
    }

    /// The key at [`KEPT_PRIMARY`] and its name, if there is one made from the
    /// [`Primary::Current`] template: so it cannot be a key imported from outside, whose owner
    /// would know the secret that protects what is sealed under it (an imported key is never
    /// fixed to its TPM). [`Sealer::primary_named`] trusts it only under the name data was
    /// sealed under.
    fn persistent_primary(&mut self) -> Option<KeptPrimary> {
        let mut handle = self.at_kept_handle()?;
        match self.name_if_current_template(handle) {
            Some(name) => Some(KeptPrimary {
                handle: handle.into(),
                name,
                persistent: true,
            }),
            None => {
                let _ = self.ctx.tr_close(&mut handle);
                None
            }
        }
    }

    /// The name of the key at `handle`, if it was made from the [`Primary::Current`] template.
    fn name_if_current_template(&mut self, handle: ObjectHandle) -> Option<Vec<u8>> {
        let (public, name, _) = self.ctx.read_public(handle.into()).ok()?;
        made_from_current_template(&public).then(|| name.value().to_vec())
    }

    /// Keep a copy of the derived [`Primary::Current`] `primary` at [`KEPT_PRIMARY`] for the
    /// next connection, in place of whatever is there (Polis is its TPM's only user). A TPM
    /// that cannot keep it (its persistent memory full) only derives it again next time.
    fn keep_persistent(&mut self, primary: KeyHandle, name: &[u8]) {
        let Ok(at) = PersistentTpmHandle::new(KEPT_PRIMARY) else {
            return;
        };
        let evict = |ctx: &mut Context, object: ObjectHandle| {
            with_empty_password(ctx, |ctx| {
                ctx.evict_control(Provision::Owner, object, Persistent::Persistent(at))
            })
        };
        // Whatever else is there makes way. Evicting a persistent object removes it from the
        // TPM, and ESYS forgets its handle.
        if let Some(mut occupant) = self.at_kept_handle() {
            if self.name_if_current_template(occupant).as_deref() == Some(name) {
                let _ = self.ctx.tr_close(&mut occupant);
                return;
            }
            let _ = evict(&mut self.ctx, occupant);
        }
        if let Ok(mut copy) = evict(&mut self.ctx, primary.into()) {
            let _ = self.ctx.tr_close(&mut copy);
        }
    }

    /// Whatever object is at [`KEPT_PRIMARY`]; asked of the TPM's handle list first, since
    /// ESYS logs an error for every handle it looks up in vain.
    fn at_kept_handle(&mut self) -> Option<ObjectHandle> {
        let listed = self.ctx.get_capability(
            tss_esapi::constants::CapabilityType::Handles,
            KEPT_PRIMARY,
            1,
        );
        let Ok((tss_esapi::structures::CapabilityData::Handles(handles), _)) = listed else {
            return None;
        };
        let at = PersistentTpmHandle::new(KEPT_PRIMARY).ok()?;
        if !handles.into_inner().contains(&TpmHandle::Persistent(at)) {
            return None;
        }
        self.ctx.tr_from_tpm_public(TpmHandle::Persistent(at)).ok()
    }

    /// End this connection's hold on a primary: a derived one is flushed; of a persistent one
    /// only the reference goes, the key stays in the TPM.
    fn let_go(&mut self, kept: KeptPrimary) {
        let mut handle = ObjectHandle::from(kept.handle);
        match kept.persistent {
            true => drop(self.ctx.tr_close(&mut handle)),
            false => self.flush(handle),
        }
    }

    /// Done with `primary`: flushed, unless it is the kept [`Primary::Current`].
    fn release(&mut self, primary: KeyHandle) {
        if self.current.as_ref().map(|kept| kept.handle) != Some(primary) {
            self.flush(primary.into());
        }
    }

    /// Free a transient handle; a failure only leaks a slot until the TPM's next reset.
    fn flush(&mut self, handle: ObjectHandle) {
        let _ = self.ctx.flush_context(handle);
    }

    fn flush_session(&mut self, session: impl Into<SessionHandle>) {
        self.flush(ObjectHandle::from(session.into()));
    }
}

/// Run `command` authorized by the empty password (Polis sets no auth values), in a password
/// session: for commands that carry no secret. tss-esapi's `execute_with_nullauth_session`
/// starts and flushes an unsalted HMAC session instead, which protects nothing more (its key is
/// the empty auth value) and costs two more TPM commands and ESYS's digests, each of which
/// builds a new OpenSSL library context in ESYS 3.2 (≈ 0.3 ms apiece; issue 12).
fn with_empty_password<T>(
    ctx: &mut Context,
    command: impl FnOnce(&mut Context) -> tss_esapi::Result<T>,
) -> tss_esapi::Result<T> {
    ctx.execute_with_session(Some(AuthSession::Password), command)
}

/// What sealed data is bound to.
#[derive(Clone, Copy)]
enum Policy<'a> {
    /// The PCR 7 value at sealing, itself.
    Pcr7,
    /// Any PCR 7 value the cluster's policy key approved for this node.
    Authorized(&'a PcrAuthority),
}

/// The cluster's policy key, an uncompressed P-256 point, as the TPM loads it: a signing key
/// verifying ECDSA with SHA-256 (its name, which sealed data is bound to, depends on all of this).
fn policy_key_template(point: &[u8]) -> Result<Public, TpmError> {
    let bad = || TpmError::BadAuthority("the policy key is not an uncompressed P-256 point".into());
    if !policy::is_uncompressed_point(point) {
        return Err(bad());
    }
    let coordinate = |c: &[u8]| EccParameter::try_from(c.to_vec()).map_err(|_| bad());
    let (x, y) = point[1..].split_at(policy::DIGEST_LEN);
    let unique = EccPoint::new(coordinate(x)?, coordinate(y)?);
    let attributes = ObjectAttributesBuilder::new()
        .with_user_with_auth(true)
        .with_sign_encrypt(true)
        .build()
        .map_err(command("LoadExternal"))?;
    let parameters = PublicEccParametersBuilder::new_unrestricted_signing_key(
        EccScheme::EcDsa(HashScheme::new(HashingAlgorithm::Sha256)),
        EccCurve::NistP256,
    )
    .build()
    .map_err(command("LoadExternal"))?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_ecc_parameters(parameters)
        .with_ecc_unique_identifier(unique)
        .build()
        .map_err(command("LoadExternal"))
}

/// The TPM name of the policy key `public`: its name algorithm (SHA-256) and the digest of its
/// public area. Computed here, since sealing needs only the name, and ESYS computes every digest
/// in a new OpenSSL library context (≈ 0.3 ms apiece; issue 12).
fn policy_key_name(public: &Public) -> Result<Name, TpmError> {
    let area = public.marshall().map_err(command("LoadExternal"))?;
    let mut name = tss_esapi::constants::tss::TPM2_ALG_SHA256
        .to_be_bytes()
        .to_vec();
    name.extend_from_slice(policy::sha256(&area).as_ref());
    Name::try_from(name).map_err(command("LoadExternal"))
}

/// An ECDSA-with-SHA-256 signature from its `r ‖ s` form.
fn ecdsa_signature(raw: &[u8]) -> Result<Signature, TpmError> {
    let bad = || {
        TpmError::BadAuthority(format!(
            "an approval signature is {} bytes, not r ‖ s ({})",
            raw.len(),
            policy::SIGNATURE_LEN
        ))
    };
    if raw.len() != policy::SIGNATURE_LEN {
        return Err(bad());
    }
    let (r, s) = raw.split_at(policy::SIGNATURE_LEN / 2);
    let part = |p: &[u8]| EccParameter::try_from(p.to_vec()).map_err(|_| bad());
    EccSignature::create(HashingAlgorithm::Sha256, part(r)?, part(s)?)
        .map(Signature::EcDsa)
        .map_err(command("VerifySignature"))
}

fn pcr7() -> PcrSelectionList {
    // A fixed, valid selection: building it cannot fail.
    PcrSelectionListBuilder::new()
        .with_selection(HashingAlgorithm::Sha256, &[PcrSlot::Slot7])
        .build()
        .unwrap_or_default()
}

fn aead_key(key: &[u8; 32]) -> LessSafeKey {
    // A 32-byte key is always valid for AES-256-GCM.
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).unwrap_or_else(|_| unreachable!()))
}

/// ECC P-256 storage key: fast to derive on every call, even on a software TPM.
/// The storage primary's templates, the one this code seals under first.
#[derive(Clone, Copy)]
enum Primary {
    /// Exempt from dictionary-attack protection: its auth is empty, so DA protection guards
    /// nothing, and without the exemption unorderly shutdowns (power cuts; `polisctl chaos`
    /// found it by killing swtpm) put the TPM in lockout, where it refuses to seal.
    Current,
    /// The first template, without noDA: data sealed under it still unseals.
    WithoutNoDa,
}

/// Whether `public` is the [`Primary::Current`] template's, its own public point aside.
fn made_from_current_template(public: &Public) -> bool {
    let (Public::Ecc { unique, .. }, Ok(mut expected)) =
        (public, storage_key_template(Primary::Current))
    else {
        return false;
    };
    if let Public::Ecc { unique: point, .. } = &mut expected {
        *point = unique.clone();
    }
    expected == *public
}

fn storage_key_template(which: Primary) -> tss_esapi::Result<Public> {
    let attributes = ObjectAttributesBuilder::new()
        .with_no_da(matches!(which, Primary::Current))
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_decrypt(true)
        .with_restricted(true)
        .build()?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_ecc_parameters(
            PublicEccParametersBuilder::new_restricted_decryption_key(
                SymmetricDefinitionObject::AES_128_CFB,
                EccCurve::NistP256,
            )
            .build()?,
        )
        .with_ecc_unique_identifier(EccPoint::default())
        .build()
}

/// A sealed data object that only the PCR 7 policy `digest` can unseal.
fn sealed_object_template(digest: Digest) -> tss_esapi::Result<Public> {
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_no_da(true)
        .with_admin_with_policy(true)
        .with_user_with_auth(false)
        .build()?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::KeyedHash)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_auth_policy(digest)
        .with_keyed_hash_parameters(PublicKeyedHashParameters::new(KeyedHashScheme::Null))
        .with_keyed_hash_unique_identifier(Digest::default())
        .build()
}

/// A sealed blob taken apart, before the TPM sees any of it: what [`Sealer::unseal`] hands the
/// TPM comes only from here, so malformed bytes end as [`TpmError::SealedCorrupted`], never in
/// the TPM or a panic (the fuzz target `sealed_blob` drives this with arbitrary bytes).
pub struct SealedObject<'a> {
    public: Public,
    private: Private,
    primary_name: &'a [u8],
    nonce: [u8; NONCE_LEN],
    ciphertext: &'a [u8],
}

impl<'a> SealedObject<'a> {
    /// Split `blob` into its parts and unmarshal the TPM's structures.
    pub fn decode(blob: &'a [u8]) -> Result<Self, TpmError> {
        let truncated = || TpmError::SealedCorrupted("truncated".into());
        let mut rest = blob;
        let mut take = |n: usize| -> Result<&'a [u8], TpmError> {
            if rest.len() < n {
                return Err(truncated());
            }
            let (head, tail) = rest.split_at(n);
            rest = tail;
            Ok(head)
        };
        let mut sized = || -> Result<&'a [u8], TpmError> {
            let len = u32::from_be_bytes(take(4)?.try_into().map_err(|_| truncated())?);
            take(len as usize)
        };
        let public = sized()?;
        let private = sized()?;
        let primary_name = sized()?;
        let nonce = take(NONCE_LEN)?.try_into().map_err(|_| truncated())?;
        let ciphertext = rest;
        if ciphertext.len() < AES_256_GCM.tag_len() {
            return Err(truncated());
        }
        Ok(SealedObject {
            public: Public::unmarshall(public)
                .map_err(|e| TpmError::SealedCorrupted(format!("public area: {e}")))?,
            private: Private::try_from(private.to_vec())
                .map_err(|e| TpmError::SealedCorrupted(format!("private area: {e}")))?,
            primary_name,
            nonce,
            ciphertext,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tpm::Swtpm;

    /// A fresh software TPM; the directory holds its state.
    fn swtpm() -> (tempfile::TempDir, Swtpm) {
        let dir = tempfile::tempdir().unwrap();
        let log = slog::Logger::root(slog::Discard, slog::o!());
        let swtpm = Swtpm::start(&dir.path().join("tpm"), &log).unwrap();
        (dir, swtpm)
    }

    /// Each kind of TCTI reads as tss-esapi reads it; anything else is refused by name.
    #[test]
    fn a_tcti_reads_as_tss_esapi_reads_it() {
        for tcti in [
            "device:/dev/tpmrm0",
            "device",
            "swtpm:host=127.0.0.1,port=2321",
            "mssim:port=2321",
            "tabrmd:bus_type=session",
        ] {
            let ours = tcti_name_conf(tcti).unwrap();
            assert_eq!(ours, TctiNameConf::from_str(tcti).unwrap(), "{tcti}");
        }
        for bad in ["", "devices:/dev/tpm0", "swtpm:port=x", "cmd:true"] {
            let refused = tcti_name_conf(bad).unwrap_err();
            assert!(
                matches!(&refused, TpmError::BadTcti { tcti, .. } if tcti == bad),
                "{bad}: {refused}"
            );
        }
    }

    /// The connection keeps one salted session across seals and unseals; one the TPM lost (a
    /// flushed handle, as after a resource manager's eviction) is replaced, not taken for a
    /// refusal.
    #[test]
    fn the_salted_session_is_kept_and_a_lost_one_replaced() {
        let (_dir, swtpm) = swtpm();
        let mut sealer = Sealer::connect(&swtpm.tcti()).unwrap();
        let kind = SealedKind::Configuration;
        let blob = sealer.seal(kind, b"first").unwrap();
        let kept = sealer.salted.expect("a session kept after sealing");
        assert_eq!(sealer.unseal(kind, &blob).unwrap().as_slice(), b"first");
        assert_eq!(
            sealer.salted,
            Some(kept),
            "the same session serves the unseal"
        );
        // Data of the first primary template is sealed and unsealed in sessions of its own.
        let old = sealer
            .seal_under(Primary::WithoutNoDa, kind, b"old", Policy::Pcr7)
            .unwrap();
        assert_eq!(sealer.unseal(kind, &old).unwrap().as_slice(), b"old");
        assert_eq!(
            sealer.salted,
            Some(kept),
            "another primary's leaves it kept"
        );

        sealer.flush_session(kept);
        let blob = sealer.seal(kind, b"second").unwrap();
        assert_eq!(sealer.unseal(kind, &blob).unwrap().as_slice(), b"second");
        assert!(sealer.salted.is_some(), "a new session is kept");
    }

    /// Connections that ended without flushing (a killed node) leave no sessions behind for
    /// the next one: a TPM holds only a few.
    #[test]
    fn a_connection_flushes_the_sessions_a_killed_one_left() {
        let (_dir, swtpm) = swtpm();
        for _ in 0..6 {
            let mut sealer = Sealer::connect(&swtpm.tcti()).unwrap();
            sealer.seal(SealedKind::Configuration, b"sealed").unwrap();
            // No Drop: what a SIGKILL leaves.
            std::mem::forget(sealer);
        }
    }

    /// A restarted node's connection unseals under the primary the first one kept in the TPM,
    /// deriving none.
    #[test]
    fn a_new_connection_unseals_under_the_kept_primary() {
        let (_dir, swtpm) = swtpm();
        let kind = SealedKind::Configuration;
        let blob = Sealer::connect(&swtpm.tcti())
            .unwrap()
            .seal(kind, b"kept")
            .unwrap();
        let mut sealer = Sealer::connect(&swtpm.tcti()).unwrap();
        assert_eq!(sealer.unseal(kind, &blob).unwrap().as_slice(), b"kept");
        let current = sealer.current.as_ref().expect("a primary held");
        assert!(current.persistent, "the kept primary served the unseal");
        // It serves the seals that follow, too.
        let again = sealer.seal(kind, b"again").unwrap();
        let name = |blob: &[u8]| SealedObject::decode(blob).unwrap().primary_name.to_vec();
        assert_eq!(name(&again), name(&blob));
    }

    /// A connection made ready holds the kept primary and its salted session, which the first
    /// unseal uses; on a TPM that keeps no primary it derives and starts nothing.
    #[test]
    fn a_prepared_connection_unseals_in_the_session_it_started() {
        let (_dir, swtpm) = swtpm();
        let kind = SealedKind::Configuration;
        let mut first = Sealer::connect(&swtpm.tcti()).unwrap();
        first.prepare();
        assert!(first.current.is_none() && first.salted.is_none());
        let blob = first.seal(kind, b"prepared").unwrap();
        drop(first);
        let mut sealer = Sealer::connect(&swtpm.tcti()).unwrap();
        sealer.prepare();
        assert!(sealer.current.as_ref().is_some_and(|kept| kept.persistent));
        let started = sealer.salted.expect("a salted session started");
        assert_eq!(sealer.unseal(kind, &blob).unwrap().as_slice(), b"prepared");
        assert_eq!(sealer.salted, Some(started), "the unseal used it");
    }

    /// ESYS's hashes and session HMACs reach Polis's `OSSL_LIB_CTX_new` and take the one
    /// shared context (`tpm::openssl_context`), where each would otherwise build a context of
    /// its own: four fifths of a seal's time.
    #[test]
    fn the_tpm_librarys_crypto_takes_the_shared_openssl_context() {
        let (_dir, swtpm) = swtpm();
        let handed = || crate::tpm::openssl_context::HANDED.with(|n| n.get());
        let before = handed();
        let mut sealer = Sealer::connect(&swtpm.tcti()).unwrap();
        let kind = SealedKind::Configuration;
        let blob = sealer.seal(kind, b"shared").unwrap();
        assert_eq!(sealer.unseal(kind, &blob).unwrap().as_slice(), b"shared");
        let during = handed() - before;
        assert!(during >= 4, "ESYS took the shared context {during} times");
    }

    /// The TPM's answer to an unseal is encrypted on the wire: on a connection's first unseal
    /// (in its salted policy session) as on later ones (in the kept salted session), under
    /// either policy. Otherwise anyone on the bus to the TPM would read the key.
    #[test]
    fn an_unsealed_key_never_crosses_the_wire_in_clear() {
        use crate::proto::private::pcr_authority::Approval;
        use crate::tpm::policy::PolicyKey;
        let (_dir, swtpm) = swtpm();
        let key: [u8; 32] = std::array::from_fn(|i| 0xa5 ^ i as u8);
        let mut sealer = Sealer::connect(&swtpm.tcti()).unwrap();
        let (primary, name) = sealer.primary(Primary::Current).unwrap();
        let signer = PolicyKey::from_pkcs8(&PolicyKey::generate().unwrap()).unwrap();
        let pcr7 = sealer.pcr7().unwrap();
        let node_id = "metropolis-00000000000000000000000000000000";
        let authority = PcrAuthority {
            node_id: node_id.into(),
            policy_key: signer.public(),
            approvals: vec![Approval {
                signature: signer.approve(node_id, &pcr7).unwrap(),
                pcr7,
            }],
            ..Default::default()
        };
        let policies = [Policy::Pcr7, Policy::Authorized(&authority)];
        let sealed: Vec<(Vec<u8>, Vec<u8>)> = policies
            .iter()
            .map(|policy| sealer.seal_key(primary, &key, *policy).unwrap())
            .collect();
        drop(sealer);

        let tap = Wiretap::start(&swtpm);
        for (policy, (public, private)) in policies.iter().zip(&sealed) {
            let mut sealer = Sealer::connect(&tap.tcti).unwrap();
            let primary = sealer.primary_named(&name).unwrap();
            for first in [true, false] {
                assert_eq!(sealer.salted.is_none(), first);
                let unsealed = sealer.unseal_key(
                    primary,
                    Public::unmarshall(public).unwrap(),
                    Private::try_from(private.clone()).unwrap(),
                    *policy,
                );
                assert_eq!(unsealed.unwrap(), key);
                // A seal starts the salted session the second unseal then uses.
                sealer.seal(SealedKind::Configuration, b"other").unwrap();
            }
        }
        let answers = tap.answers.lock().unwrap();
        assert!(answers.len() > 1000, "the tap saw the TPM's answers");
        assert!(
            !answers.windows(key.len()).any(|w| w == key),
            "the key crossed the wire in clear"
        );
    }

    /// A relay between a TPM client and a swtpm, on a loopback port pair of its own (the swtpm
    /// TCTI's command port and control port), keeping every byte the TPM answers on the
    /// command port: what anyone on the bus to a TPM would see.
    struct Wiretap {
        tcti: String,
        answers: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    }

    impl Wiretap {
        fn start(swtpm: &Swtpm) -> Wiretap {
            use std::net::{Ipv4Addr, TcpListener};
            let tcti = swtpm.tcti();
            let target: u16 = tcti.rsplit('=').next().unwrap().parse().unwrap();
            let (commands, control) = loop {
                let commands = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
                let port = commands.local_addr().unwrap().port();
                let Some(next) = port.checked_add(1) else {
                    continue;
                };
                if let Ok(control) = TcpListener::bind((Ipv4Addr::LOCALHOST, next)) {
                    break (commands, control);
                }
            };
            let port = commands.local_addr().unwrap().port();
            let answers = std::sync::Arc::default();
            for (listener, to, kept) in [
                (commands, target, Some(std::sync::Arc::clone(&answers))),
                (control, target + 1, None),
            ] {
                std::thread::spawn(move || {
                    for client in listener.incoming().flatten() {
                        let upstream = std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, to));
                        relay(client, upstream.unwrap(), kept.clone());
                    }
                });
            }
            Wiretap {
                tcti: format!("swtpm:host=127.0.0.1,port={port}"),
                answers,
            }
        }
    }

    /// Copy `client` to `upstream` and back until each side ends, keeping the answers in `kept`.
    fn relay(
        client: std::net::TcpStream,
        upstream: std::net::TcpStream,
        kept: Option<std::sync::Arc<std::sync::Mutex<Vec<u8>>>>,
    ) {
        use std::io::{Read, Write};
        use std::net::Shutdown;
        let (mut from_client, mut to_upstream) =
            (client.try_clone().unwrap(), upstream.try_clone().unwrap());
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut from_client, &mut to_upstream);
            let _ = to_upstream.shutdown(Shutdown::Write);
        });
        let (mut from_upstream, mut to_client) = (upstream, client);
        std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            while let Ok(n @ 1..) = from_upstream.read(&mut buffer) {
                if let Some(kept) = &kept {
                    kept.lock().unwrap().extend_from_slice(&buffer[..n]);
                }
                if to_client.write_all(&buffer[..n]).is_err() {
                    break;
                }
            }
            let _ = to_client.shutdown(Shutdown::Write);
        });
    }

    /// A key at the kept primary's handle that is not of the current template is not taken for
    /// it, even under the name data was sealed under; a derived primary then takes its place.
    #[test]
    fn a_key_of_another_template_at_the_kept_handle_is_not_used() {
        let (_dir, swtpm) = swtpm();
        let kind = SealedKind::Configuration;
        let mut planter = Sealer::connect(&swtpm.tcti()).unwrap();
        let (other, _) = planter.primary(Primary::WithoutNoDa).unwrap();
        let at = PersistentTpmHandle::new(KEPT_PRIMARY).unwrap();
        with_empty_password(&mut planter.ctx, |ctx| {
            ctx.evict_control(Provision::Owner, other.into(), Persistent::Persistent(at))
        })
        .unwrap();
        let blob = planter
            .seal_under(Primary::WithoutNoDa, kind, b"old", Policy::Pcr7)
            .unwrap();
        drop(planter);

        let mut sealer = Sealer::connect(&swtpm.tcti()).unwrap();
        assert!(sealer.persistent_primary().is_none(), "not of the template");
        assert_eq!(sealer.unseal(kind, &blob).unwrap().as_slice(), b"old");
        let current = sealer.current.as_ref().expect("a primary held");
        assert!(!current.persistent, "the planted key was not taken");
        let sealed = sealer.seal(kind, b"new").unwrap();
        drop(sealer);
        let mut next = Sealer::connect(&swtpm.tcti()).unwrap();
        let kept = next
            .persistent_primary()
            .expect("the derived primary took its place");
        assert_eq!(
            kept.name,
            SealedObject::decode(&sealed).unwrap().primary_name
        );
        next.let_go(kept);
    }

    #[test]
    fn data_sealed_under_the_first_primary_template_still_unseals() {
        let (_dir, swtpm) = swtpm();
        let mut sealer = Sealer::connect(&swtpm.tcti()).unwrap();
        let kind = SealedKind::Configuration;
        let old = sealer
            .seal_under(Primary::WithoutNoDa, kind, b"before noDA", Policy::Pcr7)
            .unwrap();
        let new = sealer.seal(kind, b"after").unwrap();
        let name = |blob: &[u8]| SealedObject::decode(blob).unwrap().primary_name.to_vec();
        assert_ne!(name(&old), name(&new), "the templates differ");
        assert_eq!(
            sealer.unseal(kind, &old).unwrap().as_slice(),
            b"before noDA"
        );
        assert_eq!(sealer.unseal(kind, &new).unwrap().as_slice(), b"after");
    }
}
