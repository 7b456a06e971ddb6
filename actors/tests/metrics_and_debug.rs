//! Mailbox metrics with exact counts, their Prometheus text, failure reports with the last log
//! lines, the `log` bridge, and the debug HTTP endpoint.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;

use common::*;
use polis_actors::debug_http::{DebugServer, DebugServerError};
use polis_actors::{ActorState, ExitReason, Kill, Strategy, SupervisorSpec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn sample(text: &str, line_prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(line_prefix) && l[line_prefix.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[actix_rt::test]
async fn exact_counts_after_a_known_message_sequence() {
    tokio::time::pause();
    let journal = Journal::default();
    let (a, actor, _) = probe("a", &journal);
    let tree = start(SupervisorSpec::new(Strategy::OneForOne).child(a)).await;

    // Three sends before the actor runs: the queue reaches 3.
    for _ in 0..3 {
        actor.tell(Ping).unwrap();
    }
    assert_eq!(tree.registry().actor("/a").unwrap().queue_depth, 3);
    settle().await;
    assert_eq!(tree.registry().actor("/a").unwrap().queue_depth, 0);
    for _ in 0..2 {
        assert_eq!(actor.ask(Ping).await, Ok(1));
    }
    let snap = tree.registry().actor("/a").unwrap();
    assert_eq!(
        (
            snap.enqueued,
            snap.taken,
            snap.handled,
            snap.queue_depth,
            snap.queue_depth_max,
            snap.dropped
        ),
        (5, 5, 5, 0, 3, 0)
    );
    assert_eq!(
        (snap.starts, snap.generation, snap.state),
        (1, 1, ActorState::Healthy)
    );

    let text = tree.registry().prometheus_text();
    let at = |name: &str| sample(&text, &format!("polis_actor_{name}{{path=\"/a\"}}"));
    assert_eq!(at("messages_enqueued_total"), Some(5.0));
    assert_eq!(at("messages_handled_total"), Some(5.0));
    assert_eq!(at("mailbox_depth"), Some(0.0));
    assert_eq!(at("mailbox_depth_max"), Some(3.0));
    // One message in 8 is timed, the first among them: of 5, one.
    assert_eq!(at("mailbox_wait_seconds_count"), Some(1.0));
    assert_eq!(at("handling_seconds_count"), Some(1.0));
    assert_eq!(at("starts_total"), Some(1.0));
    assert_eq!(at("generation"), Some(1.0));
    let state = |s: &str| {
        sample(
            &text,
            &format!("polis_actor_state{{path=\"/a\",state=\"{s}\"}}"),
        )
    };
    assert_eq!(state("healthy"), Some(1.0));
    assert_eq!(state("failed"), Some(0.0));

    // A failure adds exactly one restart, labelled by its reason.
    actor.ask(Say("about to fail".into())).await.unwrap();
    assert!(actor.ask(Exit::Panic).await.is_err());
    until("restart", || generation(&tree, "/a") == 2).await;
    let text = tree.registry().prometheus_text();
    let restarts = |r: &str| {
        sample(
            &text,
            &format!("polis_actor_restarts_total{{path=\"/a\",reason=\"{r}\"}}"),
        )
    };
    assert_eq!(restarts("panic"), Some(1.0));
    assert_eq!(restarts("error"), Some(0.0));
    let snap = tree.registry().actor("/a").unwrap();
    assert_eq!(
        snap.restarts.into_iter().collect::<Vec<_>>(),
        vec![("panic", 1)]
    );
    assert_eq!(
        (snap.enqueued, snap.handled),
        (7, 6),
        "the panicking message is never handled"
    );

    // The failure report carries the reason, the generation and the actor's last words.
    let report = snap.last_failure.expect("a failure report");
    assert_eq!(
        report.reason,
        ExitReason::Panic {
            message: "asked to panic".into()
        }
    );
    assert_eq!(report.generation, 1);
    assert_eq!(
        report.last_logs.last().map(String::as_str),
        Some("INFO about to fail actor=/a")
    );
}

/// Checks the classic Prometheus text format (0.0.4): every sample's family has HELP and TYPE
/// under the name its samples use (`_total` for counters), and no OpenMetrics-only lines.
/// (`integration/tests/metrics.rs` runs `promtool check metrics` on live nodes.)
fn assert_classic_exposition(text: &str) {
    let described = |kind: &str, name: &str| {
        text.lines()
            .any(|l| l.starts_with(&format!("# {kind} {name} ")))
    };
    for line in text.lines() {
        assert!(
            line != "# EOF" && !line.starts_with("# UNIT "),
            "OpenMetrics line {line}"
        );
        if line.starts_with('#') {
            continue;
        }
        let name = line.split(['{', ' ']).next().unwrap();
        let family = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| described("TYPE", f)))
            .unwrap_or(name);
        assert!(
            described("HELP", family) && described("TYPE", family),
            "{name} has no HELP or TYPE under {family}"
        );
    }
}

/// Checks the OpenMetrics text format: descriptors, samples of declared families, a final EOF.
fn assert_valid_exposition(text: &str) {
    let mut families = BTreeSet::new();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.last(),
        Some(&"# EOF"),
        "exposition must end with # EOF"
    );
    for line in &lines[..lines.len() - 1] {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kind, name) = (
                parts.next().unwrap(),
                parts.next().expect("descriptor name"),
            );
            assert!(
                matches!(kind, "HELP" | "TYPE" | "UNIT"),
                "bad descriptor {line}"
            );
            if kind == "TYPE" {
                let ty = parts.next().expect("type");
                assert!(["counter", "gauge", "histogram"].contains(&ty), "type {ty}");
                families.insert(name.to_owned());
            }
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad sample {line}"));
        value
            .parse::<f64>()
            .unwrap_or_else(|_| panic!("bad value in {line}"));
        let name = series.split('{').next().unwrap();
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "bad metric name {name}"
        );
        let family_known = families.iter().any(|f| {
            name == f
                || ["_total", "_bucket", "_count", "_sum", "_created"]
                    .iter()
                    .any(|s| name.strip_suffix(s) == Some(f))
        });
        assert!(family_known, "sample {name} of no declared family");
        if let Some(labels) = series.strip_prefix(name) {
            if !labels.is_empty() {
                assert!(
                    labels.starts_with('{') && labels.ends_with('}'),
                    "labels in {line}"
                );
                for pair in labels[1..labels.len() - 1].split(',') {
                    let (k, v) = pair.split_once('=').expect("label pair");
                    assert!(
                        !k.is_empty() && v.starts_with('"') && v.ends_with('"'),
                        "{pair}"
                    );
                }
            }
        }
    }
    assert!(families.len() >= 10, "families: {families:?}");
}

