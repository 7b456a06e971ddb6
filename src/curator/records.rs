//! The Curator's state in etcd: node records under `nodes/<id>`, the join-key index under
//! `join_keys/<hex>`, and the cluster-wide values under `global/`. A record changes only in a
//! transaction guarded by the revision it was read at, so two Curators never overwrite each
//! other's changes; the node state machine itself is the pure functions at the bottom.

use prost::Message;

use crate::consensus::{NamespacedKv, PEER_PORT};
use crate::curator::CuratorError;
use crate::pki::hex;
use crate::proto::common::node_roles::{consensus_member, ConsensusMember, KubernetesWorker};
use crate::proto::common::{
    cluster_directory, Address, ClusterDirectory, NodeRoles, NodeState, NodeStatus,
};
use crate::proto::private::pcr_request::State as PcrState;
use crate::proto::private::{Node, PcrRequest, Retirement};

/// The etcd namespace of the Curator.
pub const NAMESPACE: &str = "/curator/";
const NODES: &str = "nodes/";
const JOIN_KEYS: &str = "join_keys/";
/// The owner key from the bootstrap parameters: the only key that may escrow.
pub const INITIAL_OWNER: &str = "global/initial_owner";
/// The owner certificate, issued at the bootstrap (or by Escrow, in clusters bootstrapped
/// before that) and renewed by Escrow: answered to every Escrow.
pub const OWNER_CERTIFICATE: &str = "global/owner_certificate";
/// The common name of the owner certificate.
pub const OWNER_NAME: &str = "owner";
/// The current register ticket.
pub const REGISTER_TICKET: &str = "global/register_ticket";

/// The Curator's records, over a client confined to [`NAMESPACE`].
#[derive(Clone)]
pub struct Records {
    kv: NamespacedKv,
}

impl Records {
    /// Records kept through `kv`, which must be confined to [`NAMESPACE`].
    pub fn new(kv: NamespacedKv) -> Self {
        Records { kv }
    }

    /// The raw client, for the `global/` values.
    pub fn kv(&mut self) -> &mut NamespacedKv {
        &mut self.kv
    }

    /// The record of node `id`, if there is one.
    pub async fn get(&mut self, id: &str) -> Result<Option<Node>, CuratorError> {
        let key = format!("{NODES}{id}");
        match self.kv.get(&key).await? {
            Some(bytes) => Ok(Some(decode(&key, &bytes)?)),
            None => Ok(None),
        }
    }

    /// A new cluster's first records: `owner`'s key as the initial owner, with the certificate
    /// issued to it, and `first` as the first node ([`first_node`]), each only if absent, so a
    /// repeated bootstrap step changes nothing. Answers them as they stand, or `None`, writing
    /// no node, if etcd already names another initial owner.
    pub async fn bootstrap(
        &mut self,
        owner: &InitialOwner,
        first: Node,
    ) -> Result<Option<Bootstrapped>, CuratorError> {
        // A first bootstrap writes all of it in one transaction, if none of it exists yet; one
        // resumed after a crash finds some of it and goes step by step.
        let key = format!("{NODES}{}", first.id);
        let (record, index) = (first.encode_to_vec(), join_key_index(&first.join_key));
        let mut puts: Vec<(&str, &[u8])> = vec![
            (INITIAL_OWNER, &owner.public_key),
            (OWNER_CERTIFICATE, &owner.certificate),
            (&key, &record),
        ];
        let mut absent: Vec<&str> = vec![OWNER_CERTIFICATE, &key];
        if !first.join_key.is_empty() {
            puts.push((&index, first.id.as_bytes()));
            absent.push(&index);
        }
        if self.kv.swap(INITIAL_OWNER, 0, &absent, &puts, &[]).await? {
            return Ok(Some(Bootstrapped {
                node: first,
                owner_certificate: owner.certificate.clone(),
            }));
        }
        if self.kv.ensure(INITIAL_OWNER, &owner.public_key).await? != owner.public_key {
            return Ok(None);
        }
        let id = first.id.clone();
        let node = self
            .update(&id, |current| Ok(current.is_none().then(|| first.clone())))
            .await?;
        let owner_certificate = self
            .kv
            .ensure(OWNER_CERTIFICATE, &owner.certificate)
            .await?;
        Ok(Some(Bootstrapped {
            node,
            owner_certificate,
        }))
    }

