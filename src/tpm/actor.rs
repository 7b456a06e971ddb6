//! The TPM actor: the only owner of the TPM. Its connection lives on a dedicated thread (TPM
//! calls block), requests are serialized through the mailbox, and each has a timeout, so a stuck
//! TPM fails the actor (and its supervisor restarts it) instead of freezing the tree.

use std::sync::mpsc;
use std::time::Duration;

use polis_actors::{Actor, Ctx, Failure, Handler, Message, Reply, Started};
use tokio::sync::oneshot;
use zeroize::Zeroizing;

use crate::proto::private::sealed_envelope::Protection;
use crate::proto::private::{PcrAuthority, SealedEnvelope};
use crate::storage::Esp;
use crate::tpm::{RecoveryKey, SealedKind, Sealer, TpmError};

/// How long one TPM command may take before the TPM counts as stuck.
const TPM_TIMEOUT: Duration = Duration::from_secs(30);

/// The envelope version this code writes and reads: it lives with the code that makes
/// envelopes; the ESP only checks it when decoding.
pub const ENVELOPE_VERSION: u32 = 1;

// ---- messages ----

/// Seal a secret into a versioned envelope for the ESP: under the cluster's PCR policy once the
/// ESP holds the node's PCR authority (the enrolment journal never), else to PCR 7 itself. The
/// secret is wiped once sealed.
pub struct Seal(pub SealedKind, pub Zeroizing<Vec<u8>>);
impl Message for Seal {
    type Reply = Result<SealedEnvelope, TpmError>;
}

/// Unseal an envelope from [`Seal`]. The answer is wiped when dropped.
pub struct Unseal(pub SealedKind, pub SealedEnvelope);
impl Message for Unseal {
    type Reply = Result<Zeroizing<Vec<u8>>, TpmError>;
}

/// The value PCR 7 holds now (SHA-256 bank).
pub struct ReadPcr7;
impl Message for ReadPcr7 {
    type Reply = Result<Vec<u8>, TpmError>;
}

/// Create the node's recovery key (enrolment).
pub struct CreateRecoveryKey;
impl Message for CreateRecoveryKey {
    type Reply = Result<RecoveryKey, TpmError>;
}

/// Sign a message with the node's recovery key (`r ‖ s`).
pub struct SignWithRecoveryKey(pub RecoveryKey, pub Vec<u8>);
impl Message for SignWithRecoveryKey {
    type Reply = Result<Vec<u8>, TpmError>;
}

/// Random bytes from the TPM's generator.
pub struct Random(pub usize);
impl Message for Random {
    type Reply = Result<Vec<u8>, TpmError>;
}

// ---- state ----

/// Where the node's TPM is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TpmConfig {
    /// A TPM reached through this TCTI (`device:/dev/tpmrm0`, `swtpm:host=…,port=…`).
    Tcti(String),
    /// No TPM, by explicit choice: secrets are stored in plaintext. Insecure; loudly logged.
    InsecureNone,
}

/// The TPM actor.
pub struct Tpm {
    config: TpmConfig,
    /// Where the node's PCR authority is: read at every seal and unseal, so a restarted actor
    /// needs no state handed back.
    esp: Esp,
    worker: Option<mpsc::Sender<Job>>,
}

type Job = Box<dyn FnOnce(&mut Sealer) + Send>;

impl Tpm {
    /// An actor for `config`, sealing under the PCR authority on `esp` once there is one; it
    /// connects when it starts.
    pub fn new(config: TpmConfig, esp: Esp) -> Self {
        Tpm {
            config,
            esp,
            worker: None,
        }
    }
}

// ---- handlers ----

