//! Mailbox metrics per actor path, kept across restarts: queue depth (now and max), messages
//! enqueued and handled, time in mailbox and handling time, starts and restarts by reason,
//! generation, state and the last failure. Exported as Prometheus text and as snapshots.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry as PromRegistry;

use crate::{lock, ActorPath, ExitReason, Exposition};

/// Where an actor is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ActorState {
    /// Started, not yet healthy.
    Starting,
    /// Healthy and serving.
    Healthy,
    /// Asked to stop, winding down.
    Stopping,
    /// Failed; its supervisor will start it again after the backoff.
    Restarting,
    /// Stopped normally and not running.
    Stopped,
    /// Failed and not restarted (yet, or ever).
    Failed,
}

impl ActorState {
    const ALL: [ActorState; 6] = [
        ActorState::Starting,
        ActorState::Healthy,
        ActorState::Stopping,
        ActorState::Restarting,
        ActorState::Stopped,
        ActorState::Failed,
    ];

    fn name(self) -> &'static str {
        match self {
            ActorState::Starting => "starting",
            ActorState::Healthy => "healthy",
            ActorState::Stopping => "stopping",
            ActorState::Restarting => "restarting",
            ActorState::Stopped => "stopped",
            ActorState::Failed => "failed",
        }
    }
}

/// What is kept of an abnormal exit, like an Erlang crash report.
#[derive(Clone, Debug, serde::Serialize)]
pub struct FailureReport {
    /// Why the incarnation ended.
    pub reason: ExitReason,
    /// Which incarnation it was.
    pub generation: u64,
    /// When, in milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
    /// The actor's last log lines before it ended.
    pub last_logs: Vec<String>,
}

/// A point-in-time copy of one actor's metrics, for tests and `/debug/tree`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ActorSnapshot {
    /// The actor's path.
    pub path: ActorPath,
    /// Its state now.
    pub state: ActorState,
    /// The current (or last) incarnation's number; 0 before the first start.
    pub generation: u64,
    /// How many times it was started.
    pub starts: u64,
    /// Restarts by the exit reason that caused them (only reasons that happened).
    pub restarts: BTreeMap<&'static str, u64>,
    /// Messages waiting now.
    pub queue_depth: i64,
    /// The most messages ever waiting at once.
    pub queue_depth_max: i64,
    /// Messages accepted into the mailbox.
    pub enqueued: u64,
    /// Messages whose handling finished (answered or failed).
    pub handled: u64,
    /// Messages taken out of the mailbox to be handled.
    pub taken: u64,
    /// Messages dropped unhandled because their incarnation ended.
    pub dropped: u64,
    /// The last abnormal exit.
    pub last_failure: Option<FailureReport>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub(crate) struct PathLabel {
    path: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    path: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    path: String,
    state: String,
}

/// Upper bounds of the latency buckets in nanoseconds: 1 µs to ~16.8 s in factors of four.
const LATENCY_BOUNDS_NS: [u64; 13] = {
    let mut bounds = [0u64; 13];
    let mut i = 0;
    while i < bounds.len() {
        bounds[i] = 1_000 * 4u64.pow(i as u32);
        i += 1;
    }
    bounds
};

/// One message in this many (the first, then every `TIMED_EVERY`th) is timed for the latency
/// histograms: a clock read costs about as much as the rest of a message's bookkeeping, and three
/// per message were a tenth of a ping-pong's time (issue 12). Counts stay exact. The clock is
/// `std`'s: quanta's cheaper reads cost a calibration at the first one, 0.6 ms (up to 200 ms on a
/// busy machine) of every node start's first message (issue 12); one message in 16 instead of 8
/// keeps the ping-pong within 1 % of quanta's.
pub(crate) const TIMED_EVERY: u64 = 16;

/// A count that only the actor's own incarnations write, and any thread reads.
///
/// Every incarnation of an actor runs on its supervisor's thread (`actix_rt::spawn` is
/// thread-local), so there is one writer and an add needs no locked read-modify-write: a load and
/// a store. A locked add costs about a hundredth of a message's round trip here (issue 12).
#[derive(Debug, Default)]
struct OwnCount(AtomicU64);

impl OwnCount {
    /// Add `n`; only from the actor's thread. The store releases what the actor did before it.
    #[inline]
    fn add(&self, n: u64) {
        let now = self.0.load(Ordering::Relaxed);
        self.0.store(now.wrapping_add(n), Ordering::Release);
    }

    #[inline]
    fn get(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }
}

/// A lock-free latency histogram, observed only by the actor it describes (so its counts are
/// [`OwnCount`]s): every timed message observes two.
#[derive(Clone, Debug, Default)]
pub(crate) struct LatencyHistogram(Arc<LatencyCounts>);

