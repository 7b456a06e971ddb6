//! The invariants a soak checks after every fault: nothing lost, nothing half done, everything
//! back. [`check`] answers the first one that does not hold, in words an operator can act on.

use std::collections::{BTreeMap, BTreeSet};

use crate::consensus::connect;
use crate::launch::LocalCluster;
use crate::owner::Owner;
use crate::pki::{revoked_serials, serial_of, verify_node_certificate, NodeCredentials};
use crate::proto::api::Node;
use crate::proto::common::NodeState;

/// What every node runs once its lifecycle has joined the cluster (a node just booted reports
/// a healthy tree before that: its lifecycle is still at work).
pub const NODE_ACTORS: [&str; 2] = ["/lifecycle", "/cluster/hostsfile"];

/// What a consensus member runs in `/cluster` besides.
pub const MEMBER_ACTORS: [&str; 3] = ["/cluster/consensus", "/cluster/pki", "/cluster/curator"];

/// What the cluster must look like: every record with its state, the certificates of
/// decommissioned nodes (their roots are wiped), and which slots run.
#[derive(Clone, Debug, Default)]
pub struct Expected {
    /// Every node's record: its state.
    pub records: BTreeMap<String, i32>,
    /// The certificate (DER) of each decommissioned node, which must be revoked.
    pub retired: BTreeMap<String, Vec<u8>>,
    /// The slots whose node should run.
    pub running: BTreeSet<usize>,
}

/// Check every invariant once; answers the first that does not hold.
pub async fn check(cluster: &LocalCluster, expected: &Expected) -> Result<(), String> {
    let slots = expected.running.iter().copied();
    let (mut owner, nodes) = curator(cluster, slots, crate::grpc::CALL_DEADLINE).await?;
    records(&nodes, expected)?;
    let info = owner
        .cluster_info()
        .await
        .map_err(|e| format!("GetClusterInfo: {e}"))?;
    let crl = info
        .cluster_directory
        .as_ref()
        .map(|d| d.crl.clone())
        .unwrap_or_default();
    let revoked = match crl.is_empty() {
        true => Vec::new(),
        false => revoked_serials(&crl).map_err(|e| format!("the cluster's CRL: {e}"))?,
    };
    certificates(cluster, expected, &info.ca_certificate, &revoked)?;
    let members = consensus_members(&nodes);
    etcd_membership(cluster, expected, &members).await?;
    for &slot in &expected.running {
        let member = cluster.nodes[slot]
            .id()
            .is_some_and(|id| members.contains(&id));
        tree(cluster, slot, member)?;
    }
    Ok(())
}

/// The owner's client on the first of `slots` whose Curator answers GetNodes within `attempt`,
/// and the nodes it lists.
pub async fn curator(
    cluster: &LocalCluster,
    slots: impl IntoIterator<Item = usize>,
    attempt: std::time::Duration,
) -> Result<(Owner, Vec<Node>), String> {
    let mut last = String::from("no node runs");
    for slot in slots {
        let call = async {
            let owner = cluster.owner(slot).await.map_err(|e| e.to_string())?;
            let nodes = owner.clone().nodes().await.map_err(|e| e.to_string())?;
            Ok::<_, String>((owner, nodes))
        };
        match tokio::time::timeout(attempt, call).await {
            Ok(Ok(answer)) => return Ok(answer),
            Ok(Err(e)) => last = format!("node {slot}: {e}"),
            Err(_) => last = format!("node {slot}: no answer within {attempt:?}"),
        }
    }
    Err(format!("no Curator answers GetNodes (last: {last})"))
}

/// Every expected record is there in its state, and no other.
fn records(nodes: &[Node], expected: &Expected) -> Result<(), String> {
    let found: BTreeMap<&str, i32> = nodes.iter().map(|n| (n.id.as_str(), n.state)).collect();
    for (id, state) in &expected.records {
        match found.get(id.as_str()) {
            None => return Err(format!("the record of {id} is gone")),
            Some(got) if got != state => {
                return Err(format!(
                    "{id} is {}, expected {}",
                    state_name(*got),
                    state_name(*state)
                ))
            }
            Some(_) => {}
        }
    }
    match found.keys().find(|id| !expected.records.contains_key(**id)) {
        Some(id) => Err(format!("a record no one made: {id}")),
        None => Ok(()),
    }
}