    /// Every record by key, and the store's revision they were read at (for
    /// [`Records::watch_after`]).
    pub async fn list_versioned(&mut self) -> Result<(Vec<(String, Node)>, i64), CuratorError> {
        let (listed, revision) = self.kv.list_versioned(NODES).await?;
        let nodes = listed
            .into_iter()
            .map(|(key, bytes)| {
                let node = decode(&key, &bytes)?;
                Ok((key, node))
            })
            .collect::<Result<Vec<_>, CuratorError>>()?;
        Ok((nodes, revision))
    }

    /// A stream of the changes to node records made after `revision`.
    pub async fn watch_after(
        &mut self,
        revision: i64,
    ) -> Result<etcd_client::WatchStream, CuratorError> {
        Ok(self.kv.watch(NODES, Some(revision + 1)).await?)
    }

    /// Every node record, by ID.
    pub async fn list(&mut self) -> Result<Vec<Node>, CuratorError> {
        Ok(self
            .list_versioned()
            .await?
            .0
            .into_iter()
            .map(|(_, node)| node)
            .collect())
    }

    /// Change node `id`'s existing record by `change`, given every record as it is now (it
    /// answers the record to write, or `None` to leave it); written only if no record changed
    /// in between, else decided again. For decisions that count other nodes, e.g. whether a
    /// consensus member would remain. Answers the record as it stands afterwards.
    pub async fn update_against_all<F>(
        &mut self,
        id: &str,
        mut change: F,
    ) -> Result<Node, CuratorError>
    where
        F: FnMut(&[Node]) -> Result<Option<Node>, CuratorError>,
    {
        let key = format!("{NODES}{id}");
        loop {
            let (listed, revision) = self.kv.list_versioned(NODES).await?;
            let nodes = listed
                .iter()
                .map(|(key, bytes)| decode(key, bytes))
                .collect::<Result<Vec<_>, _>>()?;
            let Some(new) = change(&nodes)? else {
                return existing(nodes.into_iter().find(|n| n.id == id), id);
            };
            let record = new.encode_to_vec();
            if self
                .kv
                .swap_under(NODES, revision, &[(&key, &record)])
                .await?
            {
                return Ok(new);
            }
        }
    }

    /// The record of the node that registered `join_key`, if any: the index names it, and the
    /// record itself must hold the same join key (an index entry is never taken on trust).
    pub async fn by_join_key(&mut self, join_key: &[u8]) -> Result<Option<Node>, CuratorError> {
        let Some(id) = self.kv.get(&join_key_index(join_key)).await? else {
            return Ok(None);
        };
        let node = self.get(&String::from_utf8_lossy(&id)).await?;
        Ok(node.filter(|node| node.join_key == join_key))
    }

    /// Change node `id`'s record by `change` (given the record as it is now, it answers the
    /// record to write, or `None` to leave it), in a transaction; retried if another writer got
    /// there first. Answers the record as it stands afterwards. The join-key index is created
    /// with the record, in the same transaction, and only if no other node holds that join key:
    /// an index entry is never overwritten.
    pub async fn update<F>(&mut self, id: &str, mut change: F) -> Result<Node, CuratorError>
    where
        F: FnMut(Option<&Node>) -> Result<Option<Node>, CuratorError>,
    {
        self.update_alongside(id, async { Ok(()) }, |current, ()| change(current))
            .await
    }

