//! A local cluster for `polisctl launch` and the cluster tests, of one of two kinds of machine:
//!
//! - processes: each `polis-node` in its own network and UTS namespace ([`ClusterNetwork`]), with
//!   its own swtpm (on the namespace's loopback), its own node root and the `directory` storage
//!   backend;
//! - VMs: each node a QEMU VM with `polis-node` as PID 1, a LUKS2 disk and swtpm as its TPM, on
//!   TAP devices in one namespace ([`crate::vm`]).
//!
//! Either way it bootstraps node 0, takes ownership, and registers, approves and promotes the
//! others. Processes are started so that their real PID is known, and ended by that PID.

use std::fs::File;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::curator::CURATOR_PORT;
use crate::debug_client::{read_token, request, request_port, DebugClientError, DEBUG_ADDRESS};
use crate::fsutil::{self, FsError, PUBLIC_MODE};
use crate::issuer::Lifetimes;
use crate::netns::{enter, within, ClusterNetwork, NetError};
use crate::owner::{self, escrow_over, first_use, Credentials, CuratorAddress, Owner, OwnerError};
use crate::pki::{generate_key, node_id, CredentialsError, NodeCredentials};
use crate::poll::Poll;
use crate::proto::api::node_parameters::Network;
use crate::proto::api::node_parameters::{Cluster, ClusterBootstrap, ClusterRegister};
use crate::proto::api::{Node as ApiNode, NodeParameters};
use crate::proto::common::NodeState;
use crate::storage::{Esp, EspError, NodeRoot};
use crate::vm::{make_disk, ImageError, Vm, VmConfig, VmError};

/// The swtpm port inside every node's namespace (the control channel is the next one).
const SWTPM_PORT: u16 = 2321;
/// How long a node gets for each step before the launch gives up.
const STEP_TIMEOUT: Duration = Duration::from_secs(180);
/// How often a step's progress is probed (each probe is a Curator call or a connection).
const STEP_POLL: Duration = Duration::from_millis(50);
/// How many of a node's last log lines a timeout reports.
const TAIL_LINES: usize = 40;