#[derive(Debug, Default)]
struct LatencyCounts {
    /// Per bucket, not cumulative; the last one is +Inf.
    buckets: [OwnCount; LATENCY_BOUNDS_NS.len() + 1],
    count: OwnCount,
    sum_ns: OwnCount,
}

impl LatencyHistogram {
    /// Count one observation; only from the actor's own thread.
    pub(crate) fn observe(&self, took: Duration) {
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let i = LATENCY_BOUNDS_NS
            .iter()
            .position(|bound| ns <= *bound)
            .unwrap_or(LATENCY_BOUNDS_NS.len());
        self.0.buckets[i].add(1);
        self.0.count.add(1);
        self.0.sum_ns.add(ns);
    }
}

impl TypedMetric for LatencyHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for LatencyHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), fmt::Error> {
        let counts = &self.0;
        let bounds = LATENCY_BOUNDS_NS
            .iter()
            .map(|ns| *ns as f64 / 1e9)
            .chain([f64::MAX]);
        let buckets: Vec<(f64, u64)> = bounds
            .zip(&counts.buckets)
            .map(|(bound, n)| (bound, n.get()))
            .collect();
        let sum = counts.sum_ns.get() as f64 / 1e9;
        let count = counts.count.get();
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

type HistogramFamily = Family<PathLabel, LatencyHistogram>;

/// The metric families of a whole tree, registered once with a Prometheus registry.
pub(crate) struct Families {
    /// Behind a lock so that the node can add its own families beside the actors'.
    registry: Mutex<PromRegistry>,
    mailboxes: Arc<Mailboxes>,
    mailbox_wait: HistogramFamily,
    handling: HistogramFamily,
    starts: Family<PathLabel, Counter>,
    restarts: Family<ReasonLabel, Counter>,
    generation: Family<PathLabel, Gauge>,
    state: Family<StateLabel, Gauge>,
    last_failure: Family<PathLabel, Gauge>,
}

impl Families {
    pub(crate) fn new() -> Self {
        let mut root = PromRegistry::default();
        let registry = root.sub_registry_with_prefix("polis_actor");
        let f = Families {
            mailboxes: Arc::default(),
            mailbox_wait: Family::default(),
            handling: Family::default(),
            starts: Family::default(),
            restarts: Family::default(),
            generation: Family::default(),
            state: Family::default(),
            last_failure: Family::default(),
            registry: Mutex::new(PromRegistry::default()),
        };
        registry.register_collector(Box::new(f.mailboxes.clone()));
        registry.register(
            "mailbox_wait_seconds",
            "Time from send to the start of handling (one message in 8 is timed)",
            f.mailbox_wait.clone(),
        );
        registry.register(
            "handling_seconds",
            "Time from the start of handling to the reply (one message in 8 is timed)",
            f.handling.clone(),
        );
        registry.register("starts", "Incarnations started", f.starts.clone());
        registry.register("restarts", "Restarts by exit reason", f.restarts.clone());
        registry.register(
            "generation",
            "Current incarnation number",
            f.generation.clone(),
        );
        registry.register("state", "1 for the actor's current state", f.state.clone());
        registry.register(
            "last_failure_timestamp_seconds",
            "Unix time of the last abnormal exit",
            f.last_failure.clone(),
        );
        Families {
            registry: Mutex::new(root),
            ..f
        }
    }

    /// Add families of the node's own (each registers under its full name, unprefixed).
    pub(crate) fn extend(&self, register: impl FnOnce(&mut PromRegistry)) {
        register(&mut lock(&self.registry));
    }

    /// The metrics of one path; calling it again for the same path shares the same series.
    pub(crate) fn for_actor(&self, path: &ActorPath) -> ActorMetrics {
        let label = PathLabel {
            path: path.to_string(),
        };
        let restarts = ExitReason::KINDS.map(|reason| {
            self.restarts.get_or_create_owned(&ReasonLabel {
                path: label.path.clone(),
                reason: reason.to_owned(),
            })
        });
        let states = ActorState::ALL.map(|s| {
            self.state.get_or_create_owned(&StateLabel {
                path: label.path.clone(),
                state: s.name().to_owned(),
            })
        });
        let metrics = ActorMetrics {
            mailbox: self.mailboxes.for_path(&label),
            mailbox_wait: self.mailbox_wait.get_or_create_owned(&label),
            handling: self.handling.get_or_create_owned(&label),
            starts: self.starts.get_or_create_owned(&label),
            generation: self.generation.get_or_create_owned(&label),
            last_failure_ts: self.last_failure.get_or_create_owned(&label),
            restarts,
            states,
            state: AtomicU8::new(ActorState::Stopped as u8),
            last_failure: Mutex::new(None),
        };
        metrics.set_state(ActorState::Stopped);
        metrics
    }

