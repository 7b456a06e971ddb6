//! P5: how fast the Curator registers nodes, against the etcd work a registration needs issued
//! straight to the same member. A synthetic node (fresh node and join keys) calls RegisterNode
//! over TLS with an ephemeral identity, the owner approves it, and it calls CommitNode for its
//! certificate; the floor makes the same reads and transactions on keys of its own: the ticket
//! read, then the record created with its join-key index, approved and committed, each a read
//! and a compare-and-swap, and the issued certificate recorded. The floor issues its requests
//! back to back, a registration's come between TLS and gRPC steps: a paced put and get against
//! the same straight after shows how much slower etcd answers requests that come spaced.

use std::time::{Duration, Instant};

use super::BenchError;
use crate::consensus::NamespacedKv;
use crate::launch::LocalCluster;
use crate::lifecycle::connect;
use crate::owner::Owner;
use crate::pki::generate_key;
use crate::proto::common::ClusterDirectory;
use crate::proto::curator::curator_client::CuratorClient;
use crate::proto::curator::{CommitNodeRequest, RegisterNodeRequest};
use crate::tls::Identity;

/// Registrations (and floor iterations) per batch; batches alternate between the two.
pub const PER_BATCH: usize = 20;
/// What synthetic nodes say their address is: nothing ever dials it.
const SYNTHETIC_ADDRESS: &str = "198.18.0.254";
/// The floor's record: about a node record's size (keys, address, certificate).
const RECORD_BYTES: usize = 600;
/// How long etcd is left idle before a paced sample ([`Throughput::paced`]): about the time a
/// registration's TLS and gRPC steps leave between its etcd requests.
const IDLE_PAUSE: Duration = Duration::from_millis(1);

/// Per batch, registrations per second through the Curator and the floor's iterations per
/// second; and every registration's latency.
#[derive(Clone, Debug, Default)]
pub struct Throughput {
    /// Polis's rate per batch.
    pub polis: Vec<f64>,
    /// The floor's rate per batch, paired with Polis's.
    pub floor: Vec<f64>,
    /// Every registration's latency, seconds.
    pub latencies: Vec<f64>,
    /// Per step of a registration ([`STEPS`]), every registration's time in it, seconds.
    pub steps: [Vec<f64>; 4],
    /// Per call of [`CALLS`], the Curator's mean time handling it, seconds.
    pub inside: Vec<f64>,
    /// A put and a get issued after etcd was idle for [`IDLE_PAUSE`], as a registration's
    /// requests come, seconds; one per floor iteration.
    pub paced: Vec<f64>,
    /// The same straight after, as the floor issues its requests, seconds; paired with `paced`.
    pub back_to_back: Vec<f64>,
}

/// The Curator calls a registration makes, as its gRPC metrics label them (service, method).
pub const CALLS: [(&str, &str); 3] = [
    ("polis.curator.Curator", "RegisterNode"),
    ("polis.api.Management", "ApproveNode"),
    ("polis.curator.Curator", "CommitNode"),
];

/// The steps of a registration, as the report names them.
pub const STEPS: [&str; 4] = [
    "TLS connection of a new node",
    "RegisterNode",
    "ApproveNode (owner)",
    "CommitNode",
];

