//! The TPM actor: the only owner of the TPM. Its connection lives on a dedicated thread (TPM
//! calls block), requests are serialized through the mailbox, and each has a timeout, so a stuck
//! TPM fails the actor (and its supervisor restarts it) instead of freezing the tree.

use std::sync::mpsc;
use std::time::Duration;

use polis_actors::{Actor, Ctx, Failure, Handler, Message, Reply, Started};
use tokio::sync::oneshot;
use zeroize::Zeroizing;

use crate::proto::private::sealed_envelope::Protection;
use crate::proto::private::SealedEnvelope;
use crate::tpm::{SealedKind, Sealer, TpmError};

/// How long one TPM command may take before the TPM counts as stuck.
const TPM_TIMEOUT: Duration = Duration::from_secs(30);

/// The envelope version this code writes and reads: it lives with the code that makes
/// envelopes; the ESP only checks it when decoding.
pub const ENVELOPE_VERSION: u32 = 1;

// ---- messages ----

/// Seal a secret into a versioned envelope for the ESP. The secret is wiped once sealed.
pub struct Seal(pub SealedKind, pub Zeroizing<Vec<u8>>);
impl Message for Seal {
    type Reply = Result<SealedEnvelope, TpmError>;
}

/// Unseal an envelope from [`Seal`]. The answer is wiped when dropped.
pub struct Unseal(pub SealedKind, pub SealedEnvelope);
impl Message for Unseal {
    type Reply = Result<Zeroizing<Vec<u8>>, TpmError>;
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
    worker: Option<mpsc::Sender<Job>>,
}

type Job = Box<dyn FnOnce(&mut Sealer) + Send>;

impl Tpm {
    /// An actor for `config`; it connects when it starts.
    pub fn new(config: TpmConfig) -> Self {
        Tpm {
            config,
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
        Ok(self.run(move |s| {
            s.seal(kind, &secret)
                .map(|blob| envelope(Protection::Tpm2Pcr7, blob))
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

// ---- helpers ----

impl Tpm {
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

fn envelope(protection: Protection, payload: Vec<u8>) -> SealedEnvelope {
    SealedEnvelope {
        version: ENVELOPE_VERSION,
        protection: protection as i32,
        payload,
    }
}
