//! Harness for multi-node tests of Polis: the binary under test, the tests' logger, and what
//! several cluster tests read and wait for.

/// The `polis-node` binary that `cargo test --workspace` built beside this test's executable.
pub fn polis_node_binary() -> std::path::PathBuf {
    binary("polis-node")
}

/// The `polisctl` binary built beside the tests.
pub fn polisctl_binary() -> std::path::PathBuf {
    binary("polisctl")
}

/// The workspace binary `name`, built beside the tests.
fn binary(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let binary = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|profile| profile.join(name))
        .expect("a target directory");
    assert!(
        binary.exists(),
        "{} is missing: run `cargo build --bins` (or `cargo test --workspace`) first",
        binary.display()
    );
    binary
}

/// A logger that writes to the test's standard error at info level.
pub fn test_logger() -> slog::Logger {
    polis_actors::terminal_logger(slog::Level::Info)
}

/// Debian's kernel and an initramfs with the `polis-node` under test, built into `dir`.
pub fn vm_image(dir: &std::path::Path) -> (polis::vm::Kernel, std::path::PathBuf) {
    let kernel = polis::vm::Kernel::installed().expect("linux-image-amd64 (scripts/setup.sh)");
    let initramfs = dir.join("initramfs.cpio.gz");
    polis::vm::build_initramfs(&polis_node_binary(), &kernel, &initramfs)
        .expect("the initramfs builds");
    (kernel, initramfs)
}

/// How long a test waits for a decommissioned node's retirement: it bounds a hang and decides
/// nothing else (the reconciler retries until it is done).
pub const RETIREMENT_PATIENCE: std::time::Duration = std::time::Duration::from_secs(300);

/// Node `i`'s log so far (one file across its restarts).
pub fn log_of(cluster: &polis::launch::LocalCluster, i: usize) -> String {
    std::fs::read_to_string(cluster.nodes[i].log_file()).unwrap()
}

/// Boot node `i`, which must stop with a failure; answers what it logged in this boot.
pub fn boot_failing(cluster: &mut polis::launch::LocalCluster, i: usize) -> String {
    let before = log_of(cluster, i).len();
    cluster.start(i, &[]).unwrap();
    let status = cluster.wait_exit(i).unwrap();
    let log = log_of(cluster, i)[before..].to_owned();
    assert!(
        !status.success(),
        "node {i} did not fail: {status:?}\n{log}"
    );
    log
}

/// Wait until each of the first `members` consensus members has dropped its sealed CUK, as every
/// other member holds a confirmed share of it (quorum unlock).
pub async fn until_cuks_escrowed(cluster: &polis::launch::LocalCluster, members: usize) {
    for i in 0..members {
        cluster
            .until(i, "drop its sealed cluster unlock key", || async {
                log_of(cluster, i)
                    .contains("its peers hold confirmed shares of it")
                    .then_some(())
            })
            .await
            .unwrap();
    }
}

/// Wait until node `i` follows its record: its lifecycle has heard from its Watch
/// (`polis_lifecycle_done 1` on its metrics), so that Watch is open and a Curator has noted the
/// node as seen. (The enrolment's last log line comes before the Watch opens.)
pub async fn until_following(cluster: &polis::launch::LocalCluster, i: usize) {
    cluster
        .until(i, "follow its record", || async {
            let metrics = cluster.debug(i, "GET", "/metrics", "").ok()?;
            metrics
                .lines()
                .any(|line| line == "polis_lifecycle_done 1")
                .then_some(())
        })
        .await
        .unwrap();
}

/// A channel to node `i`'s Curator as an unknown client: pinned to `ca`, presenting an
/// ephemeral certificate of `key` (as a registering node, or one whose keys are locked away).
pub async fn dial_curator(
    cluster: &polis::launch::LocalCluster,
    i: usize,
    ca: &[u8],
    key: &ed25519_dalek::SigningKey,
) -> Result<tonic::transport::Channel, String> {
    use polis::tls::{curator_client_config, Identity, Trust};
    let trust = Trust::pinned(ca.to_vec());
    let identity = Identity::ephemeral(key).map_err(|e| e.to_string())?;
    let config = curator_client_config(Some(identity), &trust).map_err(|e| e.to_string())?;
    let addr = std::net::SocketAddr::new(cluster.nodes[i].address, polis::curator::CURATOR_PORT);
    let name = cluster.nodes[i].id().ok_or("the node has no ID yet")?;
    polis::grpc::channel(addr, &name, config)
        .await
        .map_err(|e| e.to_string())
}

/// `polisctl ARGS` with `config` as its XDG configuration directory and no local cluster, its
/// output echoed to the test's.
pub fn polisctl(config: &std::path::Path, args: &[&str]) -> std::process::Output {
    let output = std::process::Command::new(polisctl_binary())
        .env("XDG_CONFIG_HOME", config)
        .args(["--dir", "/nonexistent/polis-cluster"])
        .args(args)
        .output()
        .unwrap();
    eprintln!(
        "polisctl {args:?}: {}\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}