impl Actor for Tpm {
    fn started(&mut self, ctx: &mut Ctx<'_, Self>) -> Result<Started, Failure> {
        let tcti = match &self.config {
            TpmConfig::InsecureNone => {
                slog::warn!(
                    ctx.log(),
                    "INSECURE: running without a TPM; sealed data is stored in plaintext"
                );
                return Ok(Started::Healthy);
            }
            TpmConfig::Tcti(tcti) => tcti.clone(),
        };
        let (connected_tx, connected) = oneshot::channel();
        let (jobs, queue) = mpsc::channel::<Job>();
        std::thread::Builder::new().name("polis-tpm".into()).spawn(
            move || match Sealer::connect(&tcti) {
                Ok(mut sealer) => {
                    let _ = connected_tx.send(Ok(()));
                    sealer.prepare();
                    // Ends when the actor drops its sender.
                    for job in queue {
                        job(&mut sealer);
                    }
                }
                Err(e) => {
                    let _ = connected_tx.send(Err(e));
                }
            },
        )?;
        self.worker = Some(jobs);
        ctx.spawn(connected, |result, _, ctx| {
            match result {
                Ok(Ok(())) => {
                    slog::info!(ctx.log(), "TPM connected");
                    ctx.healthy();
                }
                Ok(Err(e)) => ctx.fail(e),
                Err(_) => ctx.fail(Failure::msg("the TPM thread ended before connecting")),
            }
            Ok(())
        });
        Ok(Started::Pending)
    }
}

impl Handler<Seal> for Tpm {
    fn handle(
        &mut self,
        Seal(kind, secret): Seal,
        _: &mut Ctx<'_, Self>,
    ) -> Result<Reply<Self, <Seal as Message>::Reply>, Failure> {
        if self.config == TpmConfig::InsecureNone {
            return Ok(Reply::now(Ok(envelope(
                Protection::InsecurePlaintext,
                secret.to_vec(),
            ))));
        }
        let esp = self.esp.clone();
        Ok(self.run(move |s| {
            let authority = match kind {
                SealedKind::EnrolmentJournal => None,
                _ => authority(&esp)?,
            };
            match authority {
                Some(authority) => s
                    .seal_authorized(kind, &secret, &authority)
                    .map(|blob| envelope(Protection::Tpm2Pcr7Authorized, blob)),
                None => s
                    .seal(kind, &secret)
                    .map(|blob| envelope(Protection::Tpm2Pcr7, blob)),
            }
        }))
    }
}

impl Handler<Unseal> for Tpm {
    fn handle(
        &mut self,
        Unseal(kind, env): Unseal,
        _: &mut Ctx<'_, Self>,
    ) -> Result<Reply<Self, <Unseal as Message>::Reply>, Failure> {
        let protection = Protection::try_from(env.protection).ok();
        let refuse = |reason: &str| {
            Ok(Reply::now(Err(TpmError::SealedCorrupted(
                reason.to_owned(),
            ))))
        };
        match (&self.config, protection) {
            (TpmConfig::Tcti(_), Some(Protection::Tpm2Pcr7)) => {
                Ok(self.run(move |s| s.unseal(kind, &env.payload)))
            }
            (TpmConfig::Tcti(_), Some(Protection::Tpm2Pcr7Authorized)) => {
                let esp = self.esp.clone();
                Ok(self.run(move |s| {
                    let authority = authority(&esp)?.ok_or_else(|| {
                        TpmError::BadAuthority(format!(
                            "the data is sealed under the cluster's PCR policy, but there is no PCR authority at {}",
                            esp.pcr_authority_path().display()
                        ))
                    })?;
                    s.unseal_authorized(kind, &env.payload, &authority)
                }))
            }
            (TpmConfig::InsecureNone, Some(Protection::InsecurePlaintext)) => {
                Ok(Reply::now(Ok(Zeroizing::new(env.payload))))
            }
            // Never fall through to plaintext on a node with a TPM, nor pretend to unseal without one.
            (TpmConfig::Tcti(_), _) => refuse("plaintext sealed data on a node with a TPM"),
            (TpmConfig::InsecureNone, _) => {
                refuse("TPM-sealed data on a node running without a TPM")
            }
        }
    }
}