/// A request with the debug token the test server was started with.
async fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    http_as(addr, method, path, body, "sesame").await
}

/// A request presenting `token` (none if empty).
async fn http_as(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
    token: &str,
) -> (u16, String) {
    let authorization = match token {
        "" => String::new(),
        token => format!("Authorization: Bearer {token}\r\n"),
    };
    http_with(addr, method, path, body, &authorization).await
}

/// A request with `headers` (each line ending in CRLF) and no token.
async fn http_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
    headers: &str,
) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{headers}\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response[9..12].parse().unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    (
        status,
        if chunked {
            dechunk(body)
        } else {
            body.to_owned()
        },
    )
}

/// Undo chunked transfer encoding.
fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).expect("chunk size");
        if n == 0 {
            break;
        }
        out.push_str(&tail[..n]);
        rest = &tail[n + 2..];
    }
    out
}

#[actix_rt::test]
async fn debug_endpoint_serves_metrics_tree_logs_and_kill() {
    let journal = Journal::default();
    let (a, actor, _) = probe("a", &journal);
    let tree = start(SupervisorSpec::new(Strategy::OneForOne).child(a)).await;
    actor.ask(Ping).await.unwrap();
    let server = DebugServer::start(
        tree.registry().clone(),
        "127.0.0.1:0".parse().unwrap(),
        "sesame".into(),
    )
    .unwrap();
    let addr = server.addr();

    let openmetrics = "Accept: application/openmetrics-text; version=1.0.0\r\n";
    let (status, body) = http_with(addr, "GET", "/metrics", "", openmetrics).await;
    assert_eq!(status, 200);
    assert_valid_exposition(&body);
    // Anyone else gets the classic text.
    let (status, body) = http(addr, "GET", "/metrics", "").await;
    assert_eq!(status, 200);
    assert_classic_exposition(&body);

    let (status, body) = http(addr, "GET", "/debug/tree", "").await;
    assert_eq!(status, 200);
    let nodes: serde_json::Value = serde_json::from_str(&body).unwrap();
    let a_node = nodes
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["path"] == "/a")
        .unwrap();
    assert_eq!(a_node["state"], "healthy");
    assert_eq!(a_node["generation"], 1);
    assert_eq!(a_node["queue_depth"], 0);

    // Without the token, or with another, nothing is killed.
    for token in ["", "sesamf"] {
        let (status, _) = http_as(
            addr,
            "POST",
            "/debug/kill",
            r#"{"path":"/a","how":"crash"}"#,
            token,
        )
        .await;
        assert_eq!(status, 401, "token {token:?}");
    }
    assert_eq!(generation(&tree, "/a"), 1);
    let (status, _) = http(
        addr,
        "POST",
        "/debug/kill",
        r#"{"path":"/a","how":"crash"}"#,
    )
    .await;
    assert_eq!(status, 202);
    until("restart through the endpoint", || {
        generation(&tree, "/a") == 2
    })
    .await;

    let (status, body) = http(addr, "GET", "/debug/logs?path=/", "").await;
    assert_eq!(status, 200);
    let lines: Vec<String> = serde_json::from_str(&body).unwrap();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("ERRO child failed") && l.contains("child=/a")),
        "{lines:?}"
    );

    let (status, _) = http(
        addr,
        "POST",
        "/debug/kill",
        r#"{"path":"/nope","how":"brutal"}"#,
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = http(
        addr,
        "POST",
        "/debug/kill",
        r#"{"path":"/a","how":"gently"}"#,
    )
    .await;
    assert_eq!(status, 400);
    let (status, _) = http(addr, "GET", "/debug/logs?path=/nope", "").await;
    assert_eq!(status, 404);
    server.stop().await;

    assert!(matches!(
        DebugServer::start(
            tree.registry().clone(),
            "0.0.0.0:0".parse().unwrap(),
            "sesame".into()
        ),
        Err(DebugServerError::NotLoopback(_))
    ));
    tree.shutdown().await;
}