    /// [`Records::update`], with `alongside` (a check, or work whose answer `change` needs) run
    /// while the record is first read, so that a handler spends one etcd round trip less than
    /// doing it before. Nothing is written unless `alongside` succeeds.
    pub async fn update_alongside<T, F>(
        &mut self,
        id: &str,
        alongside: impl std::future::Future<Output = Result<T, CuratorError>>,
        mut change: F,
    ) -> Result<Node, CuratorError>
    where
        F: FnMut(Option<&Node>, &T) -> Result<Option<Node>, CuratorError>,
    {
        let key = format!("{NODES}{id}");
        let first_read = async { Ok::<_, CuratorError>(self.kv.get_versioned(&key).await?) };
        let (done, mut read) = futures::try_join!(alongside, first_read)?;
        loop {
            let (bytes, revision) = read;
            let current = bytes.map(|b| decode(&key, &b)).transpose()?;
            let Some(new) = change(current.as_ref(), &done)? else {
                return existing(current, id);
            };
            let record = new.encode_to_vec();
            let index = join_key_index(&new.join_key);
            let creating = current.is_none() && !new.join_key.is_empty();
            let mut puts: Vec<(&str, &[u8])> = vec![(&key, &record)];
            let mut absent: Vec<&str> = Vec::new();
            if creating {
                puts.push((&index, id.as_bytes()));
                absent.push(&index);
            }
            if self.kv.swap(&key, revision, &absent, &puts, &[]).await? {
                return Ok(new);
            }
            if creating {
                if let Some(holder) = self.kv.get(&index).await? {
                    if holder != id.as_bytes() {
                        return Err(CuratorError::JoinKeyInUse(hex(&new.join_key)));
                    }
                }
            }
            read = self.kv.get_versioned(&key).await?;
        }
    }
}

fn join_key_index(join_key: &[u8]) -> String {
    format!("{JOIN_KEYS}{}", hex(join_key))
}

/// A node record from its stored bytes, or an error naming its key.
pub(crate) fn decode(key: &str, bytes: &[u8]) -> Result<Node, CuratorError> {
    Node::decode(bytes).map_err(|source| CuratorError::CorruptRecord {
        key: format!("{NAMESPACE}{key}"),
        source,
    })
}

/// The cluster directory: every node that is UP and has said where it is, by ID, those with the
/// consensus role marked as Curators, with the cluster CA's current `crl` (empty if none yet).
pub fn directory(nodes: &[Node], crl: Vec<u8>) -> ClusterDirectory {
    let mut listed: Vec<cluster_directory::Node> = nodes
        .iter()
        .filter(|n| n.fsm_state == NodeState::Up as i32)
        .filter_map(|n| {
            let host = n.status.as_ref()?.external_address.clone();
            (!host.is_empty()).then(|| cluster_directory::Node {
                id: n.id.clone(),
                addresses: vec![Address { host }],
                curator: is_consensus_member(n),
            })
        })
        .collect();
    listed.sort_by(|a, b| a.id.cmp(&b.id));
    ClusterDirectory { nodes: listed, crl }
}

// ---- the node state machine: NEW → STANDBY → UP, and DECOMMISSIONED ----

/// What a registering node says of itself.
#[derive(Clone, Copy, Debug)]
pub struct Registration<'a> {
    /// Its node public key.
    pub public_key: &'a [u8],
    /// Its join public key.
    pub join_key: &'a [u8],
    /// Where it can be reached.
    pub address: &'a str,
    /// Its TPM recovery key (empty without a TPM).
    pub recovery_key: &'a [u8],
    /// Its PCR 7 value, which CommitNode approves (empty without a TPM).
    pub pcr7: &'a [u8],
}

/// RegisterNode: a new record in NEW; repeating it with the same join key changes nothing.
pub fn register(
    current: Option<&Node>,
    id: &str,
    new: Registration<'_>,
) -> Result<Option<Node>, CuratorError> {
    let join_key = new.join_key;
    match current {
        None => Ok(Some(Node {
            public_key: new.public_key.to_vec(),
            fsm_state: NodeState::New as i32,
            join_key: join_key.to_vec(),
            id: id.to_owned(),
            status: Some(status(new.address)),
            recovery_key: new.recovery_key.to_vec(),
            pcr7: new.pcr7.to_vec(),
            ..Node::default()
        })),
        Some(node) if node.fsm_state == NodeState::Decommissioned as i32 => {
            Err(CuratorError::Decommissioned(id.to_owned()))
        }
        Some(node) if node.join_key == join_key => Ok(None),
        Some(_) => Err(CuratorError::JoinKeyMismatch(id.to_owned())),
    }
}