impl Handler<Random> for Tpm {
    fn handle(
        &mut self,
        Random(n): Random,
        _: &mut Ctx<'_, Self>,
    ) -> Result<Reply<Self, <Random as Message>::Reply>, Failure> {
        if self.config == TpmConfig::InsecureNone {
            let mut bytes = vec![0u8; n];
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
                .map_err(|_| Failure::msg("the operating system's random generator failed"))?;
            return Ok(Reply::now(Ok(bytes)));
        }
        Ok(self.run(move |s| s.random(n)))
    }
}

impl Handler<ReadPcr7> for Tpm {
    fn handle(
        &mut self,
        _: ReadPcr7,
        _: &mut Ctx<'_, Self>,
    ) -> Result<Reply<Self, <ReadPcr7 as Message>::Reply>, Failure> {
        Ok(self.run_tpm(|s| s.pcr7()))
    }
}

impl Handler<CreateRecoveryKey> for Tpm {
    fn handle(
        &mut self,
        _: CreateRecoveryKey,
        _: &mut Ctx<'_, Self>,
    ) -> Result<Reply<Self, <CreateRecoveryKey as Message>::Reply>, Failure> {
        Ok(self.run_tpm(|s| s.create_recovery_key()))
    }
}

impl Handler<SignWithRecoveryKey> for Tpm {
    fn handle(
        &mut self,
        SignWithRecoveryKey(key, message): SignWithRecoveryKey,
        _: &mut Ctx<'_, Self>,
    ) -> Result<Reply<Self, <SignWithRecoveryKey as Message>::Reply>, Failure> {
        Ok(self.run_tpm(move |s| s.sign_with_recovery_key(&key, &message)))
    }
}

// ---- helpers ----

impl Tpm {
    /// [`Tpm::run`] `op`, which only a real TPM can do: [`TpmError::NoTpm`] without one.
    fn run_tpm<T: Send + 'static>(
        &self,
        op: impl FnOnce(&mut Sealer) -> Result<T, TpmError> + Send + 'static,
    ) -> Reply<Self, Result<T, TpmError>> {
        match self.config {
            TpmConfig::InsecureNone => Reply::now(Err(TpmError::NoTpm)),
            TpmConfig::Tcti(_) => self.run(op),
        }
    }

    /// Run `op` on the TPM thread; the mailbox waits for it. A stuck or vanished TPM thread
    /// fails the actor.
    fn run<T: Send + 'static>(
        &self,
        op: impl FnOnce(&mut Sealer) -> Result<T, TpmError> + Send + 'static,
    ) -> Reply<Self, Result<T, TpmError>> {
        let (tx, rx) = oneshot::channel();
        let sent = self.worker.as_ref().map(|w| {
            w.send(Box::new(move |sealer: &mut Sealer| {
                let _ = tx.send(op(sealer));
            }))
        });
        Reply::later(async move {
            if !matches!(sent, Some(Ok(()))) {
                return Err(Failure::msg("the TPM thread is gone"));
            }
            match tokio::time::timeout(TPM_TIMEOUT, rx).await {
                Ok(Ok(result)) => Ok(result),
                Ok(Err(_)) => Err(Failure::msg("the TPM thread ended during a command")),
                Err(_) => Err(Failure::msg(format!(
                    "the TPM did not answer within {} s",
                    TPM_TIMEOUT.as_secs()
                ))),
            }
        })
    }
}

/// The PCR authority on `esp`, if there is one.
fn authority(esp: &Esp) -> Result<Option<PcrAuthority>, TpmError> {
    esp.pcr_authority().map_err(|e| TpmError::Esp(Box::new(e)))
}

fn envelope(protection: Protection, payload: Vec<u8>) -> SealedEnvelope {
    SealedEnvelope {
        version: ENVELOPE_VERSION,
        protection: protection as i32,
        payload,
    }
}
