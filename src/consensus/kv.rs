//! Keys under one prefix: what each actor that keeps state in etcd gets.

use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp, TxnOpResponse};

use crate::consensus::ConsensusError;

/// A client confined to the keys under one prefix.
#[derive(Clone)]
pub struct NamespacedKv {
    client: Client,
    prefix: String,
    /// Whether an ensure reads first ([`NamespacedKv::expecting_absent`]).
    read_first: bool,
}

impl NamespacedKv {
    pub(crate) fn new(client: Client, prefix: String) -> Self {
        NamespacedKv {
            client,
            prefix,
            read_first: true,
        }
    }

    /// This client, for a caller that expects what it ensures to be absent (a new cluster's
    /// bootstrap): its ensures go straight to the transaction, where a read first would be a
    /// round trip for nothing. What they answer is the same.
    pub fn expecting_absent(mut self) -> Self {
        self.read_first = false;
        self
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// A key as etcd names it (in a watch event), relative to this namespace.
    pub fn relative(&self, full: &[u8]) -> String {
        let full = String::from_utf8_lossy(full);
        full.strip_prefix(self.prefix.as_str())
            .unwrap_or(&full)
            .to_owned()
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

    /// Delete `key` (nothing if it is absent).
    pub async fn delete(&mut self, key: &str) -> Result<(), ConsensusError> {
        self.client.delete(self.key(key), None).await?;
        Ok(())
    }

    /// Create `key` with `value` unless it exists, in one transaction; returns the value that is
    /// there now. Two concurrent calls agree on one value.
    pub async fn ensure(&mut self, key: &str, value: &[u8]) -> Result<Vec<u8>, ConsensusError> {
        let mut values = self.ensure_all(&[(key, value)]).await?;
        values
            .pop()
            .ok_or_else(|| ConsensusError::Vanished(self.key(key)))
    }

    /// Create all `entries` unless the first key exists, in one transaction; returns the values
    /// that are there now, in order. The first key guards the group: of two concurrent calls,
    /// exactly one writes, and both return its values. They are read first (unless
    /// [`NamespacedKv::expecting_absent`]): on every start but the first they exist, and a read
    /// takes no raft round and no disk sync.
    pub async fn ensure_all(
        &mut self,
        entries: &[(&str, &[u8])],
    ) -> Result<Vec<Vec<u8>>, ConsensusError> {
        self.ensure_all_with(entries, &[]).await
    }

    /// [`NamespacedKv::ensure_all`], writing `companions` too in the transaction that creates
    /// `entries` (and never otherwise; they are not read back): what must exist from the moment
    /// the group does, such as a new CA's first CRL, at no round trip of its own.
    pub async fn ensure_all_with(
        &mut self,
        entries: &[(&str, &[u8])],
        companions: &[(&str, &[u8])],
    ) -> Result<Vec<Vec<u8>>, ConsensusError> {
        let keys: Vec<String> = entries.iter().map(|(k, _)| self.key(k)).collect();
        let Some(guard) = keys.first() else {
            return Ok(Vec::new());
        };
        let gets: Vec<TxnOp> = keys.iter().map(|k| TxnOp::get(k.as_str(), None)).collect();
        if self.read_first {
            let read = self.client.txn(Txn::new().and_then(gets.clone())).await?;
            if let Some(found) = values_of(read).into_iter().collect::<Option<Vec<_>>>() {
                return Ok(found);
            }
        }
        let puts: Vec<TxnOp> = keys
            .iter()
            .zip(entries)
            .map(|(k, (_, v))| TxnOp::put(k.as_str(), *v, None))
            .chain(
                companions
                    .iter()
                    .map(|(k, v)| TxnOp::put(self.key(k), *v, None)),
            )
            .collect();
        let txn = Txn::new()
            .when([Compare::create_revision(
                guard.as_str(),
                CompareOp::Equal,
                0,
            )])
            .and_then(puts)
            .or_else(gets);
        let response = self.client.txn(txn).await?;
        if response.succeeded() {
            return Ok(entries.iter().map(|(_, v)| v.to_vec()).collect());
        }
        let found = values_of(response);
        keys.into_iter()
            .zip(found.into_iter().chain(std::iter::repeat(None)))
            .map(|(k, v)| v.ok_or(ConsensusError::Vanished(k)))
            .collect()
    }

    /// The value at `key` with its modification revision (0 and no value if absent), for a later
    /// [`NamespacedKv::swap`].
    pub async fn get_versioned(
        &mut self,
        key: &str,
    ) -> Result<(Option<Vec<u8>>, i64), ConsensusError> {
        let response = self.client.get(self.key(key), None).await?;
        Ok(match response.kvs().first() {
            Some(kv) => (Some(kv.value().to_vec()), kv.mod_revision()),
            None => (None, 0),
        })
    }

    /// Write all `puts` and delete every key of `deletes` in one transaction if `guard` is still
    /// at `revision` (0: still absent) and every key in `absent` is still absent. Returns whether
    /// it wrote; `false` means one of those conditions no longer held.
    pub async fn swap(
        &mut self,
        guard: &str,
        revision: i64,
        absent: &[&str],
        puts: &[(&str, &[u8])],
        deletes: &[&str],
    ) -> Result<bool, ConsensusError> {
        let guard = self.key(guard);
        let mut compare = vec![match revision {
            0 => Compare::create_revision(guard.as_str(), CompareOp::Equal, 0),
            r => Compare::mod_revision(guard.as_str(), CompareOp::Equal, r),
        }];
        compare.extend(
            absent
                .iter()
                .map(|k| Compare::create_revision(self.key(k), CompareOp::Equal, 0)),
        );
        let mut ops = self.put_ops(puts);
        ops.extend(deletes.iter().map(|k| TxnOp::delete(self.key(k), None)));
        let response = self
            .client
            .txn(Txn::new().when(compare).and_then(ops))
            .await?;
        Ok(response.succeeded())
    }

    /// A stream of the changes under `prefix`, from revision `from` if given, else from now.
    pub async fn watch(
        &mut self,
        prefix: &str,
        from: Option<i64>,
    ) -> Result<etcd_client::WatchStream, ConsensusError> {
        let mut options = etcd_client::WatchOptions::new().with_prefix();
        if let Some(revision) = from {
            options = options.with_start_revision(revision);
        }
        let stream = self.client.watch(self.key(prefix), Some(options)).await?;
        Ok(stream)
    }

    /// Hand `apply` the value at `key` now (if there is one) and after every change, until the
    /// watch breaks or `apply` fails; answers why it stopped. The watch starts before the first
    /// read, so no change between the two is missed. Deletions are not applied.
    pub async fn follow<E: From<ConsensusError>>(
        &mut self,
        key: &str,
        mut apply: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> E {
        let full = self.key(key);
        let mut stream = match self.client.watch(full.as_str(), None).await {
            Ok(stream) => stream,
            Err(e) => return ConsensusError::from(e).into(),
        };
        match self.get(key).await {
            Ok(Some(value)) => {
                if let Err(e) = apply(&value) {
                    return e;
                }
            }
            Ok(None) => {}
            Err(e) => return e.into(),
        }
        loop {
            let response = match stream.message().await {
                Ok(Some(response)) => response,
                Ok(None) => return ConsensusError::WatchClosed(full).into(),
                Err(e) => return ConsensusError::from(e).into(),
            };
            for event in response.events() {
                if let Some(kv) = event.kv().filter(|kv| !kv.value().is_empty()) {
                    if let Err(e) = apply(kv.value()) {
                        return e;
                    }
                }
            }
        }
    }

    /// Keys under `prefix` (relative to this namespace) with their values.
    pub async fn list(&mut self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, ConsensusError> {
        Ok(self.list_versioned(prefix).await?.0)
    }

    /// Keys under `prefix` with their values, and the store's revision they were read at, for a
    /// later [`NamespacedKv::swap_under`].
    pub async fn list_versioned(
        &mut self,
        prefix: &str,
    ) -> Result<(Vec<(String, Vec<u8>)>, i64), ConsensusError> {
        let full = self.key(prefix);
        let response = self
            .client
            .get(
                full.as_str(),
                Some(etcd_client::GetOptions::new().with_prefix()),
            )
            .await?;
        let revision = response.header().map_or(0, |h| h.revision());
        let listed = response
            .kvs()
            .iter()
            .map(|kv| {
                let key = String::from_utf8_lossy(kv.key()).into_owned();
                (key[self.prefix.len()..].to_owned(), kv.value().to_vec())
            })
            .collect();
        Ok((listed, revision))
    }

    /// Write all `puts` in one transaction if no key under `prefix` was created or changed after
    /// `revision` (from [`NamespacedKv::list_versioned`]): a decision that read the whole prefix
    /// holds when it is written. Returns whether it wrote.
    pub async fn swap_under(
        &mut self,
        prefix: &str,
        revision: i64,
        puts: &[(&str, &[u8])],
    ) -> Result<bool, ConsensusError> {
        let guard =
            Compare::mod_revision(self.key(prefix), CompareOp::Less, revision + 1).with_prefix();
        let ops = self.put_ops(puts);
        let response = self
            .client
            .txn(Txn::new().when(vec![guard]).and_then(ops))
            .await?;
        Ok(response.succeeded())
    }

    /// One put per `(key, value)` of `puts`, for a transaction.
    fn put_ops(&self, puts: &[(&str, &[u8])]) -> Vec<TxnOp> {
        puts.iter()
            .map(|(k, v)| TxnOp::put(self.key(k), *v, None))
            .collect()
    }

    /// Become the one holder of the lock `name` (under this namespace), waiting while another
    /// holds it. The lock rides on a lease of `ttl` that the answered [`Leadership`] keeps
    /// alive: if this process dies or loses etcd, the lease expires and the next waiter leads.
    pub async fn lead(&mut self, name: &str, ttl: Duration) -> Result<Leadership, ConsensusError> {
        let seconds = ttl.as_secs().max(2) as i64;
        let lease = self.client.lease_grant(seconds, None).await?.id();
        let (mut keeper, mut answers) = self.client.lease_keep_alive(lease).await?;
        let keep_alive = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(seconds as u64 * 1000 / 3));
            loop {
                tick.tick().await;
                if keeper.keep_alive().await.is_err() {
                    return;
                }
                match answers.message().await {
                    Ok(Some(answer)) if answer.ttl() > 0 => {}
                    _ => return,
                }
            }
        });
        // Held from here, not only once the lock is: a caller dropped while it waits (its actor
        // crashed) must stop renewing the lease too, or its waiting key outlives it and takes
        // the lock for good once the key before it goes (a dropped JoinHandle does not abort).
        let leadership = Leadership { keep_alive };
        let options = etcd_client::LockOptions::new().with_lease(lease);
        self.client.lock(self.key(name), Some(options)).await?;
        Ok(leadership)
    }
}

/// A held lock (see [`NamespacedKv::lead`]). Dropping it stops renewing the lease, so the lock
/// passes on within the lease's time to live.
pub struct Leadership {
    keep_alive: tokio::task::JoinHandle<()>,
}

impl Leadership {
    /// Resolves when the lease could no longer be renewed: leadership is, or will soon be, lost.
    pub async fn lost(&mut self) {
        let _ = (&mut self.keep_alive).await;
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        self.keep_alive.abort();
    }
}

/// The values a transaction's gets found, in order (`None` where a key is absent).
fn values_of(response: etcd_client::TxnResponse) -> Vec<Option<Vec<u8>>> {
    response
        .op_responses()
        .into_iter()
        .map(|op| match op {
            TxnOpResponse::Get(get) => get.kvs().first().map(|kv| kv.value().to_vec()),
            _ => None,
        })
        .collect()
}