/// Node `id`'s record, if there is one, else `UnknownNode` naming it: the one way every call
/// that needs a record says it is missing.
pub fn existing<T>(record: Option<T>, id: &str) -> Result<T, CuratorError> {
    record.ok_or_else(|| CuratorError::UnknownNode(id.to_owned()))
}

/// ApproveNode: NEW becomes STANDBY; a node approved already stays as it is.
pub fn approve(current: Option<&Node>, id: &str) -> Result<Option<Node>, CuratorError> {
    let node = existing(current, id)?;
    match NodeState::try_from(node.fsm_state) {
        Ok(NodeState::New) => Ok(Some(Node {
            fsm_state: NodeState::Standby as i32,
            ..node.clone()
        })),
        Ok(NodeState::Standby | NodeState::Up) => Ok(None),
        _ => Err(CuratorError::WrongState {
            id: id.to_owned(),
            state: state_name(node.fsm_state),
            wanted: "NEW",
        }),
    }
}

/// CommitNode: STANDBY becomes UP with its CUK and certificate. A node UP already stays as it
/// is, if the CUK is the one it committed (the caller then answers the stored certificate).
pub fn commit(
    current: Option<&Node>,
    id: &str,
    cuk: &[u8],
    certificate: &[u8],
) -> Result<Option<Node>, CuratorError> {
    use subtle::ConstantTimeEq;
    let node = existing(current, id)?;
    match NodeState::try_from(node.fsm_state) {
        // The caller read the record before it was approved and brought no certificate.
        Ok(NodeState::Standby) if certificate.is_empty() => {
            Err(CuratorError::ApprovedMeanwhile(id.to_owned()))
        }
        Ok(NodeState::Standby) => Ok(Some(Node {
            fsm_state: NodeState::Up as i32,
            cluster_unlock_key: cuk.to_vec(),
            node_certificate: certificate.to_vec(),
            ..node.clone()
        })),
        Ok(NodeState::Up) if bool::from(node.cluster_unlock_key.ct_eq(cuk)) => Ok(None),
        Ok(NodeState::Up) => Err(CuratorError::CukMismatch(id.to_owned())),
        Ok(NodeState::New) => Err(CuratorError::NotApproved(id.to_owned())),
        _ => Err(CuratorError::WrongState {
            id: id.to_owned(),
            state: state_name(node.fsm_state),
            wanted: "STANDBY",
        }),
    }
}

/// DecommissionNode, given every record: the node may never join again, and the reconciler is
/// to retire it. The last UP consensus member may not go (the cluster would lose etcd).
pub fn decommission(nodes: &[Node], id: &str) -> Result<Option<Node>, CuratorError> {
    let node = existing(nodes.iter().find(|n| n.id == id), id)?;
    if node.fsm_state == NodeState::Decommissioned as i32 {
        return Ok(None);
    }
    if is_consensus_member(node) && !other_consensus_member(nodes, id) {
        return Err(CuratorError::LastConsensusMember(id.to_owned()));
    }
    Ok(Some(Node {
        fsm_state: NodeState::Decommissioned as i32,
        retirement: Some(Retirement::default()),
        ..node.clone()
    }))
}

/// RequestPcrApproval, signature checked: node `id` asks for `request.pcr7`. Only an UP node
/// asks (a decommissioned one is refused). The value approved last needs no request; a new value
/// replaces an older request, undecided or refused; the same value again changes nothing (a
/// refused one stays refused).
pub fn request_pcr(
    current: Option<&Node>,
    id: &str,
    request: PcrRequest,
) -> Result<Option<Node>, CuratorError> {
    let node = existing(current, id)?;
    match NodeState::try_from(node.fsm_state) {
        Ok(NodeState::Up) => {}
        Ok(NodeState::Decommissioned) => return Err(CuratorError::Decommissioned(id.to_owned())),
        _ => {
            return Err(CuratorError::WrongState {
                id: id.to_owned(),
                state: state_name(node.fsm_state),
                wanted: "UP",
            })
        }
    }
    let asked_before = node
        .pcr_request
        .as_ref()
        .is_some_and(|r| r.pcr7 == request.pcr7);
    if node.pcr7 == request.pcr7 || asked_before {
        return Ok(None);
    }
    Ok(Some(Node {
        pcr_request: Some(PcrRequest {
            state: PcrState::Pending as i32,
            ..request
        }),
        ..node.clone()
    }))
}

