//! Networks for local clusters: each node in its own network namespace, its `eth0` a veth into
//! one bridge in the root namespace, addresses from 198.18.0.0/24 only. Before anything is
//! created, `198.18.0.0/15` is made unreachable in the root namespace, so no packet for these
//! addresses can leave the machine; the bridge gets 198.18.0.1/24, and every node address is
//! checked to route via the bridge. Nodes get no default route. Processes started in a node's
//! namespace report their real PID, and are ended by it.

use std::ffi::{CStr, CString};
use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use nix::fcntl::{Flock, FlockArg};
use nix::mount::{mount, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use ring::rand::{SecureRandom, SystemRandom};

/// The range that must never leave the machine.
pub const GUARD_RANGE: &str = "198.18.0.0/15";
/// The bridge's address.
pub const BRIDGE_ADDRESS: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);

/// Why a cluster network could not be made.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// An `ip` command failed.
    #[error("`{command}` failed: {reason}")]
    Ip {
        /// The command line.
        command: String,
        /// Its standard error, or why it did not run.
        reason: String,
    },
    /// A node address would not route via the bridge: refusing to go on.
    #[error("{address} does not route via {bridge}: `ip route get` says {route:?}")]
    Unsafe {
        /// The node address.
        address: Ipv4Addr,
        /// The bridge.
        bridge: String,
        /// What the kernel said.
        route: String,
    },
    /// A thread could not enter a node's namespace.
    #[error("cannot enter network namespace {namespace}: {reason}")]
    Enter {
        /// The namespace.
        namespace: String,
        /// Why.
        reason: String,
    },
    /// More nodes than the /24 holds.
    #[error("at most 253 nodes fit in 198.18.0.0/24, not {0}")]
    TooMany(usize),
}

/// One node's namespace and address.
#[derive(Clone, Debug)]
pub struct NodeNetwork {
    /// The network namespace (also used as the UTS name of its processes' namespace); for VMs,
    /// the one namespace that holds the bridge, every TAP device and every QEMU.
    pub namespace: String,
    /// Its `eth0` address.
    pub address: Ipv4Addr,
    /// For a VM: its TAP device on the bridge.
    pub tap: Option<String>,
}

/// The lock that makes one cluster network per machine: they all use 198.18.0.0/24.
const LOCK_FILE: &str = "/run/polis-cluster-network.lock";

/// A bridge and its nodes' namespaces; removed when dropped.
pub struct ClusterNetwork {
    bridge: String,
    prefix: String,
    nodes: Vec<NodeNetwork>,
    /// For VMs: the namespace holding the bridge and the TAP devices.
    vm_namespace: Option<String>,
    /// Held for the network's life, released after its removal (fields drop after `drop`).
    _lock: Flock<std::fs::File>,
}

