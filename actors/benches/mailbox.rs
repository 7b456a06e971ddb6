//! Measures what supervision costs: request/response through raw actix against the same through
//! a supervised, metered actor (same run, same machine), and the crash → healthy restart latency
//! of a trivial actor with backoff off (p50/p99 printed at the end). The ratio raw ÷ supervised
//! is measured last with the two alternating batch by batch in one loop (issue 12's P3), so that
//! the shared machine's noise falls on both alike; criterion's own figures run one after the
//! other.

use std::time::{Duration, Instant};

use actix::prelude::*;
use criterion::{criterion_group, Criterion};
use polis_actors::{
    ActorRef, ActorState, ChildSpec, Ctx, Failure, Handler, Kill, Message as PolisMessage, Reply,
    Strategy, SupervisorSpec, Tree,
};

struct RawEcho;
impl actix::Actor for RawEcho {
    type Context = actix::Context<Self>;
}

struct RawPing(u64);
impl actix::Message for RawPing {
    type Result = u64;
}
impl actix::Handler<RawPing> for RawEcho {
    type Result = u64;
    fn handle(&mut self, RawPing(n): RawPing, _: &mut Self::Context) -> u64 {
        n + 1
    }
}

struct Echo;
impl polis_actors::Actor for Echo {}

struct Ping(u64);
impl PolisMessage for Ping {
    type Reply = u64;
}
impl Handler<Ping> for Echo {
    fn handle(
        &mut self,
        Ping(n): Ping,
        _: &mut Ctx<'_, Self>,
    ) -> Result<Reply<Self, u64>, Failure> {
        Ok(Reply::now(n + 1))
    }
}

fn quiet() -> slog::Logger {
    slog::Logger::root(slog::Discard, slog::o!())
}

fn tree(sys: &actix_rt::SystemRunner) -> (Tree, ActorRef<Echo>) {
    sys.block_on(async {
        let (spec, echo) = ChildSpec::worker("echo", || Ok(Echo));
        let root = SupervisorSpec::new(Strategy::OneForOne)
            .intensity(u32::MAX, Duration::from_secs(1))
            .child(spec);
        (Tree::start(root, quiet()).await.expect("tree starts"), echo)
    })
}

fn ping_pong(c: &mut Criterion) {
    let sys = actix_rt::System::new();
    let raw = sys.block_on(async { RawEcho.start() });
    let (_tree, echo) = tree(&sys);
    let mut group = c.benchmark_group("ping_pong");
    group.bench_function("raw_actix", |b| {
        b.iter_custom(|iters| {
            sys.block_on(async {
                let start = Instant::now();
                for i in 0..iters {
                    raw.send(RawPing(i)).await.unwrap();
                }
                start.elapsed()
            })
        })
    });
    group.bench_function("supervised_metered", |b| {
        b.iter_custom(|iters| {
            sys.block_on(async {
                let start = Instant::now();
                for i in 0..iters {
                    echo.ask(Ping(i)).await.unwrap();
                }
                start.elapsed()
            })
        })
    });
    group.finish();
}

/// Crash the echo actor and wait until its next incarnation is healthy; returns how long it took.
async fn one_restart(tree: &Tree, generation: u64) -> Duration {
    let start = Instant::now();
    let how = if std::env::var_os("BENCH_BRUTAL").is_some() {
        Kill::Brutal
    } else {
        Kill::Crash
    };
    tree.kill("/echo", how).unwrap();
    loop {
        tokio::task::yield_now().await;
        let snap = tree.registry().actor("/echo").unwrap();
        if snap.generation == generation + 1 && snap.state == ActorState::Healthy {
            return start.elapsed();
        }
    }
}

fn restart_latency(c: &mut Criterion) {
    std::panic::set_hook(Box::new(|_| {})); // crashes are the point here; keep them quiet
    let sys = actix_rt::System::new();
    let (tree, _echo) = tree(&sys);
    let mut generation = 1;
    c.bench_function("crash_to_healthy_restart", |b| {
        b.iter_custom(|iters| {
            sys.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += one_restart(&tree, generation).await;
                    generation += 1;
                }
                total
            })
        })
    });
    let mut samples: Vec<Duration> = sys.block_on(async {
        let mut samples = Vec::with_capacity(2000);
        for _ in 0..2000 {
            samples.push(one_restart(&tree, generation).await);
            generation += 1;
        }
        samples
    });
    samples.sort();
    let pct = |p: usize| samples[(samples.len() * p / 100).min(samples.len() - 1)];
    println!(
        "restart latency over {} crashes: p50 {:?}, p99 {:?}, max {:?}",
        samples.len(),
        pct(50),
        pct(99),
        samples[samples.len() - 1]
    );
    let _ = std::panic::take_hook();
}

/// Pings per batch of the interleaved comparison, and batches of each kind.
const BATCH: u64 = 20_000;
const PAIRS: usize = 31;

/// Raw and supervised batches alternating (which goes first alternates too); prints each kind's
/// median nanoseconds per ping and the per-pair ratio raw ÷ supervised, min/median/max.
fn interleaved_ratio() {
    let sys = actix_rt::System::new();
    let raw = sys.block_on(async { RawEcho.start() });
    let (_tree, echo) = tree(&sys);
    let raw_batch = || {
        sys.block_on(async {
            let start = Instant::now();
            for i in 0..BATCH {
                raw.send(RawPing(i)).await.unwrap();
            }
            start.elapsed().as_nanos() as f64 / BATCH as f64
        })
    };
    let supervised_batch = || {
        sys.block_on(async {
            let start = Instant::now();
            for i in 0..BATCH {
                echo.ask(Ping(i)).await.unwrap();
            }
            start.elapsed().as_nanos() as f64 / BATCH as f64
        })
    };
    raw_batch();
    supervised_batch();
    let (mut raws, mut supervised, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for pair in 0..PAIRS {
        let (r, s) = match pair % 2 {
            0 => (raw_batch(), supervised_batch()),
            _ => {
                let s = supervised_batch();
                (raw_batch(), s)
            }
        };
        raws.push(r);
        supervised.push(s);
        ratios.push(r / s);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (r, s, m) = (
        median(&mut raws),
        median(&mut supervised),
        median(&mut ratios),
    );
    println!(
        "interleaved ping-pong, {PAIRS} pairs of {BATCH}: raw actix {r:.0} ns, supervised {s:.0} ns, \
         ratio raw/supervised min {:.2} median {m:.2} max {:.2}",
        ratios[0],
        ratios[ratios.len() - 1]
    );
}

criterion_group!(benches, ping_pong, restart_latency);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    interleaved_ratio();
}
