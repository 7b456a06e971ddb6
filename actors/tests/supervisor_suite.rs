//! Supervision semantics, after OTP's supervisor_SUITE: strategies, restart types, intensity,
//! escalation, start and stop order, timeouts, panics, backoff and fault injection. Time is
//! virtual (`tokio::time::pause`) wherever it matters, so nothing here depends on machine speed.

mod common;

use std::time::Duration;

use common::*;
use polis_actors::{
    ActorState, Backoff, ChildSpec, ExitReason, Kill, Restart, SendError, Shutdown, Strategy,
    SupervisorSpec, Tree, TreeError,
};
use tokio::time::Instant;

const NAMES: [&str; 3] = ["a", "b", "c"];

/// A tree whose root has three probes under `strategy`, generous intensity.
async fn three(
    strategy: Strategy,
    journal: &Journal,
) -> (Tree, Vec<polis_actors::ActorRef<Probe>>) {
    let mut spec = SupervisorSpec::new(strategy).intensity(10, Duration::from_secs(10));
    let mut refs = Vec::new();
    for name in NAMES {
        let (child, actor, _) = probe(name, journal);
        spec = spec.child(child);
        refs.push(actor);
    }
    (start(spec).await, refs)
}

async fn strategy_case(strategy: Strategy, failing: usize) -> (Vec<u64>, Vec<String>) {
    let journal = Journal::default();
    let (tree, refs) = three(strategy, &journal).await;
    journal.clear();
    refs[failing].ask(Exit::Error).await.unwrap_err();
    let path = format!("/{}", NAMES[failing]);
    until("the failed child is back", || generation(&tree, &path) == 2).await;
    until("all children healthy", || {
        NAMES
            .iter()
            .all(|n| tree.registry().actor(&format!("/{n}")).unwrap().state == ActorState::Healthy)
    })
    .await;
    settle().await;
    let gens = NAMES
        .iter()
        .map(|n| generation(&tree, &format!("/{n}")))
        .collect();
    (gens, journal.entries())
}

#[actix_rt::test]
async fn one_for_one_restarts_only_the_failed_child() {
    tokio::time::pause();
    for failing in 0..3 {
        let (gens, log) = strategy_case(Strategy::OneForOne, failing).await;
        let mut want = vec![1, 1, 1];
        want[failing] = 2;
        assert_eq!(gens, want, "failing child {failing}");
        let n = NAMES[failing];
        assert_eq!(
            log,
            vec![
                format!("{n} stopping"),
                format!("{n} start"),
                format!("{n} healthy")
            ]
        );
    }
}

#[actix_rt::test]
async fn one_for_all_restarts_every_child_in_order() {
    tokio::time::pause();
    for (failing, failed) in NAMES.iter().enumerate() {
        let (gens, log) = strategy_case(Strategy::OneForAll, failing).await;
        assert_eq!(gens, vec![2, 2, 2], "failing child {failing}");
        let stops: Vec<String> = NAMES
            .iter()
            .rev()
            .filter(|n| *n != failed)
            .map(|n| format!("{n} stopping"))
            .collect();
        let mut want = vec![format!("{failed} stopping")];
        want.extend(stops);
        for n in NAMES {
            want.push(format!("{n} start"));
            want.push(format!("{n} healthy"));
        }
        assert_eq!(log, want, "failing child {failing}");
    }
}

#[actix_rt::test]
async fn rest_for_one_restarts_the_failed_child_and_those_after_it() {
    tokio::time::pause();
    for failing in 0..3 {
        let (gens, log) = strategy_case(Strategy::RestForOne, failing).await;
        let want_gens: Vec<u64> = (0..3).map(|i| if i >= failing { 2 } else { 1 }).collect();
        assert_eq!(gens, want_gens, "failing child {failing}");
        let mut want = vec![format!("{} stopping", NAMES[failing])];
        want.extend(
            NAMES[failing + 1..]
                .iter()
                .rev()
                .map(|n| format!("{n} stopping")),
        );
        for n in &NAMES[failing..] {
            want.push(format!("{n} start"));
            want.push(format!("{n} healthy"));
        }
        assert_eq!(log, want, "failing child {failing}");
    }
}

#[derive(Clone, Copy, Debug)]
enum How {
    Normal,
    Shutdown,
    Error,
    Panic,
    Killed,
}