/// Run `batches` pairs of batches against node 0 of `cluster`, which `owner` owns.
pub async fn registrations(
    cluster: &LocalCluster,
    owner: &Owner,
    batches: usize,
    progress: &impl Fn(&str),
) -> Result<Throughput, BenchError> {
    let mut owner = owner.clone();
    let info = owner.cluster_info().await?;
    let caller = Caller {
        directory: info.cluster_directory.unwrap_or_default(),
        ca: info.ca_certificate,
        ticket: owner.ticket().await?,
    };
    let client = crate::consensus::connect(&cluster.nodes[0].root).await?;
    let mut kv = NamespacedKv::new(client, "/bench/".to_owned());
    let mut out = Throughput::default();
    let mut iteration = 0u64;
    for batch in 0..batches {
        let polis_first = batch % 2 == 0;
        let mut floor_rate = 0.0;
        if !polis_first {
            floor_rate = floor_batch(&mut kv, &mut iteration).await?;
        }
        let began = Instant::now();
        for _ in 0..PER_BATCH {
            let steps = caller.register_one(&mut owner).await?;
            out.latencies
                .push(steps.iter().sum::<Duration>().as_secs_f64());
            for (all, took) in out.steps.iter_mut().zip(steps) {
                all.push(took.as_secs_f64());
            }
        }
        let rate = PER_BATCH as f64 / began.elapsed().as_secs_f64();
        out.polis.push(rate);
        if polis_first {
            floor_rate = floor_batch(&mut kv, &mut iteration).await?;
        }
        out.floor.push(floor_rate);
        for _ in 0..PER_BATCH {
            tokio::time::sleep(IDLE_PAUSE).await;
            out.paced.push(put_and_get(&mut kv).await?);
            out.back_to_back.push(put_and_get(&mut kv).await?);
        }
        progress(&format!(
            "P5 batch {}/{batches}: {rate:.1} registrations/s, etcd floor {floor_rate:.1}/s",
            batch + 1
        ));
    }
    Ok(out)
}

/// What a synthetic node needs to register.
struct Caller {
    directory: ClusterDirectory,
    ca: Vec<u8>,
    ticket: Vec<u8>,
}

impl Caller {
    /// One node registered, approved and committed; answers how long each of [`STEPS`] took.
    async fn register_one(&self, owner: &mut Owner) -> Result<[Duration; 4], BenchError> {
        let node = generate_key()?;
        let join = generate_key()?;
        let mut lap = Lap(Instant::now());
        let channel = connect(&self.directory, &self.ca, || Identity::ephemeral(&node)).await?;
        let connected = lap.next();
        let mut curator = CuratorClient::new(channel);
        let refused = |call| move |status: tonic::Status| BenchError::Refused { call, status };
        curator
            .register_node(RegisterNodeRequest {
                register_ticket: self.ticket.clone(),
                join_key: join.verifying_key().to_bytes().to_vec(),
                external_address: SYNTHETIC_ADDRESS.to_owned(),
                ..Default::default()
            })
            .await
            .map_err(refused("RegisterNode"))?;
        let registered = lap.next();
        owner.approve(&node.verifying_key().to_bytes()).await?;
        let approved = lap.next();
        curator
            .commit_node(CommitNodeRequest {
                cluster_unlock_key: vec![0x5a; 32],
            })
            .await
            .map_err(refused("CommitNode"))?;
        Ok([connected, registered, approved, lap.next()])
    }
}

/// [`PER_BATCH`] floor iterations; answers their rate per second.
async fn floor_batch(kv: &mut NamespacedKv, iteration: &mut u64) -> Result<f64, BenchError> {
    let record = vec![0xa5; RECORD_BYTES];
    let began = Instant::now();
    for _ in 0..PER_BATCH {
        *iteration += 1;
        let (key, index) = (format!("nodes/{iteration}"), format!("join/{iteration}"));
        kv.get("ticket").await?;
        let (_, revision) = kv.get_versioned(&key).await?;
        kv.swap(
            &key,
            revision,
            &[&index],
            &[(&key, &record), (&index, b"id")],
            &[],
        )
        .await?;
        // Approved, then committed: the record read once more, the certificate issued and
        // recorded, then the swap.
        kv.get(&key).await?;
        kv.put(&format!("issued/{iteration}"), &record).await?;
        for _ in 0..2 {
            let (_, revision) = kv.get_versioned(&key).await?;
            kv.swap(&key, revision, &[], &[(&key, &record)], &[])
                .await?;
        }
    }
    Ok(PER_BATCH as f64 / began.elapsed().as_secs_f64())
}

/// How long a put and a get of one key take, seconds.
async fn put_and_get(kv: &mut NamespacedKv) -> Result<f64, BenchError> {
    let began = Instant::now();
    kv.put("paced", b"x").await?;
    kv.get("paced").await?;
    Ok(began.elapsed().as_secs_f64())
}

/// A stopwatch read lap by lap.
struct Lap(Instant);

impl Lap {
    /// The time since the last lap (or the start).
    fn next(&mut self) -> Duration {
        let now = Instant::now();
        let took = now.saturating_duration_since(self.0);
        self.0 = now;
        took
    }
}
