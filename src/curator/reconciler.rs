//! The loop every Curator reconciler runs (decommission, escrow): take an etcd lock so that only
//! one member acts at a time, then make a pass over the node records, again after each change
//! of the records and after a backoff while a pass reports a failure. Passes read the records
//! from a [`NodeMirror`] (one list, then the watch), not from etcd. Level-triggered, so nothing
//! is lost to a failed call or a crash; it ends only by failing (leadership lost, etcd away),
//! and its supervisor starts it again.

use std::convert::Infallible;
use std::time::Duration;

use polis_actors::{ActorRef, Failure};

use crate::consensus::{Consensus, Kv};
use crate::curator::mirror::NodeMirror;
use crate::curator::records::{Records, NAMESPACE};
use crate::curator::CuratorError;
use crate::proto::private::Node;
use crate::retry::Retry;

/// How long a dead leader keeps a reconciler's lock.
const LEASE: Duration = Duration::from_secs(6);

/// One pass of a reconciler over the records.
pub(super) trait Pass {
    /// What the reconciler does, for logs ("retiring decommissioned nodes").
    const WHAT: &'static str;

    /// Bring the records one step closer to what they should be, deciding from `nodes` (every
    /// record as last seen) and writing through `records`; answers the first thing that failed
    /// (what, why), to try again after a backoff, or `None` if all is done.
    async fn pass(
        &self,
        nodes: &[Node],
        records: &mut Records,
    ) -> Result<Option<(String, CuratorError)>, Failure>;
}

/// Lead under the etcd lock `lock`, then run `pass` for good. Returns only a failure.
pub(super) async fn reconcile<P: Pass>(
    consensus: &ActorRef<Consensus>,
    lock: &str,
    log: &slog::Logger,
    pass: &P,
) -> Failure {
    match lead_and_run(consensus, lock, log, pass).await {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

async fn lead_and_run<P: Pass>(
    consensus: &ActorRef<Consensus>,
    lock: &str,
    log: &slog::Logger,
    pass: &P,
) -> Result<Infallible, Failure> {
    let mut records = Records::new(consensus.ask(Kv(NAMESPACE.into())).await??);
    let mut leadership = records.kv().lead(lock, LEASE).await?;
    slog::info!(log, "leading"; "work" => P::WHAT);
    let mut mirror = NodeMirror::open(&mut records).await?;
    let mut retry = Retry::new();
    loop {
        let failure = pass.pass(mirror.nodes(), &mut records).await?;
        // After a failure, try again after a backoff (with what changed meanwhile); else when
        // the records change.
        let next = async {
            match failure {
                Some((what, e)) => {
                    retry.wait(log, &what, &e).await;
                    mirror.catch_up()
                }
                None => {
                    retry.reset();
                    mirror.changed().await
                }
            }
        };
        tokio::select! {
            _ = leadership.lost() => {
                return Err(Failure::msg(format!("lost the lease of the lock {lock}")));
            }
            next = next => next.map_err(|e| Failure::msg(format!("the node records: {e}")))?,
        }
    }
}
