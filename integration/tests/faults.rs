//! Fault injection during a registration: while node 2 registers — waiting for approval, then UP,
//! then a consensus member — every actor of node 0 (the first node, whose Curator and etcd serve
//! the registration) and of node 2 is killed in turn, by crash and brutally. The registration
//! completes, every node comes back healthy, and no record is lost.
//!
//! A round kills the leaves first, then their supervisors, then `/lifecycle`. The lifecycle runs
//! once, so killing it stops the node by design; the round then boots the node again, which also
//! starts the next round with fresh restart intensities (the root gives up after three restarts
//! of `/core` or `/cluster` a minute, as a real node would reboot).

use polis::launch::LocalCluster;
use polis::proto::common::NodeState;
use polis_integration::{polis_node_binary, test_logger};

/// Node `i`'s actors as its debug endpoint reports them: (path, state, generation).
fn actors(cluster: &LocalCluster, i: usize) -> Option<Vec<(String, String, u64)>> {
    let body = cluster.debug(i, "GET", "/debug/tree", "").ok()?;
    let tree: Vec<serde_json::Value> = serde_json::from_str(&body).ok()?;
    Some(
        tree.iter()
            .map(|a| {
                (
                    a["path"].as_str().unwrap_or_default().to_owned(),
                    a["state"].as_str().unwrap_or_default().to_owned(),
                    a["generation"].as_u64().unwrap_or_default(),
                )
            })
            .collect(),
    )
}

/// Wait until node `i` runs every actor in `expected` healthy (none lost to a restart of its
/// supervisor), every actor that is not stopped is healthy, and `killed` (a path and its generation when it was killed), if any, came back.
async fn healthy(
    cluster: &LocalCluster,
    i: usize,
    expected: &[String],
    killed: Option<(&str, u64)>,
) {
    cluster
        .until(i, "be healthy again", || async {
            let actors = actors(cluster, i)?;
            let all = actors
                .iter()
                .all(|(_, state, _)| state == "healthy" || state == "stopped");
            let present = expected
                .iter()
                .all(|path| actors.iter().any(|(p, s, _)| p == path && s == "healthy"));
            let restarted = killed.is_none_or(|(path, before)| {
                actors.iter().any(|(p, _, g)| p == path && *g > before)
            });
            (all && present && restarted).then_some(())
        })
        .await
        .unwrap();
}

/// Kill every actor of node `i` by `how`, leaves first, `/lifecycle` last; boot the node again
/// after that. `expected` names actors the node must run before the round starts (what the
/// lifecycle adds to `/cluster` at this stage). Answers how many actors were killed.
async fn round(cluster: &mut LocalCluster, i: usize, how: &str, expected: &[String]) -> usize {
    healthy(cluster, i, expected, None).await;
    let mut paths: Vec<String> = actors(cluster, i)
        .unwrap()
        .into_iter()
        .filter(|(path, state, _)| path != "/" && path != "/lifecycle" && state == "healthy")
        .map(|(path, _, _)| path)
        .collect();
    paths.sort_by_key(|path| std::cmp::Reverse(path.matches('/').count()));
    for path in &paths {
        let generation = actors(cluster, i)
            .unwrap()
            .into_iter()
            .find(|(p, _, _)| p == path)
            .map(|(_, _, g)| g)
            .unwrap();
        let body = serde_json::json!({ "path": path, "how": how }).to_string();
        cluster.debug(i, "POST", "/debug/kill", &body).unwrap();
        healthy(cluster, i, &paths, Some((path, generation))).await;
    }
    let body = serde_json::json!({ "path": "/lifecycle", "how": how }).to_string();
    cluster.debug(i, "POST", "/debug/kill", &body).unwrap();
    let status = cluster.wait_exit(i).unwrap();
    assert!(!status.success(), "node {i} stops when its lifecycle dies");
    cluster.start(i, &[]).unwrap();
    healthy(cluster, i, &paths, None).await;
    eprintln!("node {i}: {how} of {paths:?} and /lifecycle: recovered");
    paths.len() + 1
}

/// Both nodes, by both means; node 2 must run `node2` (node 0, a consensus member, runs its
/// whole `/cluster`).
async fn rounds(cluster: &mut LocalCluster, node2: &[&str]) {
    let member: Vec<String> = MEMBER.iter().map(|p| p.to_string()).collect();
    let node2: Vec<String> = node2.iter().map(|p| p.to_string()).collect();
    for how in ["crash", "brutal"] {
        for (i, expected) in [(0, &member), (2, &node2)] {
            let killed = round(cluster, i, how, expected).await;
            assert!(killed >= 6, "node {i}: only {killed} actors to kill");
        }
    }
}

/// What a consensus member runs in `/cluster`.
const MEMBER: [&str; 4] = [
    "/cluster/hostsfile",
    "/cluster/consensus",
    "/cluster/pki",
    "/cluster/curator",
];

/// The records as node `i`'s Curator tells the owner, once it answers: (id, state), sorted.
async fn records(cluster: &LocalCluster, i: usize) -> Vec<(String, i32)> {
    let mut nodes: Vec<(String, i32)> = cluster
        .until(i, "answer GetNodes", || async {
            cluster.owner(i).await.ok()?.nodes().await.ok()
        })
        .await
        .unwrap()
        .into_iter()
        .map(|n| (n.id, n.state))
        .collect();
    nodes.sort();
    nodes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_completes_while_every_actor_of_two_nodes_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster =
        LocalCluster::create(dir.path(), 3, &polis_node_binary(), test_logger()).unwrap();
    let owner = cluster.bootstrap().await.unwrap();
    cluster.register(1, &owner).await.unwrap();

    // Node 2 registered and waiting for approval.
    let node = cluster.start_registration(2, &owner).await.unwrap();
    rounds(&mut cluster, &[]).await;
    assert!(
        records(&cluster, 1)
            .await
            .contains(&(node.id.clone(), NodeState::New as i32)),
        "node 2 is still NEW"
    );

    // Approved and UP, not yet a consensus member.
    let owner = cluster.owner(1).await.unwrap();
    cluster.approve(2, &owner, &node).await.unwrap();
    rounds(&mut cluster, &["/cluster/hostsfile"]).await;

    // A consensus member.
    let owner = cluster.owner(1).await.unwrap();
    cluster
        .make_consensus_member(2, &owner, &node.id)
        .await
        .unwrap();
    rounds(&mut cluster, &MEMBER).await;

    // Nothing lost: three records, all UP, and every Curator answers with all three.
    let expected: Vec<String> = {
        let mut ids: Vec<String> = (0..3).map(|i| cluster.nodes[i].id().unwrap()).collect();
        ids.sort();
        ids
    };
    for i in 0..3 {
        let records = records(&cluster, i).await;
        assert_eq!(
            records.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>(),
            expected,
            "node {i}'s Curator"
        );
        assert!(
            records.iter().all(|(_, s)| *s == NodeState::Up as i32),
            "{records:?}"
        );
    }
    assert_eq!(cluster.nodes[2].id().unwrap(), node.id);
}
