//! Keys under one prefix: what each actor that keeps state in etcd gets.

use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp, TxnOpResponse};

use crate::consensus::ConsensusError;

/// A client confined to the keys under one prefix.
#[derive(Clone)]
pub struct NamespacedKv {
    client: Client,
    prefix: String,
}

impl NamespacedKv {
    pub(crate) fn new(client: Client, prefix: String) -> Self {
        NamespacedKv { client, prefix }
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// The value at `key`, if any.
    pub async fn get(&mut self, key: &str) -> Result<Option<Vec<u8>>, ConsensusError> {
        let response = self.client.get(self.key(key), None).await?;
        Ok(response.kvs().first().map(|kv| kv.value().to_vec()))
    }

    /// Set `key` to `value`.
    pub async fn put(&mut self, key: &str, value: &[u8]) -> Result<(), ConsensusError> {
        self.client.put(self.key(key), value, None).await?;
        Ok(())
    }

    /// Create `key` with `value` unless it exists, in one transaction; returns the value that is
    /// there now. Two concurrent calls agree on one value.
    pub async fn ensure(&mut self, key: &str, value: &[u8]) -> Result<Vec<u8>, ConsensusError> {
        let full = self.key(key);
        let txn = Txn::new()
            .when([Compare::create_revision(full.as_str(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(full.as_str(), value, None)])
            .or_else([TxnOp::get(full.as_str(), None)]);
        let response = self.client.txn(txn).await?;
        if response.succeeded() {
            return Ok(value.to_vec());
        }
        let existing = response.op_responses().into_iter().find_map(|op| match op {
            TxnOpResponse::Get(get) => get.kvs().first().map(|kv| kv.value().to_vec()),
            _ => None,
        });
        existing.ok_or(ConsensusError::Vanished(full))
    }
}
