//! `polis-node`: the init process of a Polis node. It runs the node's supervision tree and its
//! loopback debug endpoint until it is told to stop or the tree gives up.
//!
//! As process 1 of a machine it takes no arguments: it prepares the machine itself (`polis::init`),
//! finds its disk and address, runs the same tree, and halts the machine when the tree stops.

use std::net::SocketAddr;
use std::process::ExitCode;

use actix_rt::signal::unix::{signal, SignalKind};
use std::path::PathBuf;

use clap::{ArgGroup, Parser};
use polis::init;
use polis::lifecycle::LifecycleConfig;
use polis::network::AddressSource;
use polis::node::NodeConfig;
use polis::process;
use polis::storage::{DataBackend, NodeRoot, StorageConfig};
use polis::tpm::TpmConfig;
use polis_actors::debug_http::DebugServer;
use polis_actors::{bridge_log_crate, log_panics, terminal_logger, ExitReason, Tree};

/// The TPM of a real machine, through the kernel's resource manager.
const DEFAULT_TPM: &str = "device:/dev/tpmrm0";

/// Run a Polis node.
#[derive(Parser, Debug)]
#[command(version, about)]
#[command(group(ArgGroup::new("data").required(true).args(["data_device", "insecure_data_directory"])))]
struct Args {
    /// The node root: `/` on a real node, a directory for local runs.
    #[arg(long, default_value = "/")]
    root: PathBuf,
    /// The TPM, as a TCTI: `device:/dev/tpmrm0`, or `swtpm:host=127.0.0.1,port=2321`.
    #[arg(
        long,
        default_value = DEFAULT_TPM,
        conflicts_with = "insecure_no_tpm"
    )]
    tpm: String,
    /// Run without a TPM: sealed data is stored in PLAINTEXT. For development only.
    #[arg(long)]
    insecure_no_tpm: bool,
    /// The block device of the LUKS2 data partition.
    #[arg(long)]
    data_device: Option<PathBuf>,
    /// Keep data in a plain directory below the root: NOT ENCRYPTED. For local runs only.
    #[arg(long)]
    insecure_data_directory: bool,
    /// The node's external address, fixed.
    #[arg(long, conflicts_with = "interface")]
    address: Option<std::net::IpAddr>,
    /// The interface whose address is the node's external address.
    #[arg(long, default_value = "eth0")]
    interface: String,
    /// Mount a tmpfs at ROOT/ephemeral (a real node does).
    #[arg(long)]
    ephemeral_tmpfs: bool,
    /// Loopback address of the debug endpoint (/metrics, /debug/tree, /debug/logs, /debug/kill).
    #[arg(long, default_value_t = polis::debug_client::DEBUG_ADDRESS)]
    debug_listen: SocketAddr,
    /// Where QEMU firmware configuration offers node parameters (they win over the ESP's).
    #[arg(long, default_value = polis::lifecycle::FW_CFG_PARAMETERS)]
    fw_cfg: PathBuf,
    /// Set the hostname to the node ID (a real node, or a node in its own UTS namespace).
    #[arg(long)]
    set_hostname: bool,
    /// Also keep this hosts file current, overwriting it in place: a network namespace's
    /// bind-mounted `/etc/hosts`.
    #[arg(long)]
    system_hosts: Option<PathBuf>,
    /// Test hook: SIGKILL this process right after a step of enrolment (`bootstrap:formatted`,
    /// `register:committed`, …), of join (`join:unlocked`, …), of becoming a consensus member
    /// (`role:cuk-sealed`, …), of the Curator's role change (`curator:learner-added`) or of
    /// the decommission reconciler (`decommission:revoked`, …), to prove the step is resumable
    /// (see `polis::crash_point`).
    #[arg(long, hide = true)]
    test_crash_after: Option<String>,
    /// Lowest level of log records written to standard error.
    #[arg(long, default_value = "info", value_parser = parse_level)]
    log_level: slog::Level,
}