    /// All families, in `format`.
    pub(crate) fn encode(&self, format: Exposition) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &lock(&self.registry));
        format.render(out)
    }
}

/// One actor's metrics. Shared between the actor's incarnations, its address and its supervisor.
pub(crate) struct ActorMetrics {
    mailbox: Arc<MailboxCounts>,
    mailbox_wait: LatencyHistogram,
    handling: LatencyHistogram,
    starts: Counter,
    generation: Gauge,
    last_failure_ts: Gauge,
    restarts: [Counter; ExitReason::KINDS.len()],
    states: [Gauge; 6],
    state: AtomicU8,
    last_failure: Mutex<Option<FailureReport>>,
}

impl ActorMetrics {
    /// A message entered the mailbox; answers whether it is one of those timed (see
    /// [`TIMED_EVERY`]).
    #[inline]
    pub(crate) fn enqueued(&self) -> bool {
        let before = self.mailbox.enqueued.fetch_add(1, Ordering::Relaxed);
        self.mailbox.raise_depth_max(before + 1);
        before.is_multiple_of(TIMED_EVERY)
    }

    /// A message left the mailbox to be handled (on the actor's thread); a timed one after
    /// waiting `waited`.
    #[inline]
    pub(crate) fn dequeued(&self, waited: Option<Duration>) {
        self.mailbox.taken.add(1);
        if let Some(waited) = waited {
            self.mailbox_wait.observe(waited);
        }
    }

    /// An incarnation has ended: every message not taken was dropped unhandled. Called with no
    /// message in flight to the actor (see [`crate::ActorRef`]'s unbind).
    pub(crate) fn settle_dropped(&self) {
        let enqueued = self.mailbox.enqueued.load(Ordering::Relaxed);
        let dropped = enqueued.saturating_sub(self.mailbox.taken.get());
        self.mailbox.dropped.store(dropped, Ordering::Release);
    }

    /// A message's handling finished (on the actor's thread); a timed one's after `took`.
    #[inline]
    pub(crate) fn handled(&self, took: Option<Duration>) {
        self.mailbox.handled.add(1);
        if let Some(took) = took {
            self.handling.observe(took);
        }
    }

    /// An incarnation numbered `generation` is starting.
    pub(crate) fn starting(&self, generation: u64) {
        self.starts.inc();
        self.generation.set(generation as i64);
        self.set_state(ActorState::Starting);
    }

    /// Its supervisor restarts it after `reason`.
    pub(crate) fn restarting(&self, reason: &ExitReason) {
        let i = ExitReason::KINDS
            .iter()
            .position(|k| *k == reason.kind())
            .unwrap_or(0);
        self.restarts[i].inc();
        self.set_state(ActorState::Restarting);
    }

    /// An incarnation ended abnormally.
    pub(crate) fn failed(&self, report: FailureReport) {
        self.last_failure_ts.set((report.at_unix_ms / 1000) as i64);
        *lock(&self.last_failure) = Some(report);
        self.set_state(ActorState::Failed);
    }

    pub(crate) fn set_state(&self, state: ActorState) {
        self.state.store(state as u8, Ordering::Relaxed);
        for (s, gauge) in ActorState::ALL.iter().zip(&self.states) {
            gauge.set(i64::from(*s == state));
        }
    }

    pub(crate) fn state(&self) -> ActorState {
        let n = self.state.load(Ordering::Relaxed);
        ActorState::ALL
            .into_iter()
            .find(|s| *s as u8 == n)
            .unwrap_or(ActorState::Failed)
    }

    pub(crate) fn snapshot(&self, path: &ActorPath) -> ActorSnapshot {
        let restarts = ExitReason::KINDS
            .iter()
            .zip(&self.restarts)
            .filter(|(_, c)| c.get() > 0)
            .map(|(k, c)| (*k, c.get()))
            .collect();
        ActorSnapshot {
            path: path.clone(),
            state: self.state(),
            generation: self.generation.get() as u64,
            starts: self.starts.get(),
            restarts,
            queue_depth: self.mailbox.depth() as i64,
            queue_depth_max: self.mailbox.depth_max.load(Ordering::Relaxed) as i64,
            enqueued: self.mailbox.enqueued.load(Ordering::Relaxed),
            handled: self.mailbox.handled.get(),
            taken: self.mailbox.taken.get(),
            dropped: self.mailbox.dropped.load(Ordering::Relaxed),
            last_failure: lock(&self.last_failure).clone(),
        }
    }
}

/// One actor's mailbox counts. A message costs one locked atomic add, as it enters the mailbox
/// (senders are on any thread); the actor counts the rest on its own thread. The depth is derived
/// from the counts when read, not kept as a gauge of its own (that was three more locked adds a
/// message, issue 12).
#[derive(Debug, Default)]
struct MailboxCounts {
    enqueued: AtomicU64,
    taken: OwnCount,
    /// Settled when an incarnation ends: all it never took.
    dropped: AtomicU64,
    handled: OwnCount,
    depth_max: AtomicU64,
}

