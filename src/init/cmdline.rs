//! The kernel command line's `polis.*` options. The kernel keeps dotted options from init's
//! arguments (it takes them for module parameters), so they are read from `/proc/cmdline`.

/// What the machine does once the node has stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnStop {
    /// Power off.
    Poweroff,
    /// Reboot.
    Reboot,
}

/// The options Polis reads from the kernel command line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cmdline {
    /// `polis.on_stop=poweroff|reboot`; unset means: reboot after a failure, power off after a
    /// requested shutdown.
    pub on_stop: Option<OnStop>,
    /// `polis.test_extend_pcr7=EVENT` (repeatable), a test hook: process 1 extends PCR 7 with
    /// each EVENT before anything unseals, as firmware measuring a changed Secure Boot database
    /// would. The VM tier's stand-in for a firmware update: QEMU holds the only channel to a
    /// VM's TPM, and PCRs reset at every boot. It can only make PCR 7 hold a value nobody
    /// approved, which whoever sets the command line can do anyway.
    pub test_extend_pcr7: Vec<String>,
}

impl Cmdline {
    /// Parse a command line; unknown options are someone else's, and an unknown value of ours is
    /// reported in the returned warnings instead of stopping the boot.
    pub fn parse(line: &str) -> (Cmdline, Vec<String>) {
        let mut cmdline = Cmdline::default();
        let mut warnings = Vec::new();
        for word in line.split_whitespace() {
            if let Some(event) = word.strip_prefix("polis.test_extend_pcr7=") {
                cmdline.test_extend_pcr7.push(event.to_owned());
            }
            if let Some(value) = word.strip_prefix("polis.on_stop=") {
                cmdline.on_stop = match value {
                    "poweroff" => Some(OnStop::Poweroff),
                    "reboot" => Some(OnStop::Reboot),
                    other => {
                        warnings.push(format!(
                            "polis.on_stop={other} is neither poweroff nor reboot; ignored"
                        ));
                        cmdline.on_stop
                    }
                };
            }
        }
        (cmdline, warnings)
    }

    /// The running kernel's command line (`/proc/cmdline`); unreadable (no /proc yet) means none.
    pub fn read() -> (Cmdline, Vec<String>) {
        Cmdline::parse(&std::fs::read_to_string("/proc/cmdline").unwrap_or_default())
    }

    /// What to do after the node stopped, cleanly (`requested`) or not.
    pub fn on_stop(&self, requested: bool) -> OnStop {
        self.on_stop.unwrap_or(match requested {
            true => OnStop::Poweroff,
            false => OnStop::Reboot,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn on_stop_is_read_and_defaults_by_how_the_node_stopped() {
        let (c, w) = Cmdline::parse("console=ttyS0 polis.on_stop=poweroff quiet");
        assert_eq!((c.on_stop(false), w.len()), (OnStop::Poweroff, 0));
        let (c, _) = Cmdline::parse("polis.on_stop=reboot");
        assert_eq!(c.on_stop(true), OnStop::Reboot);
        let (c, w) = Cmdline::parse("console=ttyS0 polis.on_stop=halt");
        assert_eq!(w.len(), 1, "{w:?}");
        assert_eq!(
            (c.on_stop(true), c.on_stop(false)),
            (OnStop::Poweroff, OnStop::Reboot)
        );
    }

    #[test]
    fn pcr7_test_events_are_read_in_order_and_none_by_default() {
        let (c, _) = Cmdline::parse("console=ttyS0 panic=-1");
        assert!(c.test_extend_pcr7.is_empty());
        let (c, w) = Cmdline::parse("polis.test_extend_pcr7=dbx-1 quiet polis.test_extend_pcr7=fw");
        assert_eq!(
            (c.test_extend_pcr7, w.len()),
            (vec!["dbx-1".into(), "fw".into()], 0)
        );
    }
}
