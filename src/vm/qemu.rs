//! A Polis VM: QEMU under TCG with Debian's kernel and the Polis initramfs, a virtio disk, node
//! parameters over fw_cfg, swtpm as its `tpm-tis` TPM, a TAP device on the cluster bridge (QEMU
//! runs inside the VMs' network namespace), the serial console in `console.log`, and QMP for a
//! clean power-off (Ctrl-Alt-Del, which `polis-node` as init takes as "shut down").

use crate::fsutil::FsError;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::netns::{ClusterNetwork, NetError};
use crate::process::ChildProcess;
use crate::tpm::{Swtpm, SwtpmError};

/// How many of the console's last lines an error carries.
const TAIL_LINES: usize = 30;

/// Why a VM could not be run or did not do what was awaited.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// Its TPM did not start.
    #[error(transparent)]
    Tpm(#[from] SwtpmError),
    /// A file could not be read or written.
    #[error(transparent)]
    Fs(#[from] FsError),
    /// The network has no VM namespace or no such VM.
    #[error("the network has no TAP device for VM {0}")]
    NoTap(usize),
    /// QEMU's command could not be made (the VMs' namespace cannot be opened).
    #[error(transparent)]
    Net(#[from] NetError),
    /// QEMU could not be started.
    #[error("cannot start QEMU: {0}")]
    Spawn(std::io::Error),
    /// What was awaited did not happen in time.
    #[error("VM {dir}: {what} did not happen within {} s; its console ended with:\n{tail}", timeout.as_secs())]
    Timeout {
        /// The VM's directory.
        dir: String,
        /// What was awaited.
        what: String,
        /// How long it was awaited.
        timeout: Duration,
        /// The console's last lines.
        tail: String,
    },
    /// QEMU ended before what was awaited happened.
    #[error("VM {dir}: QEMU exited ({status}) while waiting for {what}; its console ended with:\n{tail}")]
    Exited {
        /// The VM's directory.
        dir: String,
        /// What was awaited.
        what: String,
        /// How QEMU ended.
        status: ExitStatus,
        /// The console's last lines.
        tail: String,
    },
    /// QMP refused or could not be reached.
    #[error("QMP at {path}: {reason}")]
    Qmp {
        /// The QMP socket.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// What a VM boots from and how it is wired.
#[derive(Clone, Debug)]
pub struct VmConfig {
    /// The VM's directory: `disk.img`, `console.log`, `tpm/`, sockets.
    pub dir: PathBuf,
    /// The kernel image.
    pub kernel: PathBuf,
    /// The initramfs.
    pub initramfs: PathBuf,
    /// NodeParameters (encoded) offered over fw_cfg, if any.
    pub parameters: Option<Vec<u8>>,
    /// Memory in MiB.
    pub memory_mib: u32,
    /// `poweroff` or `reboot`: `polis.on_stop` on the kernel command line.
    pub on_stop: &'static str,
    /// What the VM's "firmware" measures into PCR 7 at every boot besides its own events
    /// (`polis.test_extend_pcr7`, a test hook; no whitespace): a firmware update, for tests.
    pub pcr7_events: Vec<String>,
}

impl VmConfig {
    /// Its disk image.
    pub fn disk(&self) -> PathBuf {
        self.dir.join("disk.img")
    }

    /// Its serial console's log.
    pub fn console(&self) -> PathBuf {
        self.dir.join("console.log")
    }

    /// Its TPM's state directory: the VM's "chip".
    pub fn tpm_state(&self) -> PathBuf {
        self.dir.join("tpm")
    }

    /// The host end of its debug port (`polis.debug`), for [`crate::debug_client::request_port`].
    pub fn debug_socket(&self) -> PathBuf {
        self.dir.join("debug.sock")
    }

    fn qmp(&self) -> PathBuf {
        self.dir.join("qmp.sock")
    }
}

/// A running VM (QEMU and its swtpm). Dropping it kills both: a power cut.
pub struct Vm {
    config: VmConfig,
    /// QEMU itself: it entered the VMs' namespace before exec, so this is its real PID.
    qemu: Child,
    /// Until the VM is off: the TPM's state directory admits one swtpm at a time, so the next
    /// boot must find this one gone.
    tpm: Option<ChildProcess>,
    /// Console bytes already looked at by [`Vm::wait_console`].
    seen: usize,
}

impl Vm {
    /// Boot VM `i` of `net` (a network from [`ClusterNetwork::create_for_vms`]). The console
    /// log is started afresh; the disk and TPM state are used as they are.
    pub fn boot(
        net: &ClusterNetwork,
        i: usize,
        config: VmConfig,
        log: &slog::Logger,
    ) -> Result<Vm, VmError> {
        let node = net.nodes().get(i).ok_or(VmError::NoTap(i))?;
        let tap = node.tap.clone().ok_or(VmError::NoTap(i))?;
        let tpm_socket = config.dir.join("swtpm.sock");
        let tpm = Swtpm::start_for_vm(&config.tpm_state(), &tpm_socket, log)?;
        let console = config.console();
        std::fs::write(&console, b"").map_err(|e| FsError::new("create", &console, e))?;
        let _ = std::fs::remove_file(config.qmp());
        let mut args: Vec<String> = [
            "-accel",
            "tcg",
            "-cpu",
            "max",
            "-smp",
            "1",
            "-nodefaults",
            "-no-reboot",
            "-display",
            "none",
            "-vga",
            "none",
            "-monitor",
            "none",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend([
            "-m".into(),
            config.memory_mib.to_string(),
            "-kernel".into(),
            config.kernel.display().to_string(),
            "-initrd".into(),
            config.initramfs.display().to_string(),
            "-append".into(),
            kernel_command_line(&config),
            "-serial".into(),
            format!("file:{}", console.display()),
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", config.qmp().display()),
            "-drive".into(),
            format!("file={},format=raw,if=virtio", config.disk().display()),
            "-netdev".into(),
            format!("tap,id=net0,ifname={tap},script=no,downscript=no"),
            "-device".into(),
            format!(
                "virtio-net-pci,netdev=net0,mac=52:54:00:50:00:{:02x}",
                i + 2
            ),
            "-chardev".into(),
            format!("socket,id=chrtpm,path={}", tpm_socket.display()),
            "-tpmdev".into(),
            "emulator,id=tpm0,chardev=chrtpm".into(),
            "-device".into(),
            "tpm-tis,tpmdev=tpm0".into(),
            "-device".into(),
            "virtio-serial-pci".into(),
            "-chardev".into(),
            format!(
                "socket,id=dbg,path={},server=on,wait=off",
                config.debug_socket().display()
            ),
            "-device".into(),
            format!(
                "virtserialport,chardev=dbg,name={}",
                crate::init::debug_port::PORT_NAME
            ),
        ]);
        if let Some(parameters) = &config.parameters {
            let file = config.dir.join("parameters.pb");
            std::fs::write(&file, parameters).map_err(|e| FsError::new("write", &file, e))?;
            args.extend([
                "-fw_cfg".into(),
                format!("name=opt/polis/parameters,file={}", file.display()),
            ]);
        }
        let mut cmd = net
            .vm_command(Path::new("qemu-system-x86_64"), &args)
            .ok_or(VmError::NoTap(i))??;
        let qemu_log = config.dir.join("qemu.log");
        let out =
            std::fs::File::create(&qemu_log).map_err(|e| FsError::new("create", &qemu_log, e))?;
        let err = out
            .try_clone()
            .map_err(|e| FsError::new("open", &qemu_log, e))?;
        let qemu = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(VmError::Spawn)?;
        slog::info!(log, "VM booting"; "vm" => i, "dir" => %config.dir.display());
        Ok(Vm {
            config,
            qemu,
            tpm: Some(tpm),
            seen: 0,
        })
    }

    /// The VM's configuration.
    pub fn config(&self) -> &VmConfig {
        &self.config
    }

    /// The console so far.
    pub fn console(&self) -> String {
        std::fs::read_to_string(self.config.console()).unwrap_or_default()
    }

    /// Wait until a console line written after the last match contains `needle`; answers it.
    pub fn wait_console(&mut self, needle: &str, timeout: Duration) -> Result<String, VmError> {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.console();
            if let Some(found) = text.get(self.seen..).and_then(|rest| rest.find(needle)) {
                let at = self.seen + found;
                let end = text[at..].find('\n').map_or(text.len(), |n| at + n);
                let start = text[..at].rfind('\n').map_or(0, |n| n + 1);
                self.seen = end;
                return Ok(text[start..end].to_owned());
            }
            self.check(needle, deadline, timeout)?;
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Fail if QEMU has exited or the deadline passed, while waiting for `what`.
    fn check(&mut self, what: &str, deadline: Instant, timeout: Duration) -> Result<(), VmError> {
        if let Ok(Some(status)) = self.qemu.try_wait() {
            return Err(VmError::Exited {
                dir: self.config.dir.display().to_string(),
                what: what.into(),
                status,
                tail: self.tail(),
            });
        }
        if Instant::now() >= deadline {
            return Err(VmError::Timeout {
                dir: self.config.dir.display().to_string(),
                what: what.into(),
                timeout,
                tail: self.tail(),
            });
        }
        Ok(())
    }

    /// The console's last lines.
    pub fn tail(&self) -> String {
        let text = self.console();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n")
    }

    /// Press Ctrl-Alt-Del through QMP: the node stops in order and the machine powers off (or
    /// reboots, as `polis.on_stop` says).
    pub fn ctrl_alt_del(&self) -> Result<(), VmError> {
        let keys =
            ["ctrl", "alt", "delete"].map(|k| serde_json::json!({"type": "qcode", "data": k}));
        qmp(
            &self.config.qmp(),
            serde_json::json!({"execute": "send-key", "arguments": {"keys": keys}}),
        )
    }

    /// Boot the same VM again (same disk, TPM state and parameters) once it is off; a VM still
    /// running has its power cut first.
    pub fn boot_again(
        mut self,
        net: &ClusterNetwork,
        i: usize,
        log: &slog::Logger,
    ) -> Result<Vm, VmError> {
        self.power_cut();
        Vm::boot(net, i, self.config.clone(), log)
    }

    /// Wait for QEMU to exit by itself (the guest powered off).
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus, VmError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.qemu.try_wait() {
                self.stop_tpm();
                return Ok(status);
            }
            self.check("QEMU to exit", deadline, timeout)?;
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Cut the power: SIGKILL to QEMU by its PID (a VM that is off stays off), and the TPM
    /// goes too, as a chip loses its volatile state.
    pub fn power_cut(&mut self) {
        if let Ok(None) = self.qemu.try_wait() {
            let _ = self.qemu.kill();
        }
        let _ = self.qemu.wait();
        self.stop_tpm();
    }

    /// End swtpm and wait until it is reaped (dropping its handle does both).
    fn stop_tpm(&mut self) {
        drop(self.tpm.take());
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.power_cut();
    }
}

/// Run one QMP command: read the greeting, negotiate capabilities, send `command`, expect
/// `return`.
fn qmp(path: &Path, command: serde_json::Value) -> Result<(), VmError> {
    let fail = |reason: String| VmError::Qmp {
        path: path.to_owned(),
        reason,
    };
    let stream = UnixStream::connect(path).map_err(|e| fail(e.to_string()))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| fail(e.to_string()))?;
    let mut reader = BufReader::new(stream.try_clone().map_err(|e| fail(e.to_string()))?);
    let mut writer = stream;
    let mut line = String::new();
    reader
        .read_line(&mut line)
        .map_err(|e| fail(e.to_string()))?; // the greeting
    for request in [serde_json::json!({"execute": "qmp_capabilities"}), command] {
        writeln!(writer, "{request}").map_err(|e| fail(e.to_string()))?;
        loop {
            line.clear();
            reader
                .read_line(&mut line)
                .map_err(|e| fail(e.to_string()))?;
            let answer: serde_json::Value =
                serde_json::from_str(&line).map_err(|e| fail(format!("{e}: {line}")))?;
            if answer.get("event").is_some() {
                continue;
            }
            if answer.get("return").is_none() {
                return Err(fail(format!("{request} answered {answer}")));
            }
            break;
        }
    }
    Ok(())
}

/// The kernel command line of a VM booted with `config`: the serial console, a kernel panic
/// ends the VM at once, what process 1 does once the node stops, and any PCR 7 test events.
fn kernel_command_line(config: &VmConfig) -> String {
    let mut line = format!("console=ttyS0 panic=-1 polis.on_stop={}", config.on_stop);
    for event in &config.pcr7_events {
        line.push_str(" polis.test_extend_pcr7=");
        line.push_str(event);
    }
    line
}
