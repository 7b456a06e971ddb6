//! The floor Polis's starts are measured against: Debian's etcd alone, with the very command
//! line the consensus actor gives it (same peer TLS, same client socket), timed from spawn to
//! its first answered put, cold and restarted from its data.

use std::time::{Duration, Instant};

use super::BenchError;
use crate::consensus::peer_pki::bootstrap_peer_pki;
use crate::consensus::{connect, etcd_command, Member};
use crate::fsutil::FsError;
use crate::poll::Poll;
use crate::process::ChildProcess;
use crate::storage::NodeRoot;

/// How long a bare etcd gets to answer.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long it gets to stop.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// A bare etcd's two start times.
#[derive(Clone, Copy, Debug)]
pub struct EtcdStarts {
    /// A new single-member cluster: spawn to first put.
    pub cold: Duration,
    /// The same member restarted from its data: spawn to first put.
    pub restart: Duration,
}

/// Start a new single-member etcd below `dir` (emptied first), stop it, restart it, stop it.
pub async fn etcd_starts(
    dir: &std::path::Path,
    log: &slog::Logger,
) -> Result<EtcdStarts, BenchError> {
    let _ = std::fs::remove_dir_all(dir);
    let root = NodeRoot::new(dir);
    let consensus = root.consensus();
    std::fs::create_dir_all(&consensus).map_err(|e| FsError::new("create", &consensus, e))?;
    let member = Member {
        name: "bench".into(),
        advertise_host: "127.0.0.1".into(),
        peer_listen: std::net::SocketAddr::from(([127, 0, 0, 1], free_port(dir)?)),
    };
    bootstrap_peer_pki(&root, &member, crate::issuer::DEFAULT_NODE_LIFETIME)?;
    let cold = timed_start(&root, &member, log).await?;
    crate::consensus::remove_stale_socket(&root)?;
    let restart = timed_start(&root, &member, log).await?;
    Ok(EtcdStarts { cold, restart })
}

/// Spawn etcd, time it to its first answered put, then stop it cleanly.
async fn timed_start(
    root: &NodeRoot,
    member: &Member,
    log: &slog::Logger,
) -> Result<Duration, BenchError> {
    let began = Instant::now();
    let etcd = ChildProcess::spawn(etcd_command(root, member, None), "etcd", log)?;
    let answered = Poll::new(Duration::from_millis(2), READY_TIMEOUT)
        .until(async || {
            let mut client = connect(root).await?;
            client.put("bench", "first", None).await?;
            Ok::<_, crate::consensus::ConsensusError>(())
        })
        .await;
    let took = began.elapsed();
    etcd.terminate(STOP_GRACE).await;
    answered?;
    Ok(took)
}

/// A loopback port free now.
fn free_port(dir: &std::path::Path) -> Result<u16, BenchError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| FsError::new("find a free loopback port for", dir, e).into())
}