impl MailboxCounts {
    /// Messages waiting now. The counts of those gone are read first (acquiring what the
    /// enqueueing of each published), so a reader racing the actor never sees more gone than came.
    fn depth(&self) -> u64 {
        let gone = self.taken.get() + self.dropped.load(Ordering::Acquire);
        self.enqueued.load(Ordering::Relaxed).saturating_sub(gone)
    }

    /// Raise the maximum depth for a mailbox that has now received `enqueued` messages. Exact when
    /// the actor and its senders share a thread; across threads it may count a message taken in
    /// the same instant as still waiting.
    #[inline]
    fn raise_depth_max(&self, enqueued: u64) {
        let gone = self.taken.get() + self.dropped.load(Ordering::Relaxed);
        let depth = enqueued.saturating_sub(gone);
        // A plain load first: the maximum rarely moves, and `fetch_max` always writes.
        if depth > self.depth_max.load(Ordering::Relaxed) {
            self.depth_max.fetch_max(depth, Ordering::Relaxed);
        }
    }
}

/// Every actor's [`MailboxCounts`], encoded when scraped: the depth gauge exists only there.
#[derive(Debug, Default)]
struct Mailboxes(Mutex<BTreeMap<PathLabel, Arc<MailboxCounts>>>);

impl Mailboxes {
    /// The counts of `path`; the same ones for every incarnation.
    fn for_path(&self, path: &PathLabel) -> Arc<MailboxCounts> {
        lock(&self.0).entry(path.clone()).or_default().clone()
    }
}

impl Collector for Mailboxes {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        type Read = fn(&MailboxCounts) -> u64;
        let series: [(&str, &str, MetricType, Read); 4] = [
            (
                "mailbox_depth",
                "Messages waiting in the mailbox",
                MetricType::Gauge,
                MailboxCounts::depth,
            ),
            (
                "mailbox_depth_max",
                "Most messages ever waiting at once",
                MetricType::Gauge,
                |c| c.depth_max.load(Ordering::Relaxed),
            ),
            (
                "messages_enqueued",
                "Messages accepted",
                MetricType::Counter,
                |c| c.enqueued.load(Ordering::Relaxed),
            ),
            (
                "messages_handled",
                "Messages handled",
                MetricType::Counter,
                |c| c.handled.get(),
            ),
        ];
        let actors = lock(&self.0);
        for (name, help, kind, read) in series {
            let mut family = encoder.encode_descriptor(name, help, None, kind)?;
            for (label, counts) in actors.iter() {
                let sample = family.encode_family(label)?;
                match kind {
                    MetricType::Counter => ConstCounter::new(read(counts)).encode(sample)?,
                    _ => ConstGauge::new(read(counts) as i64).encode(sample)?,
                }
            }
        }
        Ok(())
    }
}

/// Milliseconds since the Unix epoch, for failure reports.
pub(crate) fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mailbox_series_are_derived_per_path_when_scraped() {
        let families = Families::new();
        let a = families.for_actor(&ActorPath::from("/a"));
        let b = families.for_actor(&ActorPath::from("/b"));
        for _ in 0..3 {
            a.enqueued();
        }
        a.dequeued(None);
        a.handled(None);
        // The incarnation ends: the two it never took were dropped.
        a.settle_dropped();
        b.enqueued();
        // A later incarnation's metrics count into the same series.
        families.for_actor(&ActorPath::from("/a")).enqueued();

        let text = families.encode(Exposition::Prometheus);
        let at = |name: &str, path: &str| {
            let series = format!("polis_actor_{name}{{path=\"{path}\"}} ");
            text.lines().find_map(|l| l.strip_prefix(series.as_str()))
        };
        // /a: four in, one taken, two dropped; three waited at once.
        assert_eq!(at("mailbox_depth", "/a"), Some("1"));
        assert_eq!(at("mailbox_depth_max", "/a"), Some("3"));
        assert_eq!(at("messages_enqueued_total", "/a"), Some("4"));
        assert_eq!(at("messages_handled_total", "/a"), Some("1"));
        assert_eq!(at("mailbox_depth", "/b"), Some("1"));
        assert_eq!(at("mailbox_depth_max", "/b"), Some("1"));
        // One family per metric, every path a series of it.
        assert_eq!(
            text.matches("# TYPE polis_actor_mailbox_depth gauge")
                .count(),
            1
        );
        assert_eq!(
            text.matches("# TYPE polis_actor_messages_enqueued_total counter")
                .count(),
            1
        );
    }
}