/// DecidePcrRequest: the owner approves (it becomes the node's approved value) or refuses
/// node `id`'s request for `pcr7`, which must be the value it asks for now.
pub fn decide_pcr(
    current: Option<&Node>,
    id: &str,
    pcr7: &[u8],
    approve: bool,
) -> Result<Option<Node>, CuratorError> {
    let node = existing(current, id)?;
    if node.fsm_state == NodeState::Decommissioned as i32 {
        return Err(CuratorError::Decommissioned(id.to_owned()));
    }
    let Some(request) = node.pcr_request.as_ref().filter(|r| r.pcr7 == pcr7) else {
        return Err(CuratorError::NoPcrRequest {
            id: id.to_owned(),
            pcr7: hex(pcr7),
        });
    };
    Ok(Some(match approve {
        true => Node {
            pcr7: pcr7.to_vec(),
            pcr_request: None,
            ..node.clone()
        },
        false => Node {
            pcr_request: Some(PcrRequest {
                state: PcrState::Refused as i32,
                ..request.clone()
            }),
            ..node.clone()
        },
    }))
}

/// Whether node `node` is decommissioned and not yet fully retired.
pub fn awaits_retirement(node: &Node) -> bool {
    node.fsm_state == NodeState::Decommissioned as i32
        && !node.retirement.as_ref().is_some_and(|r| r.done)
}

/// Whether a node other than `id` is an UP consensus member (the cluster keeps etcd without
/// `id`).
fn other_consensus_member(nodes: &[Node], id: &str) -> bool {
    nodes
        .iter()
        .any(|n| n.id != id && n.fsm_state == NodeState::Up as i32 && is_consensus_member(n))
}

/// Whether `node`'s record gives it the consensus role (and so the Curator).
pub fn is_consensus_member(node: &Node) -> bool {
    consensus_role(node).is_some()
}

/// The consensus role `node`'s record gives it, if any.
pub fn consensus_role(node: &Node) -> Option<&ConsensusMember> {
    node.roles.as_ref()?.consensus_member.as_ref()
}

/// `node` must be UP for what is asked of it (a role change).
pub fn require_up(node: &Node) -> Result<(), CuratorError> {
    if node.fsm_state == NodeState::Up as i32 {
        return Ok(());
    }
    Err(CuratorError::WrongState {
        id: node.id.clone(),
        state: state_name(node.fsm_state),
        wanted: "UP",
    })
}

/// The cluster's owner as its bootstrap records it.
#[derive(Clone, Debug)]
pub struct InitialOwner {
    /// The owner key from the bootstrap parameters.
    pub public_key: Vec<u8>,
    /// A certificate issued to that key at the bootstrap, so that the owner's first Escrow
    /// hands it over without an issue and a write of its own.
    pub certificate: Vec<u8>,
}

/// A new cluster's first records as they stand ([`Records::bootstrap`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Bootstrapped {
    /// The first node's record.
    pub node: Node,
    /// The owner certificate stored: an earlier try's, if a resumed bootstrap found one.
    pub owner_certificate: Vec<u8>,
}

/// What bootstrap knows of the cluster's first node.
#[derive(Clone, Debug)]
pub struct FirstNode {
    /// Its node ID.
    pub id: String,
    /// Its node public key.
    pub public_key: Vec<u8>,
    /// Its join public key.
    pub join_key: Vec<u8>,
    /// Its cluster unlock key.
    pub cluster_unlock_key: Vec<u8>,
    /// The node certificate the issuer gave it.
    pub node_certificate: Vec<u8>,
    /// Its external address.
    pub address: String,
    /// The etcd peer CA's certificate.
    pub peer_ca_certificate: Vec<u8>,
    /// Its TPM recovery key (empty without a TPM).
    pub recovery_key: Vec<u8>,
    /// The PCR 7 value it enrolled with (empty without a TPM).
    pub pcr7: Vec<u8>,
    /// Its etcd peer certificate.
    pub peer_certificate: Vec<u8>,
    /// Its Curator certificate, issued with its node certificate so that its Curator starts on
    /// a read (empty: the Curator has one issued as it starts).
    pub curator_certificate: Vec<u8>,
}