/// Why the local cluster could not be launched or driven.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The network namespaces could not be made.
    #[error(transparent)]
    Net(#[from] NetError),
    /// A node's debug endpoint failed.
    #[error(transparent)]
    Debug(#[from] DebugClientError),
    /// A file could not be written or read.
    #[error(transparent)]
    Fs(#[from] FsError),
    /// An ESP file could not be written.
    #[error(transparent)]
    Esp(#[from] EspError),
    /// Node credentials could not be read.
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    /// A process could not be started.
    #[error("cannot start {what}: {reason}")]
    Spawn {
        /// The process.
        what: String,
        /// Why.
        reason: String,
    },
    /// An owner call failed.
    #[error(transparent)]
    Owner(#[from] OwnerError),
    /// A node did not get where it should in time; its log says why, and its last lines are
    /// kept here (a test's log file is gone with its directory).
    #[error("node {node} did not {what} within {} s; see {log}, which ended with:\n{tail}", STEP_TIMEOUT.as_secs())]
    Timeout {
        /// The node's index.
        node: usize,
        /// What it did not do.
        what: &'static str,
        /// Its log file.
        log: String,
        /// The log's last lines.
        tail: String,
    },
    /// The node's `polis-node` is not running (or was already reaped).
    #[error("node {0} is not running")]
    NotRunning(usize),
    /// A key could not be made.
    #[error(transparent)]
    Pki(#[from] crate::pki::PkiError),
    /// A VM's image or disk could not be made.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// A VM failed.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// A node's TPM refused what the harness asked of it.
    #[error("node {node}'s TPM: {source}")]
    Tpm {
        /// The node.
        node: usize,
        /// What the TPM said.
        source: crate::tpm::TpmError,
    },
}

/// How a local cluster's nodes run.
#[derive(Clone, Debug)]
pub enum Machines {
    /// `polis-node` processes in namespaces (this binary), with the insecure directory backend.
    Processes {
        /// The `polis-node` binary.
        binary: PathBuf,
    },
    /// QEMU VMs booting this kernel and initramfs, `polis-node` as PID 1 on a LUKS2 disk.
    Vms {
        /// Debian's kernel image.
        kernel: PathBuf,
        /// The Polis initramfs ([`crate::vm::build_initramfs`]).
        initramfs: PathBuf,
    },
}

/// The size of a VM's disk, in MiB (sparse: only what is written takes space).
const VM_DISK_MIB: u64 = 2048;
/// A VM's memory, in MiB.
const VM_MEMORY_MIB: u32 = 1024;

/// One node of the local cluster.
pub struct LocalNode {
    /// Its network namespace.
    pub namespace: String,
    /// Its address on the bridge.
    pub address: IpAddr,
    /// Its node root (for a VM: its directory, with `disk.img` and `console.log`).
    pub root: NodeRoot,
    swtpm: Option<Child>,
    process: Option<Child>,
    /// A VM's configuration (its parameters offered over fw_cfg) and the VM while it runs.
    vm: Option<(VmConfig, Option<Vm>)>,
    /// Its node ID, once learnt from the cluster (a VM's credentials are on its encrypted disk).
    known_id: Option<String>,
}

impl LocalNode {
    fn dir(&self) -> &Path {
        self.root.path()
    }

    /// Its log file (a VM's serial console).
    pub fn log_file(&self) -> PathBuf {
        match &self.vm {
            Some((config, _)) => config.console(),
            None => self.dir().join("node.log"),
        }
    }

    /// A VM's debug port socket on the host.
    pub fn debug_socket(&self) -> Option<PathBuf> {
        self.vm.as_ref().map(|(config, _)| config.debug_socket())
    }

    /// Its node ID, once it has credentials (or, for a VM, once the cluster named it).
    pub fn id(&self) -> Option<String> {
        if let Some(id) = &self.known_id {
            return Some(id.clone());
        }
        let credentials = NodeCredentials::load(&self.root).ok()??;
        Some(node_id(&credentials.key.verifying_key()))
    }

    /// The real PID of its `polis-node`, while it runs.
    pub fn pid(&self) -> Option<i32> {
        self.process.as_ref().and_then(real_pid)
    }
}

/// The real PID of a child that `ClusterNetwork::command` started: the program itself, which
/// entered its namespaces before exec (until reaped, it cannot name another process).
fn real_pid(child: &Child) -> Option<i32> {
    i32::try_from(child.id()).ok()
}

/// The local cluster: network, nodes, and the owner's credentials.
pub struct LocalCluster {
    dir: PathBuf,
    machines: Machines,
    net: ClusterNetwork,
    /// The nodes, by index.
    pub nodes: Vec<LocalNode>,
    owner_key: SigningKey,
    log: slog::Logger,
    poll_every: Duration,
    /// The certificate lifetimes bootstrap asks for (none: the cluster's defaults).
    certificate_lifetimes: Option<Lifetimes>,
}

impl LocalCluster {
    /// Make the network and the node roots for `n` nodes under `dir`, running `binary`
    /// (`polis-node`).
    pub fn create(
        dir: &Path,
        n: usize,
        binary: &Path,
        log: slog::Logger,
    ) -> Result<Self, LaunchError> {
        let machines = Machines::Processes {
            binary: binary.to_owned(),
        };
        Self::create_with(dir, n, machines, log)
    }

    /// Make the network, node directories and disks for `n` nodes of the kind `machines` says.
    /// For VMs, the calling thread joins the VMs' network namespace, so that its connections (the
    /// owner's calls) reach the bridge; run the cluster from a thread of its own.
    pub fn create_with(
        dir: &Path,
        n: usize,
        machines: Machines,
        log: slog::Logger,
    ) -> Result<Self, LaunchError> {
        let vms = matches!(machines, Machines::Vms { .. });
        let net = match vms {
            true => ClusterNetwork::create_for_vms(n)?,
            false => ClusterNetwork::create(n)?,
        };
        let owner_key = generate_key()?;
        owner::save_key(dir, &owner_key)?;
        let mut nodes = Vec::new();
        for (i, node) in net.nodes().iter().enumerate() {
            let root = dir.join(format!("node{i}"));
            let vm = match &machines {
                Machines::Vms { kernel, initramfs } => {
                    std::fs::create_dir_all(&root).map_err(|e| FsError::new("create", &root, e))?;
                    let config = VmConfig {
                        dir: root.clone(),
                        kernel: kernel.clone(),
                        initramfs: initramfs.clone(),
                        parameters: None,
                        memory_mib: VM_MEMORY_MIB,
                        on_stop: "poweroff",
                        pcr7_events: Vec::new(),
                    };
                    make_disk(&config.disk(), VM_DISK_MIB)?;
                    Some((config, None))
                }
                Machines::Processes { .. } => {
                    // The node's process sees /etc/netns/<ns>/hosts as its /etc/hosts (as under
                    // `ip netns exec`).
                    let etc = PathBuf::from("/etc/netns")
                        .join(&node.namespace)
                        .join("hosts");
                    fsutil::write_atomic(&etc, b"127.0.0.1 localhost\n", PUBLIC_MODE)?;
                    None
                }
            };
            nodes.push(LocalNode {
                namespace: node.namespace.clone(),
                address: IpAddr::V4(node.address),
                root: NodeRoot::new(root),
                swtpm: None,
                process: None,
                vm,
                known_id: None,
            });
        }
        if vms {
            enter(&nodes[0].namespace)?;
        }
        Ok(LocalCluster {
            dir: dir.to_owned(),
            machines,
            net,
            nodes,
            owner_key,
            log,
            poll_every: STEP_POLL,
            certificate_lifetimes: None,
        })
    }

    /// The directory everything lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Node `i`'s root directory on this host (its disk, for a node run as a process).
    pub fn root(&self, i: usize) -> &NodeRoot {
        &self.nodes[i].root
    }

    /// The owner key (its seed is in `owner.key`).
    pub fn owner_key(&self) -> &SigningKey {
        &self.owner_key
    }

    /// Start node `i`: boot its VM, or start its swtpm (once) and its `polis-node` with `extra`
    /// arguments.
    pub fn start(&mut self, i: usize, extra: &[&str]) -> Result<(), LaunchError> {
        let binary = match &self.machines {
            Machines::Processes { binary } => binary.clone(),
            Machines::Vms { .. } => return self.boot_vm(i),
        };
        self.ensure_swtpm(i)?;
        let node = &self.nodes[i];
        let mut args: Vec<String> = vec![
            "--root".into(),
            node.dir().display().to_string(),
            "--tpm".into(),
            format!("swtpm:host=127.0.0.1,port={SWTPM_PORT}"),
            "--interface".into(),
            "eth0".into(),
            "--insecure-data-directory".into(),
            "--set-hostname".into(),
            "--system-hosts".into(),
            "/etc/hosts".into(),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        let child = self.spawn(i, "node", &binary, &args, "polis-node")?;
        self.nodes[i].process = Some(child);
        Ok(())
    }

    /// How long a start of node `i`'s process takes to run `polis-node --version` to its exit:
    /// what every start of the node pays before the node's own code runs (entering its
    /// namespaces, loading the binary; a machine's kernel loads it too, but enters nothing).
    pub fn process_start(&self, i: usize) -> Result<Duration, LaunchError> {
        let failed = |reason: String| LaunchError::Spawn {
            what: format!("polis-node --version of node {i}"),
            reason,
        };
        let Machines::Processes { binary } = &self.machines else {
            return Err(failed("a VM's node is not a process of the host".into()));
        };
        let began = Instant::now();
        let version = ["--version".to_owned()];
        let mut child = self.spawn(i, "version", binary, &version, "polis-node --version")?;
        let exited = child.wait().map_err(|e| failed(e.to_string()))?;
        let took = began.elapsed();
        match exited.success() {
            true => Ok(took),
            false => Err(failed(exited.to_string())),
        }
    }

    /// Start node `i`'s swtpm unless it runs (its state persists in `tpm/`, as a TPM's would),
    /// and wait until it accepts connections.
    pub fn ensure_swtpm(&mut self, i: usize) -> Result<(), LaunchError> {
        if let Some(swtpm) = self.nodes[i].swtpm.as_mut() {
            if let Ok(None) = swtpm.try_wait() {
                return Ok(());
            }
        }
        let state = self.nodes[i].dir().join("tpm");
        std::fs::create_dir_all(&state).map_err(|e| FsError::new("create", &state, e))?;
        let args: Vec<String> = [
            "socket",
            "--tpm2",
            "--flags",
            "not-need-init,startup-clear",
            "--tpmstate",
            &format!("dir={}", state.display()),
            "--server",
            &format!("type=tcp,port={SWTPM_PORT},bindaddr=127.0.0.1"),
            "--ctrl",
            &format!("type=tcp,port={},bindaddr=127.0.0.1", SWTPM_PORT + 1),
        ]
        .map(str::to_owned)
        .to_vec();
        let child = self.spawn(i, "swtpm", Path::new("swtpm"), &args, "swtpm")?;
        self.nodes[i].swtpm = Some(child);
        let reachable = || std::net::TcpStream::connect(("127.0.0.1", SWTPM_PORT + 1)).is_ok();
        let namespace = &self.nodes[i].namespace;
        Poll::new(Duration::from_millis(20), STEP_TIMEOUT)
            .until_blocking(|| match within(namespace, reachable) {
                Ok(true) => Ok(()),
                Ok(false) => Err(None),
                Err(e) => Err(Some(e)),
            })
            .map_err(|e| e.map_or_else(|| self.timed_out(i, "start its swtpm"), Into::into))
    }

    /// Extend PCR 7 of node `i`'s TPM with `event`, as firmware does when the Secure Boot state
    /// changes (a dbx or firmware update). A node run as a process: now, through its swtpm,
    /// until that restarts. A VM: at every boot from its next one on, by the test hook
    /// `polis.test_extend_pcr7` (the hex of `event`), as its PCRs reset at every boot and QEMU
    /// holds the only channel to its TPM.
    pub fn extend_pcr7(&mut self, i: usize, event: &[u8]) -> Result<(), LaunchError> {
        if let Some((config, _)) = self.nodes[i].vm.as_mut() {
            config.pcr7_events.push(crate::pki::hex(event));
            return Ok(());
        }
        self.ensure_swtpm(i)?;
        let tcti = format!("swtpm:host=127.0.0.1,port={SWTPM_PORT}");
        let extended = within(&self.nodes[i].namespace, || {
            crate::tpm::Sealer::connect(&tcti)?.extend_pcr7(event)
        })?;
        extended.map_err(|source| LaunchError::Tpm { node: i, source })
    }

    /// Whether node `i`'s `polis-node` (or VM) still runs; reaps it if it ended.
    pub fn is_running(&mut self, i: usize) -> bool {
        if let Some((_, running)) = self.nodes[i].vm.as_ref() {
            return running.is_some();
        }
        match self.nodes[i].process.as_mut().map(|c| c.try_wait()) {
            Some(Ok(None)) => true,
            Some(_) => {
                self.nodes[i].process = None;
                false
            }
            None => false,
        }
    }

    /// The real PID of node `i`'s swtpm, while it runs.
    pub fn swtpm_pid(&self, i: usize) -> Option<i32> {
        self.nodes[i].swtpm.as_ref().and_then(real_pid)
    }

    /// Stop node `i` and its swtpm, and wipe its root: the slot is a new machine, to register
    /// afresh (a decommissioned node can never join again).
    pub fn wipe(&mut self, i: usize) -> Result<(), LaunchError> {
        self.stop(i, Signal::SIGKILL);
        self.stop_swtpm(i);
        let dir = self.nodes[i].dir().to_owned();
        std::fs::remove_dir_all(&dir).map_err(|e| FsError::new("remove", &dir, e))?;
        self.nodes[i].known_id = None;
        Ok(())
    }

    /// End node `i`'s swtpm by its real PID and reap it.
    fn stop_swtpm(&mut self, i: usize) {
        if let Some(mut swtpm) = self.nodes[i].swtpm.take() {
            if let Some(pid) = real_pid(&swtpm) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            }
            let _ = swtpm.wait();
        }
    }

    fn spawn(
        &self,
        i: usize,
        name: &str,
        program: &Path,
        args: &[String],
        what: &str,
    ) -> Result<Child, LaunchError> {
        let node = &self.nodes[i];
        let log_path = node.dir().join(format!("{name}.log"));
        std::fs::create_dir_all(node.dir()).map_err(|e| FsError::new("create", node.dir(), e))?;
        let log = File::options()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| FsError::new("open", &log_path, e))?;
        let err = log
            .try_clone()
            .map_err(|e| FsError::new("open", &log_path, e))?;
        let mut command = self.net.command(i, program, args)?;
        command.stdin(Stdio::null()).stdout(log).stderr(err);
        let child = command.spawn().map_err(|e| LaunchError::Spawn {
            what: format!("{what} of node {i}"),
            reason: e.to_string(),
        })?;
        slog::debug!(self.log, "started"; "what" => what, "node" => i);
        Ok(child)
    }

    /// Boot node `i`'s VM (after cutting the power of a previous boot that still runs).
    fn boot_vm(&mut self, i: usize) -> Result<(), LaunchError> {
        let node = &mut self.nodes[i];
        let Some((config, running)) = node.vm.as_mut() else {
            return Err(LaunchError::NotRunning(i));
        };
        drop(running.take());
        *running = Some(Vm::boot(&self.net, i, config.clone(), &self.log)?);
        Ok(())
    }

    /// End node `i`: a VM is powered off in order (SIGTERM: Ctrl-Alt-Del, then its power goes
    /// once it has halted) or has its power cut (any other signal); a process gets `signal` at
    /// its real PID and is reaped.
    pub fn stop(&mut self, i: usize, signal: Signal) {
        if let Some((_, running)) = self.nodes[i].vm.as_mut() {
            if let Some(mut vm) = running.take() {
                if signal == Signal::SIGTERM && vm.ctrl_alt_del().is_ok() {
                    let _ = vm.wait_exit(STEP_TIMEOUT);
                }
            }
            return;
        }
        if let Some(pid) = self.nodes[i].pid() {
            let _ = kill(Pid::from_raw(pid), signal);
        }
        if let Some(mut child) = self.nodes[i].process.take() {
            let _ = child.wait();
        }
    }

    /// Wait for node `i`'s `polis-node` (or VM) to exit by itself (e.g. a test hook killed it).
    pub fn wait_exit(&mut self, i: usize) -> Result<std::process::ExitStatus, LaunchError> {
        if let Some((_, running)) = self.nodes[i].vm.as_mut() {
            let mut vm = running.take().ok_or(LaunchError::NotRunning(i))?;
            return Ok(vm.wait_exit(STEP_TIMEOUT)?);
        }
        let child = self.nodes[i]
            .process
            .as_mut()
            .ok_or(LaunchError::NotRunning(i))?;
        let status = Poll::new(Duration::from_millis(50), STEP_TIMEOUT)
            .until_blocking(|| child.try_wait().ok().flatten().ok_or(()))
            .map_err(|()| self.timed_out(i, "exit"))?;
        self.nodes[i].process = None;
        Ok(status)
    }

    /// A request to node `i`'s debug endpoint, made from inside its namespace (or through a
    /// VM's debug port): its tree, metrics, an actor's logs, or fault injection.
    pub fn debug(
        &self,
        i: usize,
        method: &str,
        path: &str,
        body: &str,
    ) -> Result<String, LaunchError> {
        if let Some(socket) = self.nodes[i].debug_socket() {
            return Ok(request_port(&socket, method, path, body)?);
        }
        let token = read_token(&self.nodes[i].root);
        Ok(within(&self.nodes[i].namespace, || {
            request(DEBUG_ADDRESS, token.as_deref(), method, path, body)
        })??)
    }

    /// Give node `i` its parameters: on its ESP, or for a VM over fw_cfg, with its address.
    pub fn write_parameters(&mut self, i: usize, cluster: Cluster) -> Result<(), LaunchError> {
        let node = &mut self.nodes[i];
        match node.vm.as_mut() {
            Some((config, _)) => {
                use prost::Message;
                let params = NodeParameters {
                    cluster: Some(cluster),
                    network: Some(Network {
                        interface: String::new(),
                        address: format!("{}/24", node.address),
                        gateway: String::new(),
                    }),
                };
                config.parameters = Some(params.encode_to_vec());
            }
            None => Esp::new(node.root.clone()).write_parameters(&NodeParameters {
                cluster: Some(cluster),
                network: None,
            })?,
        }
        Ok(())
    }

    /// Node `i` as a Curator to call, once it has credentials.
    pub fn curator(&self, i: usize) -> Option<CuratorAddress> {
        Some(CuratorAddress {
            node_id: self.nodes[i].id()?,
            address: SocketAddr::new(self.nodes[i].address, CURATOR_PORT),
        })
    }

    /// The cluster CA, as the owner met it at bootstrap (`ca.crt`).
    pub fn ca(&self) -> Result<Vec<u8>, LaunchError> {
        Ok(fsutil::read(&self.dir.join(owner::CA_FILE))?)
    }

    /// Bootstrap node 0 and take ownership; answers the owner's client (its certificate is kept
    /// in `owner.crt`).
    pub async fn bootstrap(&mut self) -> Result<Owner, LaunchError> {
        self.take_ownership().await?;
        self.owner(0).await
    }

    /// Bootstrap node 0 and take ownership; answers once the owner's credentials are kept in
    /// the cluster directory (`owner.crt` beside the owner key and the CA).
    pub async fn take_ownership(&mut self) -> Result<(), LaunchError> {
        self.write_bootstrap_parameters()?;
        self.start(0, &[])?;
        let credentials = self.meet_owner().await?;
        credentials.save(&self.dir)?;
        slog::info!(self.log, "node 0 bootstrapped the cluster; ownership taken");
        Ok(())
    }

    /// Give node 0 the parameters of a new cluster: the owner key, and the certificate
    /// lifetimes if any were set.
    pub fn write_bootstrap_parameters(&mut self) -> Result<(), LaunchError> {
        let owner_public = self.owner_key.verifying_key().to_bytes().to_vec();
        self.write_parameters(
            0,
            Cluster::ClusterBootstrap(ClusterBootstrap {
                owner_public_key: owner_public,
                node_certificate_seconds: self
                    .certificate_lifetimes
                    .map_or(0, |l| l.node.as_secs()),
                owner_certificate_seconds: self
                    .certificate_lifetimes
                    .map_or(0, |l| l.owner.as_secs()),
            }),
        )
    }

    /// Once node 0, started with [`LocalCluster::write_bootstrap_parameters`], serves its
    /// Curator: meet it (trust on first use of the CA it made, as an owner meeting a cluster
    /// would) and take the owner certificate over that connection. Answers the owner's
    /// credentials, not yet saved: the moment `polisctl bench` times (P1).
    pub async fn meet_owner(&mut self) -> Result<Credentials, LaunchError> {
        let address = SocketAddr::new(self.nodes[0].address, CURATOR_PORT);
        let (ca, curator, certificate) = self
            .until(0, "serve the Curator", || async {
                let met = first_use(address, &self.owner_key).await.ok()?;
                let certificate = escrow_over(met.channel).await.ok()?;
                Some((met.ca, met.curator, certificate))
            })
            .await?;
        self.nodes[0].known_id = Some(curator.node_id);
        Ok(Credentials {
            key: self.owner_key.clone(),
            certificate,
            ca,
        })
    }

    /// Bootstrap node 0 and take ownership, then register, approve and promote nodes 1 to
    /// `consensus - 1`, one at a time (etcd adds one learner at a time), then register and
    /// approve the next `workers` nodes all at once. Answers the owner.
    pub async fn bring_up(
        &mut self,
        consensus: usize,
        workers: usize,
    ) -> Result<Owner, LaunchError> {
        let owner = self.bootstrap().await?;
        for i in 1..consensus {
            self.register(i, &owner).await?;
        }
        let workers: Vec<usize> = (consensus..consensus + workers).collect();
        for &i in &workers {
            self.begin_registration(i, &owner).await?;
        }
        let (this, owner_ref) = (&*self, &owner);
        let approved = futures::future::try_join_all(workers.iter().map(|&i| async move {
            let node = this.registered(i, owner_ref).await?;
            this.approve(i, owner_ref, &node).await?;
            Ok::<_, LaunchError>((i, node.id))
        }))
        .await?;
        for (i, id) in approved {
            slog::info!(self.log, "worker registered and approved"; "node" => i, "id" => &id);
            self.nodes[i].known_id = Some(id);
        }
        Ok(owner)
    }

    /// The owner's client on node `i`'s Curator, with the owner certificate renewed first if
    /// it is due.
    pub async fn owner(&self, i: usize) -> Result<Owner, LaunchError> {
        let mut credentials = owner::Credentials::load(&self.dir)?;
        let curator = self
            .curator(i)
            .ok_or_else(|| self.timed_out(i, "have credentials"))?;
        credentials.renew_if_due(&curator, &self.dir).await?;
        Ok(Owner::connect(
            &curator,
            &credentials.ca,
            &credentials.key,
            credentials.certificate,
        )
        .await?)
    }

    /// Register node `i` through `owner`: parameters with a ticket, start, approve once it is
    /// NEW, wait until it is UP, then give it the consensus role (one learner at a time).
    pub async fn register(&mut self, i: usize, owner: &Owner) -> Result<String, LaunchError> {
        let node = self.start_registration(i, owner).await?;
        self.approve(i, owner, &node).await?;
        self.make_consensus_member(i, owner, &node.id).await?;
        slog::info!(self.log, "node registered, approved and made a consensus member";
            "node" => i, "id" => &node.id);
        Ok(node.id)
    }

    /// The first step of [`LocalCluster::register`]: node `i` gets parameters with a register
    /// ticket and starts; answers its record once it is registered (NEW).
    pub async fn start_registration(
        &mut self,
        i: usize,
        owner: &Owner,
    ) -> Result<ApiNode, LaunchError> {
        self.begin_registration(i, owner).await?;
        let node = self.registered(i, owner).await?;
        self.nodes[i].known_id = Some(node.id.clone());
        Ok(node)
    }

    /// Give node `i` parameters with a register ticket and start it.
    async fn begin_registration(&mut self, i: usize, owner: &Owner) -> Result<(), LaunchError> {
        let mut owner = owner.clone();
        let info = owner.cluster_info().await?;
        self.write_parameters(
            i,
            Cluster::ClusterRegister(ClusterRegister {
                cluster_directory: info.cluster_directory,
                register_ticket: owner.ticket().await?,
                ca_certificate: info.ca_certificate,
            }),
        )?;
        self.start(i, &[])
    }

    /// Node `i`'s record, once it has registered (NEW).
    async fn registered(&self, i: usize, owner: &Owner) -> Result<ApiNode, LaunchError> {
        let address = self.nodes[i].address.to_string();
        self.until(i, "register", || {
            let (mut owner, address) = (owner.clone(), address.clone());
            async move {
                let nodes = owner.nodes().await.ok()?;
                // A node decommissioned from this slot before keeps its record and address.
                nodes.into_iter().find(|n| {
                    n.state != NodeState::Decommissioned as i32
                        && n.status.as_ref().map(|s| s.external_address.as_str()) == Some(&address)
                })
            }
        })
        .await
    }

    /// Approve node `i` (registered as `node`; approving again is harmless, so a Curator
    /// that is briefly away is retried) and wait until it is UP.
    pub async fn approve(
        &self,
        i: usize,
        owner: &Owner,
        node: &ApiNode,
    ) -> Result<(), LaunchError> {
        self.until(i, "be approved", || {
            let mut owner = owner.clone();
            async move { owner.approve(&node.pubkey).await.ok() }
        })
        .await?;
        self.until(i, "become UP", || {
            let (mut owner, id) = (owner.clone(), node.id.clone());
            async move {
                let nodes = owner.nodes().await.ok()?;
                nodes
                    .iter()
                    .any(|n| n.id == id && n.state == NodeState::Up as i32)
                    .then_some(())
            }
        })
        .await
    }

    /// Give node `i` (called `id`) the consensus role, retrying while another learner is pending.
    pub async fn make_consensus_member(
        &self,
        i: usize,
        owner: &Owner,
        id: &str,
    ) -> Result<(), LaunchError> {
        self.until(i, "become a consensus member", || {
            let mut owner = owner.clone();
            async move { owner.make_consensus_member(id).await.ok() }
        })
        .await
    }

    /// Have [`LocalCluster::bootstrap`] ask for certificates valid for `lifetimes` (tests watch
    /// them renew in seconds).
    pub fn certificate_lifetimes(&mut self, lifetimes: Lifetimes) {
        self.certificate_lifetimes = Some(lifetimes);
    }

    /// Probe every [`LocalCluster::poll_every`] from now on (a benchmark times steps closely).
    pub fn poll_every(&mut self, every: Duration) {
        self.poll_every = every;
    }

    /// Retry `probe` every `STEP_POLL` (or as set) until it answers, or time out naming node
    /// `i`'s log.
    pub async fn until<T, F, Fut>(
        &self,
        i: usize,
        what: &'static str,
        mut probe: F,
    ) -> Result<T, LaunchError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        Poll::new(self.poll_every, STEP_TIMEOUT)
            .until(async || probe().await.ok_or(()))
            .await
            .map_err(|()| self.timed_out(i, what))
    }

    /// Node `i` did not `what` in time: the error, with the end of its log.
    fn timed_out(&self, i: usize, what: &'static str) -> LaunchError {
        let log = self.nodes[i].log_file();
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        LaunchError::Timeout {
            node: i,
            what,
            log: log.display().to_string(),
            tail: lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n"),
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        // VMs power off in order, all at once: each takes a while under TCG.
        for node in &self.nodes {
            if let Some((_, Some(vm))) = &node.vm {
                let _ = vm.ctrl_alt_del();
            }
        }
        for i in 0..self.nodes.len() {
            self.stop(i, Signal::SIGTERM);
            self.stop_swtpm(i);
            let _ =
                std::fs::remove_dir_all(PathBuf::from("/etc/netns").join(&self.nodes[i].namespace));
        }
    }
}
