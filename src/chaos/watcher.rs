//! The workload's Watch: one stream held open for the whole soak with a running node's
//! credentials, as that node's own lifecycle holds one, reconnecting to any Curator whenever a
//! fault breaks it. Every event must say that the node is UP: the watched node is never
//! decommissioned, so anything else is a wrong answer.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::lifecycle::connect;
use crate::owner::{CuratorAddress, Owner};
use crate::pki::NodeCredentials;
use crate::proto::common::NodeState;
use crate::proto::curator::curator_client::CuratorClient;
use crate::proto::curator::WatchRequest;
use crate::tls::Identity;

/// What the Watch saw: events, reconnections, and events that did not say UP.
#[derive(Clone, Default)]
pub(super) struct WatchCounts {
    pub events: Arc<AtomicU64>,
    pub reconnects: Arc<AtomicU64>,
    pub wrong: Arc<AtomicU64>,
}

/// Hold a Watch as `credentials`' node until `stop`, learning the Curators' directory from the
/// owner on any of `curators` (`owner` builds that client) before each connection.
pub(super) async fn hold(
    credentials: NodeCredentials,
    curators: Vec<CuratorAddress>,
    owner: impl AsyncFn(&CuratorAddress) -> Option<Owner>,
    stop: Arc<AtomicBool>,
    counts: WatchCounts,
) {
    let identity = || Identity::new(&credentials.key, credentials.certificate.clone());
    let mut n = 0usize;
    while !stop.load(Ordering::SeqCst) && !curators.is_empty() {
        n += 1;
        let held = async {
            let mut owner = owner(&curators[n % curators.len()]).await?;
            let directory = owner.cluster_info().await.ok()?.cluster_directory?;
            let channel = connect(&directory, &credentials.ca, identity).await.ok()?;
            let mut events = CuratorClient::new(channel)
                .watch(WatchRequest {})
                .await
                .ok()?
                .into_inner();
            while let Ok(Some(event)) = events.message().await {
                counts.events.fetch_add(1, Ordering::Relaxed);
                if event.state != NodeState::Up as i32 {
                    counts.wrong.fetch_add(1, Ordering::Relaxed);
                }
            }
            Some(())
        };
        tokio::select! {
            _ = held => {}
            _ = until_stopped(&stop) => return,
        }
        counts.reconnects.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Answers once `stop` is set.
async fn until_stopped(stop: &AtomicBool) {
    while !stop.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
