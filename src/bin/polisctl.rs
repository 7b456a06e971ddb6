//! `polisctl`: operate Polis. It launches a local cluster in network namespaces, takes
//! ownership of a cluster and makes the owner's calls to any cluster (nodes, ticket, approve,
//! decommission), and reads and drives a node's debug endpoint: its supervision tree, its
//! metrics, an actor's logs, and fault injection.

#[path = "polisctl/cluster.rs"]
mod cluster;
#[path = "polisctl/owner.rs"]
mod owner;
#[path = "polisctl/table.rs"]
mod table;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use polis::debug_client::{read_token, request, request_port, DebugClientError};
use polis::netns::{within, NetError};
use polis::storage::NodeRoot;

/// Operate Polis nodes.
#[derive(Parser, Debug)]
#[command(name = "polisctl", version)]
struct Cli {
    /// The node's debug endpoint.
    #[arg(long, global = true, default_value_t = polis::debug_client::DEBUG_ADDRESS)]
    debug: SocketAddr,
    /// The root of the node whose endpoint `--debug` names: its `ephemeral/debug-token`
    /// authorizes kill-actor.
    #[arg(long, global = true, default_value = "/")]
    node_root: PathBuf,
    /// The local cluster's directory (`launch` creates it; the owner's commands use the cluster
    /// launched there, unless --endpoint or --cluster names another).
    #[arg(long, global = true, default_value = "/tmp/polis-cluster")]
    dir: PathBuf,
    /// A Curator of the cluster to manage, HOST or HOST:PORT (port 7835 if none); repeat for
    /// more. With --credentials.
    #[arg(long, global = true)]
    endpoint: Vec<String>,
    /// The directory of the owner's credentials (owner.key, owner.crt, ca.crt), as
    /// take-ownership writes it.
    #[arg(long, global = true)]
    credentials: Option<PathBuf>,
    /// A cluster of the clusters file ($XDG_CONFIG_HOME/polis/clusters.json), by name.
    #[arg(long, global = true)]
    cluster: Option<String>,
    /// Run a debug command against node N of the local cluster (inside its namespace).
    #[arg(long, global = true)]
    node: Option<usize>,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = Output::Human)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Output {
    Human,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Launch a local cluster of N nodes and keep it running until `polisctl stop` or Ctrl-C.
    Launch {
        /// How many nodes.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// How many of them are consensus members (etcd voters); the rest are workers, registered
        /// and approved all at once. Default: min(N, 3).
        #[arg(long)]
        consensus: Option<usize>,
        /// Run each node as a QEMU VM (polis-node as PID 1, a LUKS2 disk, swtpm as its TPM)
        /// instead of a process in a network namespace.
        #[arg(long)]
        vm: bool,
    },
    /// Stop the local cluster that `launch` runs.
    Stop,
    /// Chaos soak: launch a local cluster (NODES consensus members and a spare slot for
    /// registrations) in --dir, inject KILLS seeded faults while a workload runs, check every
    /// invariant after each, and report recovery times. Exits 1 on a violation, keeping --dir.
    Chaos {
        /// How many faults.
        #[arg(long, default_value_t = 60)]
        kills: usize,
        /// The schedule's seed: the same seed gives the same faults.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// How many consensus members.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Stop after this many seconds even if fewer faults were injected.
        #[arg(long)]
        duration: Option<u64>,
    },
    /// Failover, measured: launch NODES consensus members in --dir and lose one per round
    /// (`kill -9`; every other round etcd's leader); report how soon a survivor's Curator
    /// answers and how soon the lost node, booted again, is back. Exits 1 if one is not.
    Failover {
        /// How many rounds.
        #[arg(long, default_value_t = 10)]
        rounds: usize,
        /// How many consensus members.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
    },
    /// Performance against its floors, interleaved in one run: cold bootstrap and restart against
    /// a bare etcd (same command line), Polis's overhead outside its etcd, an idle node's memory,
    /// and launch time against N. Replaces --dir. (In-process actor figures: `cargo bench -p
    /// polis-actors --bench mailbox`.)
    Bench {
        /// Rounds of the start measures.
        #[arg(long, default_value_t = 9)]
        rounds: usize,
        /// Cluster sizes to launch, e.g. `--launch 3,6,12` (none: `--launch 0`).
        #[arg(long, value_delimiter = ',', default_value = "3,6,12")]
        launch: Vec<usize>,
    },
    /// Take ownership of a new cluster (Escrow with the owner key named at its bootstrap): meet
    /// its CA at --endpoint, trusted only by its fingerprint (--ca-fingerprint, or confirmed on
    /// the terminal); keep the credentials in --credentials (default: the config directory's
    /// polis/NAME) and the cluster in the clusters file as NAME, made current.
    TakeOwnership {
        /// The owner key: a file of its 32-byte Ed25519 seed.
        #[arg(long)]
        owner_key: PathBuf,
        /// The SHA-256 fingerprint of the cluster CA's certificate (hex; colons allowed).
        #[arg(long)]
        ca_fingerprint: Option<String>,
        /// The cluster's name in the clusters file.
        #[arg(long, default_value = "default")]
        name: String,
    },
    /// List the cluster's nodes (owner call).
    Nodes,
    /// Print the current register ticket in hex (owner call).
    Ticket {
        /// Replace it first: the old ticket registers no node from now on.
        #[arg(long)]
        rotate: bool,
    },
    /// Approve a NEW node by its public key in hex (owner call).
    Approve {
        /// The node's public key, hex.
        pubkey: String,
    },
    /// List the PCR 7 values nodes ask to have approved (owner call): each node whose Secure Boot
    /// state changed since it enrolled, with the value approved last and the one it asks for.
    PcrRequests,
    /// Approve the PCR 7 value node ID asks for, as `pcr-requests` shows it (owner call): the
    /// cluster signs it, and the node unseals and rejoins. With --refuse, refuse it: the node
    /// stops.
    ApprovePcr {
        /// The node ID.
        id: String,
        /// Refuse the value instead.
        #[arg(long)]
        refuse: bool,
    },
    /// Decommission a node by ID (owner call): it can never join again.
    Decommission {
        /// The node ID.
        id: String,
    },
    /// Show a node's supervision tree with each actor's state.
    Tree {
        /// The local cluster's node (as --node).
        node: Option<usize>,
    },
    /// Print a node's metrics in Prometheus text.
    Metrics {
        /// The local cluster's node (as --node).
        node: Option<usize>,
    },
    /// Print an actor's recent log lines.
    Logs {
        /// `[NODE] PATH`: the local cluster's node (as --node), and the actor's path, e.g. /core.
        #[arg(num_args = 1..=2, required = true, value_name = "[NODE] PATH")]
        target: Vec<String>,
    },
    /// Fault injection: kill an actor; its supervisor reacts as to a real failure.
    KillActor {
        /// `[NODE] PATH`: the local cluster's node (as --node), and the actor's path, e.g. /core.
        #[arg(num_args = 1..=2, required = true, value_name = "[NODE] PATH")]
        target: Vec<String>,
        /// How: crash (panics like a bug) or brutal (stopped at once).
        #[arg(long, value_enum, default_value_t = How::Crash)]
        how: How,
    },
    /// Print a completion script for SHELL, e.g. `polisctl completions bash >
    /// /etc/bash_completion.d/polisctl`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print polisctl's manual page (roff), e.g. `polisctl man | man -l -`.
    Man,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum How {
    Crash,
    Brutal,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("polisctl: {e}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error(transparent)]
    Cluster(#[from] cluster::ClusterError),
    #[error(transparent)]
    Debug(#[from] DebugClientError),
    #[error("the node at {0} sent JSON that polisctl cannot read: {1}")]
    Json(SocketAddr, serde_json::Error),
    #[error(transparent)]
    Net(#[from] NetError),
    #[error("{0:?} is not a node number")]
    NotANode(String),
    #[error("an invariant did not hold; the cluster's files are kept in {}", .0.display())]
    Violations(PathBuf),
    #[error("cannot write to standard output: {0}")]
    Output(std::io::Error),
    #[error("{0}")]
    Usage(String),
}

/// `[NODE] PATH` as (node, path).
fn node_and_path(target: &[String]) -> Result<(Option<usize>, &str), CliError> {
    match target {
        [node, path] => Ok((
            Some(node.parse().map_err(|_| CliError::NotANode(node.clone()))?),
            path,
        )),
        [path] => Ok((None, path)),
        _ => Err(CliError::NotANode(target.join(" "))),
    }
}

fn run(cli: &Cli) -> Result<(), CliError> {
    let addr = cli.debug;
    // For a node of the local cluster, the request is made from inside its network namespace,
    // where its debug endpoint listens on loopback.
    let debug = |node: Option<usize>, method: &str, path: &str, body: &str| match node.or(cli.node)
    {
        Some(n) => match cluster::debug_route(&cli.dir, n)? {
            cluster::DebugRoute::Namespace(namespace, token) => Ok(within(&namespace, || {
                request(addr, token.as_deref(), method, path, body)
            })??),
            cluster::DebugRoute::Port(socket) => Ok(request_port(&socket, method, path, body)?),
        },
        None => {
            let token = read_token(&NodeRoot::new(&cli.node_root));
            Ok::<_, CliError>(request(addr, token.as_deref(), method, path, body)?)
        }
    };
    // The cluster the owner's commands are for.
    let target = || {
        owner::Target::choose(
            &cli.endpoint,
            cli.credentials.as_deref(),
            cli.cluster.as_deref(),
            &cli.dir,
        )
    };
    match &cli.command {
        Command::Launch {
            nodes,
            consensus,
            vm,
        } => {
            let consensus = consensus.unwrap_or((*nodes).min(3));
            cluster::launch(&cli.dir, *nodes, consensus, *vm)?
        }
        Command::Stop => cluster::stop(&cli.dir)?,
        Command::Bench { rounds, launch } => cluster::bench(
            &cli.dir,
            *rounds,
            launch,
            matches!(cli.output, Output::Json),
        )?,
        Command::Failover { rounds, nodes } => {
            let json = matches!(cli.output, Output::Json);
            if !cluster::failover(&cli.dir, *nodes, *rounds, json)? {
                return Err(CliError::Violations(cli.dir.clone()));
            }
        }
        Command::Chaos {
            kills,
            seed,
            nodes,
            duration,
        } => {
            let config = polis::chaos::ChaosConfig {
                kills: *kills,
                seed: *seed,
                duration: duration.map(std::time::Duration::from_secs),
                spare: Some(*nodes),
                ..polis::chaos::ChaosConfig::default()
            };
            let json = matches!(cli.output, Output::Json);
            if cluster::chaos(&cli.dir, *nodes, &config, json)? > 0 {
                return Err(CliError::Violations(cli.dir.clone()));
            }
        }
        Command::TakeOwnership {
            owner_key,
            ca_fingerprint,
            name,
        } => {
            let [endpoint] = cli.endpoint.as_slice() else {
                return Err(CliError::Usage(
                    "take-ownership needs one --endpoint".into(),
                ));
            };
            let credentials = match &cli.credentials {
                Some(dir) => dir.clone(),
                None => polis::clusters::Clusters::path()
                    .map_err(cluster::ClusterError::from)?
                    .with_file_name(name),
            };
            owner::take_ownership(
                endpoint,
                owner_key,
                ca_fingerprint.as_deref(),
                &credentials,
                name,
                matches!(cli.output, Output::Json),
            )?
        }
        Command::Nodes => owner::nodes(&target()?, matches!(cli.output, Output::Json))?,
        Command::Ticket { rotate } => {
            owner::ticket(&target()?, *rotate, matches!(cli.output, Output::Json))?
        }
        Command::Approve { pubkey } => owner::approve(&target()?, pubkey)?,
        Command::Decommission { id } => owner::decommission(&target()?, id)?,
        Command::PcrRequests => {
            owner::pcr_requests(&target()?, matches!(cli.output, Output::Json))?
        }
        Command::ApprovePcr { id, refuse } => owner::approve_pcr(&target()?, id, !refuse)?,
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(*shell, &mut command, "polisctl", &mut std::io::stdout());
        }
        Command::Man => {
            let command = <Cli as clap::CommandFactory>::command();
            clap_mangen::Man::new(command)
                .render(&mut std::io::stdout())
                .map_err(CliError::Output)?;
        }
        Command::Metrics { node } => print!("{}", debug(*node, "GET", "/metrics", "")?),
        Command::Tree { node } => {
            let body = debug(*node, "GET", "/debug/tree", "")?;
            match cli.output {
                Output::Json => println!("{body}"),
                Output::Human => {
                    let nodes: Vec<serde_json::Value> =
                        serde_json::from_str(&body).map_err(|e| CliError::Json(addr, e))?;
                    print_tree(&nodes);
                }
            }
        }
        Command::Logs { target } => {
            let (node, path) = node_and_path(target)?;
            let body = debug(
                node,
                "GET",
                &format!("/debug/logs?path={}", encode(path)),
                "",
            )?;
            match cli.output {
                Output::Json => println!("{body}"),
                Output::Human => {
                    let lines: Vec<String> =
                        serde_json::from_str(&body).map_err(|e| CliError::Json(addr, e))?;
                    lines.iter().for_each(|l| println!("{l}"));
                }
            }
        }
        Command::KillActor { target, how } => {
            let (node, path) = node_and_path(target)?;
            let how = match how {
                How::Crash => "crash",
                How::Brutal => "brutal",
            };
            let body = serde_json::json!({ "path": path, "how": how }).to_string();
            print!("{}", debug(node, "POST", "/debug/kill", &body)?);
        }
    }
    Ok(())
}

/// One line per actor, indented by depth: path, state, generation, restarts, queue depth.
fn print_tree(nodes: &[serde_json::Value]) {
    let rows: Vec<[String; 5]> = nodes
        .iter()
        .map(|node| {
            let path = node["path"].as_str().unwrap_or("?");
            let (depth, name) = match path {
                "/" => (0, "/"),
                _ => (
                    path.matches('/').count(),
                    path.rsplit('/').next().unwrap_or(path),
                ),
            };
            let restarts: u64 = node["restarts"]
                .as_object()
                .map(|r| r.values().filter_map(|v| v.as_u64()).sum())
                .unwrap_or(0);
            let number = |field: &str| node[field].as_i64().map_or("?".into(), |n| n.to_string());
            [
                format!("{}{name}", "  ".repeat(depth)),
                node["state"].as_str().unwrap_or("?").to_owned(),
                number("generation"),
                restarts.to_string(),
                number("queue_depth"),
            ]
        })
        .collect();
    let header = ["ACTOR", "STATE", "GEN", "RESTARTS", "QUEUE"].map(str::to_owned);
    print!("{}", table::table(&header, &rows));
}

/// Percent-encode a path for a query string.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'/' | b'-' | b'_' | b'.' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_manual_and_the_completions_cover_every_subcommand() {
        Cli::command().debug_assert();
        let mut man = Vec::new();
        clap_mangen::Man::new(Cli::command())
            .render(&mut man)
            .unwrap();
        let man = String::from_utf8(man).unwrap();
        assert!(man.contains(".TH polisctl 1"), "{man}");
        let mut bash = Vec::new();
        clap_complete::generate(
            clap_complete::Shell::Bash,
            &mut Cli::command(),
            "polisctl",
            &mut bash,
        );
        let bash = String::from_utf8(bash).unwrap();
        for sub in Cli::command().get_subcommands() {
            let name = sub.get_name();
            let roff = name.replace('-', "\\-");
            assert!(man.contains(&roff), "{name} not in the manual");
            assert!(bash.contains(name), "{name} not in the bash completions");
        }
    }
}