fn parse_level(s: &str) -> Result<slog::Level, String> {
    s.parse().map_err(|_| {
        format!("unknown log level {s:?} (critical, error, warning, info, debug, trace)")
    })
}

fn node_config(args: &Args) -> NodeConfig {
    let backend = match &args.data_device {
        Some(device) => DataBackend::Luks2 {
            device: device.clone(),
        },
        None => DataBackend::Directory,
    };
    NodeConfig {
        storage: StorageConfig {
            root: NodeRoot::new(&args.root),
            backend,
            ephemeral_tmpfs: args.ephemeral_tmpfs,
        },
        address: match args.address {
            Some(ip) => AddressSource::Static(ip),
            None => AddressSource::Interface(args.interface.clone()),
        },
        lifecycle: LifecycleConfig {
            root: NodeRoot::new(&args.root),
            fw_cfg: args.fw_cfg.clone(),
            set_hostname: args.set_hostname,
            system_hosts: args.system_hosts.clone(),
        },
        tpm: if args.insecure_no_tpm {
            TpmConfig::InsecureNone
        } else {
            TpmConfig::Tcti(args.tpm.clone())
        },
    }
}

fn main() -> ExitCode {
    if init::is_pid1() {
        machine_init();
    }
    let args = Args::parse();
    let log = terminal_logger(args.log_level);
    bridge_log_crate(log.clone());
    log_panics(log.clone());
    let config = node_config(&args);
    if let Some(step) = args.test_crash_after.clone() {
        polis::crash_point::arm(step);
    }
    if config.tpm == TpmConfig::InsecureNone {
        slog::crit!(
            log,
            "INSECURE: --insecure-no-tpm: this node's secrets are stored in plaintext"
        );
    }
    let reason = actix_rt::System::new().block_on(run(config, args.debug_listen, log.clone()));
    if reason == ExitReason::Shutdown {
        slog::info!(log, "node stopped");
        ExitCode::SUCCESS
    } else {
        slog::crit!(log, "node failed"; "reason" => %reason);
        ExitCode::FAILURE
    }
}

/// `polis-node` as process 1: reaper first (before any other thread), then the machine, the
/// tree, and the halt. Never returns.
fn machine_init() -> ! {
    // SAFETY: no other thread exists yet.
    unsafe { std::env::set_var("PATH", "/usr/sbin:/usr/bin:/sbin:/bin") };
    let log = terminal_logger(slog::Level::Info);
    let reaper = process::reaper::start(log.new(slog::o!("actor" => "/init/reaper")));
    bridge_log_crate(log.clone());
    log_panics(log.clone());
    let root = NodeRoot::new("/");
    slog::info!(log, "polis-node is process 1: preparing the machine");
    // A panic here must not end process 1 (the kernel would panic): it becomes the failure.
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        actix_rt::System::new().block_on(async {
            if let Err(e) = reaper {
                return failed(e.to_string());
            }
            let machine = match init::prepare(&log, &root).await {
                Ok(machine) => machine,
                Err(e) => return failed(e.to_string()),
            };
            let config = machine_config(&root, &machine);
            for event in &machine.cmdline.test_extend_pcr7 {
                slog::crit!(log, "test hook: extending PCR 7, as a firmware update would";
                    "event" => event);
                let extended = polis::tpm::Sealer::connect(DEFAULT_TPM)
                    .and_then(|mut tpm| tpm.extend_pcr7(event.as_bytes()));
                if let Err(e) = extended {
                    return failed(format!("test hook: PCR 7 not extended: {e}"));
                }
            }
            init::debug_port::serve(
                polis::debug_client::DEBUG_ADDRESS,
                root.debug_token(),
                log.clone(),
            );
            let reason = run(config, polis::debug_client::DEBUG_ADDRESS, log.clone()).await;
            let failure = (reason != ExitReason::Shutdown).then(|| reason.to_string());
            let on_stop = machine.cmdline.on_stop(failure.is_none());
            (failure, on_stop)
        })
    }));
    let (failure, on_stop) = outcome
        .unwrap_or_else(|_| failed("polis-node panicked (the panic is logged above)".into()));
    if failure.is_none() {
        slog::info!(log, "the node's tree stopped in order");
    }
    init::halt(&log, failure, on_stop, &root)
}

