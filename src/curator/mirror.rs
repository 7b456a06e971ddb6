//! A Curator's copy in memory of every node record: listed once at a revision, then kept by
//! etcd's watch from the next revision on, each batch of events applied in order. The
//! reconcilers and every open Watch decide from it instead of listing all records again on
//! every change (a registration changes its record three times, so listing made a
//! registration's cost grow with the number of nodes). Writes still go through
//! [`Records::update`]'s compare-and-swap, so a decision made on a copy a change behind is
//! refused by etcd, not written. The records are lent, never copied: a copy of every record
//! for every reader on every change was most of a registration's cost in the Curator.

use etcd_client::{EventType, WatchStream};
use futures::FutureExt;

use crate::consensus::{ConsensusError, NamespacedKv};
use crate::curator::records::{self, Records};
use crate::curator::CuratorError;
use crate::proto::private::Node;

/// The node records as of the last batch of changes applied.
pub struct NodeMirror {
    /// The records' keys (relative to the Curator's namespace), sorted.
    keys: Vec<String>,
    /// The record at each key of `keys`, at the same index.
    nodes: Vec<Node>,
    changes: WatchStream,
    /// The namespace, to name keys as the list did.
    kv: NamespacedKv,
}

impl NodeMirror {
    /// List every record, then watch for changes after the revision of that list (none is
    /// missed between the two).
    pub async fn open(records: &mut Records) -> Result<Self, CuratorError> {
        let (listed, revision) = records.list_versioned().await?;
        let changes = records.watch_after(revision).await?;
        let mut mirror = NodeMirror {
            keys: Vec::with_capacity(listed.len()),
            nodes: Vec::with_capacity(listed.len()),
            changes,
            kv: records.kv().clone(),
        };
        for (key, node) in listed {
            mirror.put(key, node);
        }
        Ok(mirror)
    }

    /// Every record, in key (so ID) order.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Wait for the next change, then apply it and every change already waiting behind it (a
    /// burst is applied at once). Cancel-safe: nothing is taken from the watch before the wait
    /// ends, and what is taken is applied without waiting again. A record that does not decode
    /// fails it, naming the key; so does the end of the watch (e.g. etcd compacted past it):
    /// open a new mirror then.
    pub async fn changed(&mut self) -> Result<(), CuratorError> {
        let first = self.changes.message().await;
        self.apply(first)?;
        self.catch_up()
    }

    /// Apply the changes already waiting, without waiting for more.
    pub fn catch_up(&mut self) -> Result<(), CuratorError> {
        while let Some(next) = self.changes.message().now_or_never() {
            self.apply(next)?;
        }
        Ok(())
    }

    /// Apply one answer of the watch.
    fn apply(
        &mut self,
        answer: Result<Option<etcd_client::WatchResponse>, etcd_client::Error>,
    ) -> Result<(), CuratorError> {
        let closed = || ConsensusError::WatchClosed("the node records".into());
        let response = answer.map_err(ConsensusError::from)?.ok_or_else(closed)?;
        if response.canceled() {
            return Err(closed().into());
        }
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            let key = self.kv.relative(kv.key());
            match event.event_type() {
                EventType::Put => {
                    let node = records::decode(&key, kv.value())?;
                    self.put(key, node);
                }
                EventType::Delete => {
                    if let Ok(at) = self.keys.binary_search(&key) {
                        self.keys.remove(at);
                        self.nodes.remove(at);
                    }
                }
            }
        }
        Ok(())
    }

    /// Set the record at `key`, in its place.
    fn put(&mut self, key: String, node: Node) {
        match self.keys.binary_search(&key) {
            Ok(at) => self.nodes[at] = node,
            Err(at) => {
                self.keys.insert(at, key);
                self.nodes.insert(at, node);
            }
        }
    }
}