/// Every running node's certificate verifies against the CA, for its own key, and is not
/// revoked; every decommissioned node's is revoked.
fn certificates(
    cluster: &LocalCluster,
    expected: &Expected,
    ca: &[u8],
    revoked: &[Vec<u8>],
) -> Result<(), String> {
    for &slot in &expected.running {
        let root = &cluster.nodes[slot].root;
        let credentials = match NodeCredentials::load(root) {
            Ok(Some(credentials)) => credentials,
            Ok(None) => return Err(format!("node {slot} has no credentials")),
            Err(e) => return Err(format!("node {slot}: {e}")),
        };
        verify_node_certificate(
            ca,
            &credentials.certificate,
            &credentials.key.verifying_key(),
        )
        .map_err(|e| format!("node {slot}'s certificate: {e}"))?;
        let serial = serial_of(&credentials.certificate).map_err(|e| e.to_string())?;
        if revoked.contains(&serial) {
            return Err(format!("node {slot}'s certificate is revoked"));
        }
    }
    for (id, certificate) in &expected.retired {
        let serial = serial_of(certificate).map_err(|e| e.to_string())?;
        if !revoked.contains(&serial) {
            return Err(format!("decommissioned {id}'s certificate is not revoked"));
        }
    }
    Ok(())
}

/// The IDs of UP nodes with the consensus role.
fn consensus_members(nodes: &[Node]) -> BTreeSet<String> {
    nodes
        .iter()
        .filter(|n| n.state == NodeState::Up as i32)
        .filter(|n| {
            n.roles
                .as_ref()
                .is_some_and(|r| r.consensus_member.is_some())
        })
        .map(|n| n.id.clone())
        .collect()
}

/// etcd's members, as a running member's etcd lists them, are exactly the consensus members,
/// all voters.
async fn etcd_membership(
    cluster: &LocalCluster,
    expected: &Expected,
    members: &BTreeSet<String>,
) -> Result<(), String> {
    let slot = expected
        .running
        .iter()
        .find(|&&s| {
            cluster.nodes[s]
                .id()
                .is_some_and(|id| members.contains(&id))
        })
        .ok_or("no consensus member runs")?;
    let mut client = connect(&cluster.nodes[*slot].root)
        .await
        .map_err(|e| format!("node {slot}'s etcd: {e}"))?;
    let list = client
        .member_list()
        .await
        .map_err(|e| format!("node {slot}'s etcd member list: {e}"))?;
    let names: BTreeSet<String> = list.members().iter().map(|m| m.name().to_owned()).collect();
    if &names != members {
        return Err(format!(
            "etcd members {names:?} are not the consensus members {members:?}"
        ));
    }
    match list.members().iter().find(|m| m.is_learner()) {
        Some(m) => Err(format!("{} is still an etcd learner", m.name())),
        None => Ok(()),
    }
}

/// Node `slot`'s tree is whole and healthy: every actor healthy (or stopped by design), the
/// lifecycle has joined, and a consensus member runs the member's actors.
fn tree(cluster: &LocalCluster, slot: usize, member: bool) -> Result<(), String> {
    let tree = actors(cluster, slot)?;
    let state = |path: &str| {
        tree.iter()
            .find(|a| a["path"] == path)
            .and_then(|a| a["state"].as_str())
            .unwrap_or("absent")
            .to_owned()
    };
    if let Some(sick) = tree
        .iter()
        .find(|a| !matches!(a["state"].as_str(), Some("healthy" | "stopped")))
    {
        return Err(format!(
            "node {slot}: {} is {}",
            sick["path"], sick["state"]
        ));
    }
    let member_actors = member.then_some(MEMBER_ACTORS).into_iter().flatten();
    let required = NODE_ACTORS.into_iter().chain(member_actors);
    for path in required {
        if state(path) != "healthy" {
            return Err(format!("node {slot}: {path} is {}", state(path)));
        }
    }
    Ok(())
}

/// Node `slot`'s actors as its debug endpoint lists them (path, state, generation, …): what the
/// checks, the fault draw and the fault's confirmation all read.
pub(super) fn actors(
    cluster: &LocalCluster,
    slot: usize,
) -> Result<Vec<serde_json::Value>, String> {
    let body = cluster
        .debug(slot, "GET", "/debug/tree", "")
        .map_err(|e| format!("node {slot}'s debug endpoint: {e}"))?;
    serde_json::from_str(&body).map_err(|e| format!("node {slot}'s tree: {e}"))
}

fn state_name(state: i32) -> String {
    NodeState::try_from(state)
        .map(|s| s.as_str_name().to_owned())
        .unwrap_or_else(|_| format!("state {state}"))
}