#[actix_rt::test]
async fn restart_type_by_exit_reason_matrix() {
    tokio::time::pause();
    let hows = [
        How::Normal,
        How::Shutdown,
        How::Error,
        How::Panic,
        How::Killed,
    ];
    for restart in [Restart::Permanent, Restart::Transient, Restart::Temporary] {
        for how in hows {
            let journal = Journal::default();
            let (child, actor, _) = probe("w", &journal);
            let (keeper, _, _) = probe("keeper", &journal);
            let spec = SupervisorSpec::new(Strategy::OneForOne)
                .intensity(10, Duration::from_secs(10))
                .child(child.restart(restart))
                .child(keeper);
            let tree = start(spec).await;
            match how {
                How::Normal => actor.ask(Exit::Normal).await.unwrap(),
                How::Shutdown => actor.ask(Exit::Shutdown).await.unwrap(),
                How::Error => assert!(actor.ask(Exit::Error).await.is_err()),
                How::Panic => assert!(actor.ask(Exit::Panic).await.is_err()),
                How::Killed => tree.kill("/w", Kill::Brutal).unwrap(),
            }
            let abnormal = matches!(how, How::Error | How::Panic | How::Killed);
            let restarted = match restart {
                Restart::Permanent => true,
                Restart::Transient => abnormal,
                _ => false,
            };
            let expected_reason = match how {
                How::Normal => "normal",
                How::Shutdown => "shutdown",
                How::Error => "error",
                How::Panic => "panic",
                How::Killed => "killed",
            };
            if restarted {
                until("restarted", || generation(&tree, "/w") == 2).await;
                let snap = tree.registry().actor("/w").unwrap();
                assert_eq!(
                    snap.restarts.get(expected_reason),
                    Some(&1),
                    "{restart:?} {how:?}"
                );
                assert_eq!(actor.ask(Ping).await, Ok(2));
            } else {
                until("stopped for good", || !actor.is_running()).await;
                settle().await;
                let snap = tree.registry().actor("/w").unwrap();
                assert_eq!(snap.generation, 1, "{restart:?} {how:?} must not restart");
                assert!(snap.restarts.is_empty());
                let want = if abnormal {
                    ActorState::Failed
                } else {
                    ActorState::Stopped
                };
                assert_eq!(snap.state, want, "{restart:?} {how:?}");
                assert!(matches!(
                    actor.ask(Ping).await,
                    Err(SendError::NotRunning(_))
                ));
            }
            assert_eq!(tree.shutdown().await, ExitReason::Shutdown);
        }
    }
}

#[actix_rt::test]
async fn once_child_failure_is_fatal_to_the_whole_tree() {
    tokio::time::pause();
    let journal = Journal::default();
    let (core_child, _, _) = probe("storage", &journal);
    let core = SupervisorSpec::new(Strategy::RestForOne).child(core_child);
    let (life, life_ref, _) = probe("lifecycle", &journal);
    let spec = SupervisorSpec::new(Strategy::OneForOne)
        .intensity(100, Duration::from_secs(1))
        .child(ChildSpec::supervisor("core", core).0)
        .child(life.restart(Restart::Once));
    let tree = start(spec).await;
    assert!(life_ref.ask(Exit::Error).await.is_err());
    let reason = tree.exited().await;
    assert_eq!(
        reason,
        ExitReason::Fatal {
            child: "/lifecycle".into(),
            reason: Box::new(ExitReason::Error {
                message: "asked to fail".into()
            })
        }
    );
    // The tree stopped in reverse order: nothing is left running.
    assert_eq!(
        tree.registry().actor("/core/storage").unwrap().state,
        ActorState::Stopped
    );
    assert_eq!(
        journal.only("stopping"),
        vec!["lifecycle stopping", "storage stopping"]
    );
}