/// A failure before the tree ran (or a panic): the reason, and what the command line says to do
/// after a failure.
fn failed(reason: String) -> (Option<String>, init::OnStop) {
    (Some(reason), init::Cmdline::read().0.on_stop(false))
}

/// The node on a machine it is init of: LUKS2 on the disk's partition 2, the TPM's device, the
/// configured address, a tmpfs for `ephemeral/`, the hostname set.
fn machine_config(root: &NodeRoot, machine: &init::Machine) -> NodeConfig {
    NodeConfig {
        storage: StorageConfig {
            root: root.clone(),
            backend: DataBackend::Luks2 {
                device: machine.disk.data.clone(),
            },
            ephemeral_tmpfs: true,
        },
        address: AddressSource::Static(machine.net.address),
        lifecycle: LifecycleConfig {
            root: root.clone(),
            fw_cfg: PathBuf::from(polis::lifecycle::FW_CFG_PARAMETERS),
            set_hostname: true,
            system_hosts: None,
        },
        tpm: TpmConfig::Tcti(DEFAULT_TPM.into()),
    }
}

/// Run the node's tree and its debug endpoint until a signal or the tree's own end; answers why
/// the tree stopped.
async fn run(config: NodeConfig, debug_listen: SocketAddr, log: slog::Logger) -> ExitReason {
    let (spec, state) = polis::node::tree_spec(&config);
    let tree = match Tree::start(spec, log.clone()).await {
        Ok(tree) => tree,
        Err(e) => {
            slog::crit!(log, "the node did not start"; "error" => %e);
            return ExitReason::Error {
                message: format!("the node did not start: {e}"),
            };
        }
    };
    let token = match debug_token(&config.storage.root) {
        Ok(token) => token,
        Err(e) => {
            slog::crit!(log, "no debug token"; "error" => %e);
            tree.shutdown().await;
            return ExitReason::Error {
                message: format!("no debug token: {e}"),
            };
        }
    };
    tree.registry()
        .register_metrics(|registry| state.metrics.register(registry));
    let debug = match DebugServer::start(tree.registry().clone(), debug_listen, token) {
        Ok(server) => server,
        Err(e) => {
            slog::crit!(log, "no debug endpoint"; "error" => %e);
            tree.shutdown().await;
            return ExitReason::Error {
                message: format!("no debug endpoint: {e}"),
            };
        }
    };
    slog::info!(log, "node running"; "debug" => %debug.addr());

    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(term), Ok(int)) => (term, int),
        _ => {
            slog::crit!(log, "cannot install signal handlers");
            tree.shutdown().await;
            return ExitReason::Error {
                message: "cannot install signal handlers".into(),
            };
        }
    };
    let reason = tokio::select! {
        _ = term.recv() => stop(&tree, &log, "SIGTERM").await,
        _ = int.recv() => stop(&tree, &log, "SIGINT").await,
        reason = tree.exited() => reason,
    };
    debug.stop().await;
    reason
}

/// A fresh token for the debug endpoint's kills, written to `ephemeral/debug-token` (0400) for
/// root's `polisctl` (the tree has mounted `ephemeral/` by now). Not synced: it is valid for this
/// boot only, and the write runs on the event loop the enrolment has just started on.
fn debug_token(root: &NodeRoot) -> Result<String, String> {
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| "the operating system's random generator failed".to_owned())?;
    let token = polis::pki::hex(&bytes);
    polis::fsutil::write_ephemeral(
        &root.debug_token(),
        token.as_bytes(),
        polis::fsutil::SECRET_MODE,
    )
    .map_err(|e| e.to_string())?;
    Ok(token)
}

async fn stop(tree: &Tree, log: &slog::Logger, signal: &str) -> ExitReason {
    slog::info!(log, "stopping the node"; "signal" => signal);
    tree.shutdown().await
}