/// The first node's record: UP, a consensus member whose only peer is itself, and a Kubernetes
/// worker.
pub fn first_node(first: FirstNode) -> Node {
    Node {
        public_key: first.public_key,
        cluster_unlock_key: first.cluster_unlock_key,
        fsm_state: NodeState::Up as i32,
        roles: Some(NodeRoles {
            consensus_member: Some(ConsensusMember {
                ca_certificate: first.peer_ca_certificate,
                peer_certificate: first.peer_certificate,
                peers: vec![consensus_member::Peer {
                    name: first.id.clone(),
                    port: PEER_PORT.into(),
                    host: first.address.clone(),
                }],
                ..ConsensusMember::default()
            }),
            kubernetes_worker: Some(KubernetesWorker {}),
        }),
        join_key: first.join_key,
        id: first.id,
        node_certificate: first.node_certificate,
        status: Some(status(&first.address)),
        curator_certificate: first.curator_certificate,
        retirement: None,
        escrow: None,
        recovery_key: first.recovery_key,
        pcr7: first.pcr7,
        pcr_request: None,
    }
}

/// A node's reported status at `address`.
pub fn status(address: &str) -> NodeStatus {
    NodeStatus {
        external_address: address.to_owned(),
        healthy: true,
        ..NodeStatus::default()
    }
}

