//! What `polis-node` does as the init process (PID 1) of a machine, and only then: the
//! filesystems every program expects, the kernel modules of its image, the reaper, the disk (by
//! GPT) and its ESP, the external interface, and at the end the orderly halt that an init owes
//! its machine (it never exits: the kernel would panic). DESIGN §2, "As PID 1".
//!
//! None of this runs when `polis-node` is an ordinary process (tests, the namespace launcher).

mod cmdline;
pub mod debug_port;
mod disk;
mod modules;
mod mounts;
mod net;
mod shutdown;

pub use cmdline::{Cmdline, OnStop};
pub use disk::{find_disk, Disk, DiskError};
pub use modules::{load_modules, ModuleError, MODULES_LIST};
pub use mounts::{mount_esp, mount_system, MountError};
pub use net::{configure, NetConfig, NetConfigError};
pub use shutdown::halt;

use std::time::Duration;

use crate::poll::Poll;

/// Whether this process is the machine's init.
pub fn is_pid1() -> bool {
    std::process::id() == 1
}

/// Why the machine could not be brought up; each names the file, device or interface at fault.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// A system filesystem or the ESP could not be mounted.
    #[error(transparent)]
    Mount(#[from] MountError),
    /// A kernel module could not be loaded.
    #[error(transparent)]
    Module(#[from] ModuleError),
    /// The disk was not found or is not laid out as Polis expects.
    #[error(transparent)]
    Disk(#[from] DiskError),
    /// The network could not be configured.
    #[error(transparent)]
    Net(#[from] NetConfigError),
    /// The reaper could not start.
    #[error(transparent)]
    Reaper(#[from] crate::process::reaper::ReaperError),
    /// Ctrl-Alt-Del could not be turned into a signal.
    #[error("cannot disable Ctrl-Alt-Del: {0}")]
    CtrlAltDel(nix::Error),
}

/// The directories an image's root must hold for a node, beyond what [`mount_system`] mounts.
pub const NODE_MOUNT_POINTS: [&str; 3] = ["esp", "data", "ephemeral"];

/// What init found and set up for the node.
#[derive(Clone, Debug)]
pub struct Machine {
    /// The node's disk.
    pub disk: Disk,
    /// The external interface's configuration, as applied.
    pub net: NetConfig,
    /// The kernel command line's options.
    pub cmdline: Cmdline,
}

/// How long init waits for devices that drivers are still probing (the disk, the interface).
const DEVICE_WAIT: Duration = Duration::from_secs(60);

/// Bring the machine up for a node rooted at `root`: system filesystems, kernel modules,
/// Ctrl-Alt-Del as SIGINT, the disk and its ESP, the external interface.
pub async fn prepare(
    log: &slog::Logger,
    root: &crate::storage::NodeRoot,
) -> Result<Machine, InitError> {
    use std::path::Path;
    mount_system(root.path())?;
    let (cmdline, warnings) =
        Cmdline::parse(&std::fs::read_to_string("/proc/cmdline").unwrap_or_default());
    for warning in warnings {
        slog::warn!(log, "{}", warning);
    }
    nix::sys::reboot::set_cad_enabled(false).map_err(InitError::CtrlAltDel)?;
    let loaded = load_modules(Path::new(MODULES_LIST))?;
    slog::info!(log, "kernel modules loaded"; "count" => loaded);
    let disk = wait_for(log, "the disk", || async {
        find_disk(Path::new("/sys/block"), Path::new("/dev"))
    })
    .await?;
    slog::info!(log, "disk found"; "disk" => %disk.device.display(), "esp" => %disk.esp.display(),
        "data" => %disk.data.display());
    mount_esp(&disk.esp, &root.path().join("esp"))?;
    let esp = crate::storage::Esp::new(root.clone());
    let fw_cfg = Path::new(crate::lifecycle::FW_CFG_PARAMETERS);
    let params = crate::lifecycle::parameters(&esp, fw_cfg)
        .map_err(|e| NetConfigError::Parameters(e.to_string()))?
        .map(|(params, _, _)| params);
    let net = NetConfig::from_parameters(params.as_ref().and_then(|p| p.network.as_ref()))?;
    let interface = wait_for(log, "the network interface", || configure(&net)).await?;
    slog::info!(log, "network configured"; "interface" => interface, "address" => %net.address,
        "prefix" => net.prefix, "gateway" => ?net.gateway);
    Ok(Machine { disk, net, cmdline })
}

/// Try `probe` until it succeeds or [`DEVICE_WAIT`] passes, saying once that it waits.
async fn wait_for<T, E: std::fmt::Display, F: std::future::Future<Output = Result<T, E>>>(
    log: &slog::Logger,
    what: &str,
    mut probe: impl FnMut() -> F,
) -> Result<T, E> {
    let mut said = false;
    Poll::new(Duration::from_millis(100), DEVICE_WAIT)
        .until(async || {
            probe().await.inspect_err(|e| {
                if !std::mem::replace(&mut said, true) {
                    slog::info!(log, "waiting for {}", what; "reason" => %e);
                }
            })
        })
        .await
}