fn ip(args: &[&str]) -> Result<String, NetError> {
    let command = format!("ip {}", args.join(" "));
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| NetError::Ip {
            command: command.clone(),
            reason: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(NetError::Ip {
            command,
            reason: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl ClusterNetwork {
    /// Make a network for `nodes` nodes. Node `i` (0-based) gets 198.18.0.(i+2). There is one
    /// such network per machine at a time (they share the range): this waits for any other to be
    /// removed first. Names carry a random prefix, so leftovers of a crash never collide.
    pub fn create(nodes: usize) -> Result<Self, NetError> {
        let mut network = Self::reserve(nodes)?;
        // From here on, a failure drops `network`, which removes what was made.
        network.add_bridge(&[])?;
        for i in 0..nodes {
            network.add_node(i)?;
        }
        network.check_routes()?;
        Ok(network)
    }

    /// Make a network for `nodes` VMs: one namespace holding the bridge (198.18.0.1/24) and a
    /// TAP device per VM, for QEMUs started inside it ([`ClusterNetwork::vm_command`]).
    /// VM `i` is to take 198.18.0.(i+2). The same guard route, lock and route check hold.
    pub fn create_for_vms(nodes: usize) -> Result<Self, NetError> {
        let mut network = Self::reserve(nodes)?;
        let namespace = format!("{}vm", network.prefix);
        ip(&["netns", "add", &namespace])?;
        network.vm_namespace = Some(namespace.clone());
        network.add_bridge(&["-n", &namespace])?;
        ip(&["-n", &namespace, "link", "set", "lo", "up"])?;
        for i in 0..nodes {
            let tap = format!("{}t{i}", network.prefix);
            ip(&[
                "-n", &namespace, "tuntap", "add", "dev", &tap, "mode", "tap",
            ])?;
            ip(&[
                "-n",
                &namespace,
                "link",
                "set",
                &tap,
                "master",
                &network.bridge,
                "up",
            ])?;
            network.nodes.push(NodeNetwork {
                namespace: namespace.clone(),
                address: Ipv4Addr::new(198, 18, 0, i as u8 + 2),
                tap: Some(tap),
            });
        }
        network.check_routes()?;
        Ok(network)
    }

    /// Take the machine's one cluster network (waiting for any other to go), add the guard
    /// route, and choose random names.
    fn reserve(nodes: usize) -> Result<Self, NetError> {
        if nodes > 253 {
            return Err(NetError::TooMany(nodes));
        }
        let lock_err = |reason: String| NetError::Ip {
            command: format!("lock {LOCK_FILE}"),
            reason,
        };
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(LOCK_FILE)
            .map_err(|e| lock_err(e.to_string()))?;
        let lock =
            Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| lock_err(e.to_string()))?;
        ip(&["route", "replace", "unreachable", GUARD_RANGE])?;
        let mut tag = [0u8; 3];
        SystemRandom::new()
            .fill(&mut tag)
            .map_err(|_| NetError::Ip {
                command: "random name".into(),
                reason: "the operating system's random generator failed".into(),
            })?;
        let prefix = format!(
            "pl{}",
            tag.iter().map(|b| format!("{b:02x}")).collect::<String>()
        );
        Ok(ClusterNetwork {
            bridge: format!("{prefix}br"),
            prefix,
            nodes: Vec::new(),
            vm_namespace: None,
            _lock: lock,
        })
    }

    /// The bridge with 198.18.0.1/24, in the namespace `ns` names (`-n NS`, or the root's).
    fn add_bridge(&self, ns: &[&str]) -> Result<(), NetError> {
        let bridge = self.bridge.as_str();
        let address = format!("{BRIDGE_ADDRESS}/24");
        ip(&[ns, &["link", "add", bridge, "type", "bridge"]].concat())?;
        ip(&[ns, &["addr", "add", &address, "dev", bridge]].concat())?;
        ip(&[ns, &["link", "set", bridge, "up"]].concat())?;
        Ok(())
    }

    fn add_node(&mut self, i: usize) -> Result<(), NetError> {
        let namespace = format!("{}n{i}", self.prefix);
        let veth = format!("{}v{i}", self.prefix);
        let address = Ipv4Addr::new(198, 18, 0, i as u8 + 2);
        ip(&["netns", "add", &namespace])?;
        self.nodes.push(NodeNetwork {
            namespace: namespace.clone(),
            address,
            tap: None,
        });
        ip(&[
            "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &namespace,
        ])?;
        ip(&["link", "set", &veth, "master", &self.bridge, "up"])?;
        ip(&[
            "-n",
            &namespace,
            "addr",
            "add",
            &format!("{address}/24"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &namespace, "link", "set", "eth0", "up"])?;
        ip(&["-n", &namespace, "link", "set", "lo", "up"])?;
        Ok(())
    }

    /// Every node address must route via the bridge, from the namespace the bridge is in.
    fn check_routes(&self) -> Result<(), NetError> {
        let ns: Vec<&str> = match &self.vm_namespace {
            Some(namespace) => vec!["-n", namespace],
            None => Vec::new(),
        };
        for node in &self.nodes {
            let address = node.address.to_string();
            let route = ip(&[&ns[..], &["route", "get", &address]].concat())?;
            if !route
                .split_whitespace()
                .collect::<Vec<_>>()
                .windows(2)
                .any(|w| w == ["dev", self.bridge.as_str()])
            {
                return Err(NetError::Unsafe {
                    address: node.address,
                    bridge: self.bridge.clone(),
                    route: route.trim().to_owned(),
                });
            }
        }
        Ok(())
    }

    /// The nodes' namespaces and addresses.
    pub fn nodes(&self) -> &[NodeNetwork] {
        &self.nodes
    }

    /// The bridge's name.
    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    /// A command that runs `program args…` in node `i`'s network namespace as `ip netns exec`
    /// would (a mount namespace of its own in which `/etc/netns/<namespace>/hosts`, if there is
    /// one, is its `/etc/hosts`; unlike `ip netns exec`, `/sys` is not remounted: nothing a node
    /// runs reads its network devices there), and in a UTS namespace of its own, which starts
    /// with the host's name: a process that names itself (`polis-node --set-hostname`) renames
    /// only its node.
    ///
    /// The child enters them itself between fork and exec, so the PID that `spawn` answers is the
    /// program's real PID and nothing else runs first: the chain `ip netns exec … unshare --uts
    /// sh -c 'echo $$ >pid; exec …'` that did this before cost every node start ≈ 3 ms (issue
    /// 12).
    pub fn command(&self, i: usize, program: &Path, args: &[String]) -> Result<Command, NetError> {
        let namespace = &self.nodes[i].namespace;
        let hosts = Path::new("/etc/netns").join(namespace).join("hosts");
        let entry = Entry {
            network: open_namespace(namespace)?,
            scope: Scope::Node {
                hosts: hosts
                    .exists()
                    .then(|| c_path(&hosts, namespace))
                    .transpose()?,
            },
        };
        Ok(entry.command(program, args))
    }

    /// A command that runs `program args…` (QEMU) in the VMs' network namespace; the PID that
    /// `spawn` answers is its real one. `None` for a network of namespaced processes.
    pub fn vm_command(&self, program: &Path, args: &[String]) -> Option<Result<Command, NetError>> {
        let namespace = self.vm_namespace.as_ref()?;
        let entry = open_namespace(namespace).map(|network| Entry {
            network,
            scope: Scope::NetworkOnly,
        });
        Some(entry.map(|entry| entry.command(program, args)))
    }
}

/// What a child enters between fork and exec.
struct Entry {
    /// The network namespace, opened by the parent.
    network: OwnedFd,
    /// What else it enters.
    scope: Scope,
}

/// Which namespaces a child enters besides the network's.
enum Scope {
    /// None (QEMU: it reads neither `/etc/hosts` nor its host name).
    NetworkOnly,
    /// A node's process: its own UTS and mount namespaces, and in the latter `hosts`, if any,
    /// bound over `/etc/hosts`.
    Node {
        /// The hosts file to bind.
        hosts: Option<CString>,
    },
}

impl Entry {
    /// `program args…`, entering the namespaces first. The child only makes system calls on
    /// what the parent prepared (no allocation, no lock), as it must after a fork.
    fn command(self, program: &Path, args: &[String]) -> Command {
        let mut cmd = Command::new(program);
        cmd.args(args);
        let enter = move || -> std::io::Result<()> {
            setns(&self.network, CloneFlags::CLONE_NEWNET)?;
            let Scope::Node { hosts } = &self.scope else {
                return Ok(());
            };
            unshare(CloneFlags::CLONE_NEWUTS | CloneFlags::CLONE_NEWNS)?;
            // As `ip netns exec`: nothing mounted here may propagate back to the host.
            let none = None::<&CStr>;
            mount(none, c"/", none, MsFlags::MS_REC | MsFlags::MS_SLAVE, none)?;
            if let Some(hosts) = hosts {
                mount(
                    Some(hosts.as_c_str()),
                    c"/etc/hosts",
                    none,
                    MsFlags::MS_BIND,
                    none,
                )?;
            }
            Ok(())
        };
        // SAFETY: `enter` only makes system calls on values prepared before the fork.
        unsafe { cmd.pre_exec(enter) };
        cmd
    }
}

/// The network namespace `namespace` (as `ip netns` names it), opened.
fn open_namespace(namespace: &str) -> Result<OwnedFd, NetError> {
    let path = Path::new("/var/run/netns").join(namespace);
    let file = std::fs::File::open(&path).map_err(|e| NetError::Enter {
        namespace: namespace.to_owned(),
        reason: format!("{}: {e}", path.display()),
    })?;
    Ok(file.into())
}

/// `path` as a C string, for a system call made after a fork.
fn c_path(path: &Path, namespace: &str) -> Result<CString, NetError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| NetError::Enter {
        namespace: namespace.to_owned(),
        reason: format!("{} contains a NUL byte", path.display()),
    })
}

impl Drop for ClusterNetwork {
    fn drop(&mut self) {
        match &self.vm_namespace {
            // The bridge and the TAP devices go with their namespace.
            Some(namespace) => drop(ip(&["netns", "del", namespace])),
            None => {
                for node in &self.nodes {
                    let _ = ip(&["netns", "del", &node.namespace]);
                }
                let _ = ip(&["link", "del", &self.bridge]);
            }
        }
    }
}

/// Run `f` on a thread of its own inside the network namespace `namespace` (as `ip netns` names
/// it): what it connects to is what that namespace reaches, e.g. a node's loopback debug endpoint.
/// The calling thread stays where it is.
pub fn within<T: Send>(namespace: &str, f: impl FnOnce() -> T + Send) -> Result<T, NetError> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                enter(namespace)?;
                Ok(f())
            })
            .join()
            .map_err(|_| NetError::Enter {
                namespace: namespace.to_owned(),
                reason: "the thread panicked".into(),
            })?
    })
}

/// Move the calling thread into the network namespace `namespace` for good: the sockets it opens
/// from then on are that namespace's.
pub fn enter(namespace: &str) -> Result<(), NetError> {
    setns(open_namespace(namespace)?, CloneFlags::CLONE_NEWNET).map_err(|e| NetError::Enter {
        namespace: namespace.to_owned(),
        reason: e.to_string(),
    })
}
