//! The `/cluster` subtree the lifecycle starts once the data partition is up (DESIGN §2):
//! `hostsfile` first, then — once the node is a consensus member — `consensus`, `pki`,
//! `curator`, `decommission` and `escrow`, appended in that order so rest_for_one restarts what depends
//! on a failed child.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use polis_actors::{ActorRef, Backoff, ChildSpec, Strategy, Supervisor, SupervisorSpec, Watchable};

use crate::consensus::{Consensus, ConsensusConfig, Member, Mode, PEER_PORT};
use crate::curator::{Curator, CuratorConfig, Decommissioner, Escrower, Handover, CURATOR_PORT};
use crate::hostsfile::{HostsConfig, Hostsfile};
use crate::issuer::{Issuer, Lifetimes};
use crate::metrics::NodeMetrics;
use crate::network::NetworkStatus;
use crate::proto::common::ClusterDirectory;
use crate::storage::NodeRoot;

/// What the cluster subtree of one node needs.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// The node root.
    pub root: NodeRoot,
    /// This node's ID.
    pub node_id: String,
    /// Its external address: etcd peers and the Curator listen and advertise there.
    pub address: IpAddr,
    /// Set the hostname to the node ID.
    pub set_hostname: bool,
    /// The system hosts file to keep in place, if it is a bind mount.
    pub system_hosts: Option<PathBuf>,
    /// The node's metrics, which the subtree's actors update.
    pub metrics: NodeMetrics,
}

/// The `cluster` supervisor, rest_for_one and empty: the lifecycle adds its children once the
/// data partition is up.
pub fn supervisor() -> (ChildSpec, ActorRef<Supervisor>) {
    let spec = SupervisorSpec::new(Strategy::RestForOne)
        .intensity(10, Duration::from_secs(60))
        .backoff(Backoff {
            base: Duration::from_millis(200),
            cap: Duration::from_secs(10),
            reset_after: Duration::from_secs(60),
        });
    ChildSpec::supervisor("cluster", spec)
}

/// The first child of `cluster`: the hosts file, from the network status and the directory.
pub fn hostsfile(
    config: &ClusterConfig,
    network: Watchable<NetworkStatus>,
    directory: Watchable<ClusterDirectory>,
) -> ChildSpec {
    let hosts = HostsConfig {
        root: config.root.clone(),
        node_id: config.node_id.clone(),
        set_hostname: config.set_hostname,
        system_hosts: config.system_hosts.clone(),
        health: config.metrics.health.clone(),
    };
    ChildSpec::worker("hostsfile", move || {
        Ok(Hostsfile::new(
            hosts.clone(),
            network.clone(),
            directory.clone(),
        ))
    })
    .0
}

/// The children a consensus member adds to `cluster`, to be started in field order, with the
/// references the lifecycle uses.
pub struct MemberChildren {
    /// etcd, started as the mode says the first time.
    pub consensus: ChildSpec,
    /// The issuer.
    pub pki: ChildSpec,
    /// The Curator; it needs the node credentials on disk.
    pub curator: ChildSpec,
    /// The decommission reconciler.
    pub decommission: ChildSpec,
    /// The escrow reconciler (quorum unlock).
    pub escrow: ChildSpec,
    /// The consensus actor, across restarts.
    pub consensus_ref: ActorRef<Consensus>,
    /// The issuer, across restarts.
    pub issuer_ref: ActorRef<Issuer>,
    /// What a bootstrap hands the Curator's first start.
    pub curator_handover: Arc<Mutex<Handover>>,
}

/// The children of a consensus member, its etcd started as `mode` says.
pub fn member_children(
    config: &ClusterConfig,
    mode: Mode,
    lifetimes: Option<Lifetimes>,
) -> MemberChildren {
    let consensus_config = ConsensusConfig {
        root: config.root.clone(),
        member: Member {
            name: config.node_id.clone(),
            advertise_host: config.address.to_string(),
            peer_listen: SocketAddr::new(config.address, PEER_PORT),
        },
        mode,
        health: config.metrics.health.clone(),
    };
    let (consensus, consensus_ref) = ChildSpec::worker("consensus", move || {
        Ok(Consensus::new(consensus_config.clone()))
    });
    // etcd may take long to join a busy cluster; its own ready timeout bounds it.
    let consensus = consensus
        .start_timeout(Some(Duration::from_secs(120)))
        .shutdown(polis_actors::Shutdown::Timeout(Duration::from_secs(15)));
    let issuer_consensus = consensus_ref.clone();
    let (pki, issuer_ref) = ChildSpec::worker("pki", move || {
        Ok(Issuer::new(issuer_consensus.clone(), lifetimes))
    });
    let curator_config = CuratorConfig {
        root: config.root.clone(),
        listen: SocketAddr::new(config.address, CURATOR_PORT),
        metrics: config.metrics.clone(),
        handover: Arc::default(),
    };
    let curator_handover = curator_config.handover.clone();
    let (curator_consensus, curator_issuer) = (consensus_ref.clone(), issuer_ref.clone());
    let (retiring_consensus, retiring_issuer) = (consensus_ref.clone(), issuer_ref.clone());
    let (decommission, _) = ChildSpec::worker("decommission", move || {
        Ok(Decommissioner::new(
            retiring_consensus.clone(),
            retiring_issuer.clone(),
        ))
    });
    let escrow_consensus = consensus_ref.clone();
    let (escrow, _) = ChildSpec::worker("escrow", move || {
        Ok(Escrower::new(escrow_consensus.clone()))
    });
    let (curator, _) = ChildSpec::worker("curator", move || {
        Ok(Curator::new(
            curator_config.clone(),
            curator_consensus.clone(),
            curator_issuer.clone(),
        ))
    });
    MemberChildren {
        consensus,
        pki,
        curator,
        decommission,
        escrow,
        consensus_ref,
        issuer_ref,
        curator_handover,
    }
}