#[actix_rt::test]
async fn once_child_runs_once_while_everything_else_is_killed_repeatedly() {
    tokio::time::pause();
    let journal = Journal::default();
    let (s, _, _) = probe("storage", &journal);
    let (t, _, _) = probe("tpm", &journal);
    let core = SupervisorSpec::new(Strategy::RestForOne)
        .intensity(5, Duration::from_secs(1))
        .child(s)
        .child(t);
    let (life, life_ref, _) = probe("lifecycle", &journal);
    let (c, _, _) = probe("consensus", &journal);
    let cluster = SupervisorSpec::new(Strategy::RestForOne)
        .intensity(5, Duration::from_secs(1))
        .child(c);
    let spec = SupervisorSpec::new(Strategy::OneForOne)
        .intensity(5, Duration::from_secs(1))
        .child(ChildSpec::supervisor("core", core).0)
        .child(life.restart(Restart::Once))
        .child(ChildSpec::supervisor("cluster", cluster).0);
    let tree = start(spec).await;
    let targets = [
        "/core/storage",
        "/core/tpm",
        "/cluster/consensus",
        "/core",
        "/cluster",
    ];
    for round in 0..6 {
        for (i, path) in targets.iter().enumerate() {
            let how = if (round + i) % 2 == 0 {
                Kill::Crash
            } else {
                Kill::Brutal
            };
            until("target running", || {
                tree.registry().actor(path).map(|s| s.state) == Some(ActorState::Healthy)
            })
            .await;
            tree.kill(path, how).unwrap();
            // Spaced beyond every intensity period, so no supervisor gives up.
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }
    let life = tree.registry().actor("/lifecycle").unwrap();
    assert_eq!(life.starts, 1);
    assert_eq!(life.state, ActorState::Healthy);
    assert_eq!(life_ref.ask(Ping).await, Ok(1));
    assert!(tree.registry().actor("/core/storage").unwrap().starts >= 12);
    assert!(tree.registry().actor("/cluster").unwrap().starts >= 7);
}

async fn failing_tree(max: u32, period: Duration) -> (Tree, polis_actors::ActorRef<Probe>) {
    let journal = Journal::default();
    let (w, actor, _) = probe("w", &journal);
    let spec = SupervisorSpec::new(Strategy::OneForOne)
        .intensity(max, period)
        .child(w);
    (start(spec).await, actor)
}

async fn fail_and_wait(tree: &Tree, actor: &polis_actors::ActorRef<Probe>, gen_after: u64) {
    assert!(actor.ask(Exit::Error).await.is_err());
    until("restart", || generation(tree, "/w") == gen_after).await;
    until("healthy", || {
        tree.registry().actor("/w").unwrap().state == ActorState::Healthy
    })
    .await;
}

#[actix_rt::test]
async fn intensity_exactly_at_the_limit_is_tolerated() {
    tokio::time::pause();
    let (tree, actor) = failing_tree(3, Duration::from_secs(10)).await;
    for n in 0..3 {
        fail_and_wait(&tree, &actor, n + 2).await;
    }
    assert_eq!(
        tree.registry().actor("/").unwrap().state,
        ActorState::Healthy
    );
    assert_eq!(
        tree.registry().actor("/w").unwrap().restarts.get("error"),
        Some(&3)
    );
}

#[actix_rt::test]
async fn intensity_one_over_the_limit_gives_up() {
    tokio::time::pause();
    let (tree, actor) = failing_tree(3, Duration::from_secs(10)).await;
    for n in 0..3 {
        fail_and_wait(&tree, &actor, n + 2).await;
    }
    assert!(actor.ask(Exit::Error).await.is_err());
    let reason = tree.exited().await;
    assert_eq!(
        reason,
        ExitReason::Escalated {
            child: "/w".into(),
            reason: Box::new(ExitReason::Error {
                message: "asked to fail".into()
            })
        }
    );
    assert_eq!(generation(&tree, "/w"), 4);
}

#[actix_rt::test]
async fn spaced_restarts_never_trip_the_intensity() {
    tokio::time::pause();
    let (tree, actor) = failing_tree(1, Duration::from_secs(1)).await;
    for n in 0..10 {
        fail_and_wait(&tree, &actor, n + 2).await;
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    assert_eq!(generation(&tree, "/w"), 11);
    assert_eq!(
        tree.registry().actor("/").unwrap().state,
        ActorState::Healthy
    );
}

#[actix_rt::test]
async fn escalation_goes_up_through_two_levels() {
    tokio::time::pause();
    let journal = Journal::default();
    let (w, actor, _) = probe("w", &journal);
    let mid = SupervisorSpec::new(Strategy::OneForOne)
        .intensity(0, Duration::from_secs(10))
        .child(w);
    let spec = SupervisorSpec::new(Strategy::OneForOne)
        .intensity(1, Duration::from_secs(10))
        .child(ChildSpec::supervisor("mid", mid).0);
    let tree = start(spec).await;
    // First failure: mid gives up at once, the root restarts mid (its restart 1 of 1).
    assert!(actor.ask(Exit::Error).await.is_err());
    until("mid restarted", || generation(&tree, "/mid") == 2).await;
    until("w back", || actor.is_running()).await;
    let mid_snap = tree.registry().actor("/mid").unwrap();
    assert_eq!(mid_snap.restarts.get("escalated"), Some(&1));
    // Second failure: mid gives up again and the root is over its own limit.
    assert!(actor.ask(Exit::Error).await.is_err());
    match tree.exited().await {
        ExitReason::Escalated { child, reason } => {
            assert_eq!(child, "/mid");
            assert!(
                matches!(*reason, ExitReason::Escalated { ref child, .. } if child == "/mid/w")
            );
        }
        other => panic!("unexpected exit {other:?}"),
    }
}

#[actix_rt::test]
async fn children_start_in_order_each_after_the_previous_is_healthy() {
    tokio::time::pause();
    let journal = Journal::default();
    let (a, _, a_script) = probe("a", &journal);
    let (b, _, b_script) = probe("b", &journal);
    let (c, _, _) = probe("c", &journal);
    a_script.lock().unwrap().start = StartMode::HealthyAfter(Duration::from_millis(300));
    b_script.lock().unwrap().start = StartMode::HealthyAfter(Duration::from_millis(100));
    let began = Instant::now();
    let tree = start(
        SupervisorSpec::new(Strategy::OneForOne)
            .child(a)
            .child(b)
            .child(c),
    )
    .await;
    assert_eq!(
        journal.entries(),
        vec![
            "a start",
            "a healthy",
            "b start",
            "b healthy",
            "c start",
            "c healthy"
        ]
    );
    assert!(began.elapsed() >= Duration::from_millis(400));
    assert_eq!(
        tree.registry().actor("/").unwrap().state,
        ActorState::Healthy
    );
}

#[actix_rt::test]
async fn a_start_failure_unwinds_the_started_children_in_reverse() {
    tokio::time::pause();
    for mode in [StartMode::Fail, StartMode::Panic] {
        let journal = Journal::default();
        let (a, _, _) = probe("a", &journal);
        let (b, _, _) = probe("b", &journal);
        let (c, _, c_script) = probe("c", &journal);
        let (d, _, _) = probe("d", &journal);
        c_script.lock().unwrap().start = mode;
        let spec = SupervisorSpec::new(Strategy::OneForOne)
            .child(a)
            .child(b)
            .child(c)
            .child(d);
        match Tree::start(spec, quiet()).await {
            Err(TreeError::StartFailed(ExitReason::Error { message })) => {
                assert!(message.starts_with("child /c failed to start"), "{message}");
            }
            Err(other) => panic!("unexpected error {other}"),
            Ok(_) => panic!("the tree must not start"),
        }
        assert_eq!(
            journal.entries(),
            vec![
                "a start",
                "a healthy",
                "b start",
                "b healthy",
                "c start",
                "b stopping",
                "a stopping"
            ],
            "{mode:?}"
        );
    }
}

#[actix_rt::test]
async fn a_child_not_healthy_in_time_is_killed_and_fails_the_start() {
    tokio::time::pause();
    let journal = Journal::default();
    let (a, _, script) = probe("a", &journal);
    script.lock().unwrap().start = StartMode::Never;
    let spec = SupervisorSpec::new(Strategy::OneForOne)
        .child(a.start_timeout(Some(Duration::from_secs(3))));
    let began = Instant::now();
    let err = Tree::start(spec, quiet()).await.err().expect("start fails");
    assert!(began.elapsed() >= Duration::from_secs(3));
    assert!(
        err.to_string().contains("not healthy within 3000 ms"),
        "{err}"
    );
}

#[actix_rt::test]
async fn a_start_timeout_after_startup_counts_as_a_restart() {
    tokio::time::pause();
    let journal = Journal::default();
    let (a, actor, script) = probe("a", &journal);
    let spec = SupervisorSpec::new(Strategy::OneForOne)
        .intensity(10, Duration::from_secs(100))
        .child(a.start_timeout(Some(Duration::from_secs(1))));
    let tree = start(spec).await;
    script.lock().unwrap().start = StartMode::Never;
    assert!(actor.ask(Exit::Error).await.is_err());
    until("three timed-out starts", || generation(&tree, "/a") >= 4).await;
    script.lock().unwrap().start = StartMode::Healthy;
    until("healthy again", || {
        tree.registry().actor("/a").unwrap().state == ActorState::Healthy
    })
    .await;
    let snap = tree.registry().actor("/a").unwrap();
    assert!(
        snap.restarts.get("start_timeout").copied().unwrap_or(0) >= 2,
        "{:?}",
        snap.restarts
    );
}

#[actix_rt::test]
async fn shutdown_stops_children_in_reverse_order() {
    tokio::time::pause();
    let journal = Journal::default();
    let (x, _, _) = probe("x", &journal);
    let inner = SupervisorSpec::new(Strategy::OneForOne).child(x);
    let (a, _, _) = probe("a", &journal);
    let (c, _, _) = probe("c", &journal);
    let spec = SupervisorSpec::new(Strategy::RestForOne)
        .child(a)
        .child(ChildSpec::supervisor("b", inner).0)
        .child(c);
    let tree = start(spec).await;
    assert_eq!(tree.shutdown().await, ExitReason::Shutdown);
    assert_eq!(
        journal.only("stopping"),
        vec!["c stopping", "x stopping", "a stopping"]
    );
    for path in ["/", "/a", "/b", "/b/x", "/c"] {
        assert_eq!(
            tree.registry().actor(path).unwrap().state,
            ActorState::Stopped,
            "{path}"
        );
    }
}

#[actix_rt::test]
async fn a_child_that_ignores_stop_is_killed_after_its_timeout() {
    tokio::time::pause();
    let journal = Journal::default();
    let (a, _, script) = probe("a", &journal);
    script.lock().unwrap().ignore_stop = true;
    let spec = SupervisorSpec::new(Strategy::OneForOne)
        .child(a.shutdown(Shutdown::Timeout(Duration::from_secs(2))));
    let tree = start(spec).await;
    let began = Instant::now();
    assert_eq!(tree.shutdown().await, ExitReason::Shutdown);
    assert!(began.elapsed() >= Duration::from_secs(2));
    assert_eq!(journal.only("stop"), vec!["a ignores stop"]);
    assert!(
        journal.only("stopping").is_empty(),
        "a killed child runs no cleanup hook"
    );
    let snap = tree.registry().actor("/a").unwrap();
    assert_eq!(snap.last_failure.unwrap().reason, ExitReason::Killed);
}

#[actix_rt::test]
async fn brutal_shutdown_kills_without_cleanup() {
    tokio::time::pause();
    let journal = Journal::default();
    let (a, _, _) = probe("a", &journal);
    let (b, _, _) = probe("b", &journal);
    let spec = SupervisorSpec::new(Strategy::OneForOne)
        .child(a.shutdown(Shutdown::Brutal))
        .child(b);
    let tree = start(spec).await;
    assert_eq!(tree.shutdown().await, ExitReason::Shutdown);
    assert_eq!(journal.only("stopping"), vec!["b stopping"]);
    assert_eq!(
        tree.registry().actor("/a").unwrap().state,
        ActorState::Failed
    );
}

#[actix_rt::test]
async fn panics_in_handler_started_and_stopping_are_contained() {
    tokio::time::pause();
    let journal = Journal::default();
    let (a, actor, script) = probe("a", &journal);
    // A small backoff keeps the panicking restarts below the intensity while the test waits.
    let spec = SupervisorSpec::new(Strategy::OneForOne)
        .intensity(1000, Duration::from_secs(1))
        .backoff(Backoff {
            base: Duration::from_millis(10),
            cap: Duration::from_millis(10),
            reset_after: Duration::from_secs(1),
        })
        .child(a);
    let tree = start(spec).await;

    // In a handler: the caller is told, the actor restarts.
    assert_eq!(
        actor.ask(Exit::Panic).await,
        Err(SendError::Stopped("/a".into()))
    );
    until("restart after handler panic", || {
        generation(&tree, "/a") == 2
    })
    .await;
    let failure = tree.registry().actor("/a").unwrap().last_failure.unwrap();
    assert_eq!(
        failure.reason,
        ExitReason::Panic {
            message: "asked to panic".into()
        }
    );

    // In started: the restart fails, is retried, succeeds once started stops panicking.
    script.lock().unwrap().start = StartMode::Panic;
    assert!(actor.ask(Exit::Error).await.is_err());
    until("a panicking start", || generation(&tree, "/a") >= 4).await;
    script.lock().unwrap().start = StartMode::Healthy;
    until("healthy", || {
        tree.registry().actor("/a").unwrap().state == ActorState::Healthy
    })
    .await;
    let snap = tree.registry().actor("/a").unwrap();
    assert!(
        snap.restarts.get("panic").copied().unwrap_or(0) >= 2,
        "{:?}",
        snap.restarts
    );

    // In stopping: the stop completes, with the panic on record.
    script.lock().unwrap().panic_in_stopping = true;
    assert_eq!(tree.shutdown().await, ExitReason::Shutdown);
    let failure = tree.registry().actor("/a").unwrap().last_failure.unwrap();
    assert_eq!(
        failure.reason,
        ExitReason::Panic {
            message: "scripted panic in stopping".into()
        }
    );
}

#[actix_rt::test]
async fn backoff_grows_to_its_cap_and_resets_after_a_healthy_period() {
    tokio::time::pause();
    let journal = Journal::default();
    let (w, actor, _) = probe("w", &journal);
    let spec = SupervisorSpec::new(Strategy::OneForOne)
        .intensity(100, Duration::from_secs(1))
        .backoff(Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_millis(400),
            reset_after: Duration::from_secs(5),
        })
        .child(w);
    let tree = start(spec).await;
    let mut delays = Vec::new();
    for n in 0..5u64 {
        let began = Instant::now();
        assert!(actor.ask(Exit::Error).await.is_err());
        until("restart", || generation(&tree, "/w") == n + 2).await;
        delays.push(began.elapsed().as_millis() / 100 * 100);
        until("running", || actor.is_running()).await;
    }
    assert_eq!(delays, vec![100, 200, 400, 400, 400]);
    tokio::time::sleep(Duration::from_secs(6)).await;
    let began = Instant::now();
    assert!(actor.ask(Exit::Error).await.is_err());
    until("restart", || generation(&tree, "/w") == 7).await;
    assert_eq!(
        began.elapsed().as_millis() / 100 * 100,
        100,
        "backoff reset"
    );
}

#[actix_rt::test]
async fn kill_by_path_is_handled_like_a_real_failure() {
    tokio::time::pause();
    let journal = Journal::default();
    let (a, actor, _) = probe("a", &journal);
    let (b, _, _) = probe("b", &journal);
    let sub = SupervisorSpec::new(Strategy::OneForOne).child(b);
    let spec = SupervisorSpec::new(Strategy::OneForOne)
        .intensity(10, Duration::from_secs(10))
        .child(a)
        .child(ChildSpec::supervisor("sub", sub).0);
    let tree = start(spec).await;
    journal.clear();

    tree.kill("/a", Kill::Crash).unwrap();
    until("crash restart", || generation(&tree, "/a") == 2).await;
    let failure = tree.registry().actor("/a").unwrap().last_failure.unwrap();
    assert_eq!(
        failure.reason,
        ExitReason::Panic {
            message: "fault injection: crash of /a".into()
        }
    );

    until("running", || actor.is_running()).await;
    tree.kill("/a", Kill::Brutal).unwrap();
    until("brutal restart", || generation(&tree, "/a") == 3).await;
    assert_eq!(
        tree.registry()
            .actor("/a")
            .unwrap()
            .last_failure
            .unwrap()
            .reason,
        ExitReason::Killed
    );
    assert!(
        journal.only("stopping").is_empty(),
        "neither kill runs the cleanup hook"
    );

    // Killing a supervisor brutally takes its children with it; both come back.
    tree.kill("/sub", Kill::Brutal).unwrap();
    until("sub and child back", || {
        generation(&tree, "/sub") == 2 && generation(&tree, "/sub/b") == 2
    })
    .await;
    assert_eq!(
        tree.registry().actor("/").unwrap().state,
        ActorState::Healthy
    );

    assert_eq!(
        tree.kill("/nope", Kill::Crash),
        Err(polis_actors::KillError::NoSuchActor("/nope".into()))
    );
}

#[actix_rt::test]
async fn queued_messages_are_dropped_with_stopped_when_an_incarnation_ends() {
    tokio::time::pause();
    let journal = Journal::default();
    let (a, actor, _) = probe("a", &journal);
    let tree = start(SupervisorSpec::new(Strategy::OneForOne).child(a)).await;
    let hold = actix_rt::spawn(actor.ask(Hold));
    settle().await;
    let queued: Vec<_> = (0..3).map(|_| actix_rt::spawn(actor.ask(Ping))).collect();
    settle().await;
    assert_eq!(tree.registry().actor("/a").unwrap().queue_depth, 3);
    tree.kill("/a", Kill::Brutal).unwrap();
    assert_eq!(hold.await.unwrap(), Err(SendError::Stopped("/a".into())));
    for q in queued {
        assert_eq!(q.await.unwrap(), Err(SendError::Stopped("/a".into())));
    }
    until("restart", || actor.is_running()).await;
    assert_eq!(
        actor.ask(Ping).await,
        Ok(2),
        "the new incarnation starts with an empty mailbox"
    );
    let snap = tree.registry().actor("/a").unwrap();
    assert_eq!(
        (snap.queue_depth, snap.dropped, snap.enqueued, snap.taken),
        (0, 3, 5, 2)
    );
}

#[actix_rt::test]
async fn children_are_started_terminated_and_listed_at_run_time() {
    tokio::time::pause();
    use polis_actors::{ChildError, ChildStatus, StartChild, TerminateChild, WhichChildren};
    let journal = Journal::default();
    let (a, _, _) = probe("a", &journal);
    let tree = start(SupervisorSpec::new(Strategy::OneForOne).child(a)).await;
    let (b, b_ref, script) = probe("b", &journal);
    script.lock().unwrap().start = StartMode::HealthyAfter(Duration::from_millis(50));
    assert_eq!(tree.root().ask(StartChild(b.clone())).await, Ok(Ok(())));
    assert_eq!(b_ref.ask(Ping).await, Ok(1));
    assert_eq!(
        tree.root().ask(StartChild(b)).await,
        Ok(Err(ChildError::Exists("b".into())))
    );
    let (bad, _, bad_script) = probe("bad", &journal);
    bad_script.lock().unwrap().start = StartMode::Fail;
    match tree
        .root()
        .ask(StartChild(bad.restart(Restart::Temporary)))
        .await
    {
        Ok(Err(ChildError::StartFailed { name, .. })) => assert_eq!(name, "bad"),
        other => panic!("unexpected {other:?}"),
    }
    let children = tree.root().ask(WhichChildren).await.unwrap();
    let listed: Vec<_> = children
        .iter()
        .map(|c| (c.name.as_str(), c.status))
        .collect();
    assert_eq!(
        listed,
        vec![
            ("a", ChildStatus::Up),
            ("b", ChildStatus::Up),
            ("bad", ChildStatus::Down)
        ]
    );
    assert_eq!(
        tree.root().ask(TerminateChild("b".into())).await,
        Ok(Ok(()))
    );
    assert!(!b_ref.is_running());
    assert_eq!(
        tree.root().ask(TerminateChild("b".into())).await,
        Ok(Err(ChildError::NotFound("b".into())))
    );
    let names: Vec<_> = tree
        .root()
        .ask(WhichChildren)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(names, vec!["a", "bad"]);
}

#[actix_rt::test]
async fn a_restarted_supervisor_starts_again_what_was_added_to_it_and_not_terminated() {
    tokio::time::pause();
    use polis_actors::{StartChild, TerminateChild};
    let journal = Journal::default();
    let (sub, sub_ref) = ChildSpec::supervisor("sub", SupervisorSpec::new(Strategy::OneForOne));
    let tree = start(SupervisorSpec::new(Strategy::OneForOne).child(sub)).await;
    let (b, b_ref, _) = probe("b", &journal);
    let (c, c_ref, _) = probe("c", &journal);
    assert_eq!(sub_ref.ask(StartChild(b)).await, Ok(Ok(())));
    assert_eq!(sub_ref.ask(StartChild(c)).await, Ok(Ok(())));
    assert_eq!(sub_ref.ask(TerminateChild("c".into())).await, Ok(Ok(())));
    assert_eq!(generation(&tree, "/sub/b"), 1);

    tree.kill("/sub", Kill::Crash).unwrap();
    until("the supervisor restarts", || generation(&tree, "/sub") == 2).await;
    until("b runs again", || b_ref.is_running()).await;
    assert_eq!(generation(&tree, "/sub/b"), 2);
    assert!(b_ref.ask(Ping).await.is_ok());
    settle().await;
    assert!(!c_ref.is_running(), "a terminated child stays gone");
}