#[actix_rt::test]
async fn log_crate_records_land_in_the_running_actors_ring() {
    let journal = Journal::default();
    let (a, actor, _) = probe("a", &journal);
    let tree = start(SupervisorSpec::new(Strategy::OneForOne).child(a)).await;
    let fallback = slog::Logger::root(slog::Discard, slog::o!());
    assert!(polis_actors::bridge_log_crate(fallback.clone()));
    assert!(
        !polis_actors::bridge_log_crate(fallback),
        "installed once per process"
    );
    actor
        .ask(SayViaLogCrate("hello from a library".into()))
        .await
        .unwrap();
    let lines = tree.registry().logs("/a").unwrap();
    assert_eq!(
        lines.last().map(String::as_str),
        Some("INFO hello from a library target=some_dependency actor=/a")
    );
    tree.kill("/a", Kill::Brutal).unwrap();
    tree.shutdown().await;
}

#[actix_rt::test]
async fn the_tree_lists_each_parent_before_its_children_and_siblings_in_start_order() {
    let journal = Journal::default();
    let (zeta, _, _) = probe("zeta", &journal);
    let (beta, _, _) = probe("beta", &journal);
    let (alpha, _, _) = probe("alpha", &journal);
    let mid = polis_actors::ChildSpec::supervisor(
        "mid",
        SupervisorSpec::new(Strategy::OneForOne).child(beta),
    )
    .0;
    let tree = start(
        SupervisorSpec::new(Strategy::OneForOne)
            .child(zeta)
            .child(mid)
            .child(alpha),
    )
    .await;
    let paths: Vec<String> = tree
        .registry()
        .snapshot()
        .iter()
        .map(|s| s.path.to_string())
        .collect();
    assert_eq!(paths, ["/", "/zeta", "/mid", "/mid/beta", "/alpha"]);
}