/// The state's name as the API spells it.
pub fn state_name(state: i32) -> &'static str {
    match NodeState::try_from(state) {
        Ok(NodeState::New) => "NEW",
        Ok(NodeState::Standby) => "STANDBY",
        Ok(NodeState::Up) => "UP",
        Ok(NodeState::Decommissioned) => "DECOMMISSIONED",
        _ => "INVALID",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::common::NodeRoles;

    /// Node "n" registering with join key `[join_key; 32]`.
    fn registration(join_key: &[u8; 32]) -> Registration<'_> {
        Registration {
            public_key: &[1; 32],
            join_key,
            address: "198.18.0.2",
            recovery_key: b"recovery",
            pcr7: &[7; 32],
        }
    }

    fn registered() -> Node {
        register(None, "n", registration(&[2; 32]))
            .unwrap()
            .unwrap()
    }

    fn up() -> Node {
        Node {
            fsm_state: NodeState::Up as i32,
            ..registered()
        }
    }

    fn asking(pcr7: u8) -> PcrRequest {
        PcrRequest {
            pcr7: vec![pcr7; 32],
            requested_at: 1,
            ..PcrRequest::default()
        }
    }

    #[test]
    fn a_pcr_request_waits_for_the_owner_who_approves_or_refuses_the_value_shown() {
        let node = up();
        assert_eq!(node.recovery_key, b"recovery");
        assert!(
            request_pcr(Some(&node), "n", asking(7)).unwrap().is_none(),
            "the approved value needs no request"
        );
        let pending = request_pcr(Some(&node), "n", asking(8)).unwrap().unwrap();
        let request = pending.pcr_request.clone().unwrap();
        assert_eq!(request.state, PcrState::Pending as i32);
        assert!(request_pcr(Some(&pending), "n", asking(8))
            .unwrap()
            .is_none());
        assert!(matches!(
            decide_pcr(Some(&pending), "n", &[9; 32], true),
            Err(CuratorError::NoPcrRequest { .. })
        ));
        let approved = decide_pcr(Some(&pending), "n", &[8; 32], true)
            .unwrap()
            .unwrap();
        assert_eq!(approved.pcr7, vec![8; 32]);
        assert!(approved.pcr_request.is_none());

        let refused = decide_pcr(Some(&pending), "n", &[8; 32], false)
            .unwrap()
            .unwrap();
        assert_eq!(refused.pcr7, vec![7; 32]);
        assert_eq!(
            refused.pcr_request.as_ref().unwrap().state,
            PcrState::Refused as i32
        );
        assert!(
            request_pcr(Some(&refused), "n", asking(8))
                .unwrap()
                .is_none(),
            "a refused value stays refused"
        );
        let again = request_pcr(Some(&refused), "n", asking(9))
            .unwrap()
            .unwrap();
        assert_eq!(
            again.pcr_request.unwrap().state,
            PcrState::Pending as i32,
            "another value is a new request"
        );
    }

    #[test]
    fn only_an_up_node_may_ask_for_a_pcr_value() {
        let gone = decommission(&[up()], "n").unwrap().unwrap();
        assert!(matches!(
            request_pcr(Some(&gone), "n", asking(8)),
            Err(CuratorError::Decommissioned(_))
        ));
        assert!(matches!(
            request_pcr(Some(&registered()), "n", asking(8)),
            Err(CuratorError::WrongState { .. })
        ));
        assert!(matches!(
            request_pcr(None, "n", asking(8)),
            Err(CuratorError::UnknownNode(_))
        ));
    }

    #[test]
    fn a_node_goes_new_standby_up_and_repeated_calls_change_nothing() {
        let node = registered();
        assert_eq!(node.fsm_state, NodeState::New as i32);
        assert!(register(Some(&node), "n", registration(&[2; 32]))
            .unwrap()
            .is_none());
        assert!(matches!(
            commit(Some(&node), "n", &[3; 32], b"cert"),
            Err(CuratorError::NotApproved(_))
        ));
        let node = approve(Some(&node), "n").unwrap().unwrap();
        assert_eq!(node.fsm_state, NodeState::Standby as i32);
        assert!(approve(Some(&node), "n").unwrap().is_none());
        assert!(
            matches!(
                commit(Some(&node), "n", &[3; 32], b""),
                Err(CuratorError::ApprovedMeanwhile(_))
            ),
            "a node never becomes UP without a certificate"
        );
        let node = commit(Some(&node), "n", &[3; 32], b"cert")
            .unwrap()
            .unwrap();
        assert_eq!(node.fsm_state, NodeState::Up as i32);
        assert_eq!(node.node_certificate, b"cert");
        assert!(commit(Some(&node), "n", &[3; 32], b"other")
            .unwrap()
            .is_none());
        assert!(matches!(
            commit(Some(&node), "n", &[4; 32], b"other"),
            Err(CuratorError::CukMismatch(_))
        ));
    }

    #[test]
    fn a_decommissioned_node_cannot_register_again_and_another_join_key_is_refused() {
        let node = registered();
        assert!(matches!(
            register(Some(&node), "n", registration(&[9; 32])),
            Err(CuratorError::JoinKeyMismatch(_))
        ));
        let gone = decommission(std::slice::from_ref(&node), "n")
            .unwrap()
            .unwrap();
        assert!(matches!(
            register(Some(&gone), "n", registration(&[2; 32])),
            Err(CuratorError::Decommissioned(_))
        ));
        assert!(matches!(
            approve(Some(&gone), "n"),
            Err(CuratorError::WrongState { .. })
        ));
        assert!(matches!(
            approve(None, "m"),
            Err(CuratorError::UnknownNode(_))
        ));
    }

    #[test]
    fn the_directory_lists_up_nodes_with_addresses_only() {
        let new = registered();
        let up = Node {
            id: "a".into(),
            fsm_state: NodeState::Up as i32,
            status: Some(status("198.18.0.3")),
            ..Node::default()
        };
        let silent = Node {
            id: "b".into(),
            fsm_state: NodeState::Up as i32,
            ..Node::default()
        };
        let member = Node {
            id: "c".into(),
            roles: Some(NodeRoles {
                consensus_member: Some(ConsensusMember::default()),
                kubernetes_worker: None,
            }),
            status: Some(status("198.18.0.4")),
            ..up.clone()
        };
        let dir = directory(&[new, silent, member, up], vec![7]);
        assert_eq!(dir.nodes.len(), 2);
        assert_eq!(dir.nodes[0].id, "a");
        assert_eq!(dir.nodes[0].addresses[0].host, "198.18.0.3");
        assert!(
            !dir.nodes[0].curator,
            "a worker is not dialled as a Curator"
        );
        assert_eq!(dir.nodes[1].id, "c");
        assert!(dir.nodes[1].curator);
        assert_eq!(dir.crl, vec![7]);
    }
}
