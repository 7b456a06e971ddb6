//! The process metrics every Prometheus user expects of a server, under their usual names
//! (`process_resident_memory_bytes`, `process_cpu_seconds_total`, `process_open_fds`, …), read
//! from `/proc/self` at each scrape. A value that cannot be read is left out of that scrape
//! rather than failing it.

use std::fmt;

use nix::sys::resource::{getrlimit, Resource};
use nix::unistd::{sysconf, SysconfVar};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;

/// Reads this process's figures from `/proc` on every scrape.
#[derive(Debug, Default)]
pub struct ProcessCollector;

/// What `/proc/self/stat` says, in Prometheus's units.
#[derive(Debug, PartialEq)]
struct Stat {
    cpu_seconds: f64,
    start_time_seconds: f64,
    virtual_memory_bytes: f64,
    resident_memory_bytes: f64,
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        if let Some(stat) = read_stat("self") {
            let counter = "process_cpu_seconds";
            encoder
                .encode_descriptor(
                    counter,
                    "User and system CPU time spent in seconds",
                    None,
                    MetricType::Counter,
                )?
                .encode_counter::<NoLabelSet, f64, f64>(&stat.cpu_seconds, None)?;
            gauge(
                &mut encoder,
                "process_start_time_seconds",
                "Start time of the process since the Unix epoch in seconds",
                stat.start_time_seconds,
            )?;
            gauge(
                &mut encoder,
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                stat.virtual_memory_bytes,
            )?;
            gauge(
                &mut encoder,
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                stat.resident_memory_bytes,
            )?;
        }
        if let Ok(entries) = std::fs::read_dir("/proc/self/fd") {
            let open = entries.count() as f64;
            gauge(
                &mut encoder,
                "process_open_fds",
                "Number of open file descriptors",
                open,
            )?;
        }
        if let Ok((soft, _)) = getrlimit(Resource::RLIMIT_NOFILE) {
            gauge(
                &mut encoder,
                "process_max_fds",
                "Maximum number of open file descriptors",
                soft as f64,
            )?;
        }
        Ok(())
    }
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: f64,
) -> Result<(), fmt::Error> {
    encoder
        .encode_descriptor(name, help, None, MetricType::Gauge)?
        .encode_gauge(&value)
}

/// The resident memory of process `pid` in bytes, read as `process_resident_memory_bytes` is for
/// this one: what `polisctl bench` reports of a node, its etcd and its swtpm.
pub fn resident_memory_bytes(pid: i32) -> Option<f64> {
    Some(read_stat(&pid.to_string())?.resident_memory_bytes)
}

/// `/proc/<proc>/stat` (`proc` a PID or `self`), with the kernel's clock tick, page size and
/// boot time.
fn read_stat(proc: &str) -> Option<Stat> {
    let stat = std::fs::read_to_string(format!("/proc/{proc}/stat")).ok()?;
    let boot = std::fs::read_to_string("/proc/stat").ok()?;
    let ticks = sysconf(SysconfVar::CLK_TCK).ok()?? as f64;
    let page = sysconf(SysconfVar::PAGE_SIZE).ok()?? as f64;
    parse_stat(&stat, boot_time(&boot)?, ticks, page)
}

/// The boot time, in seconds since the Unix epoch, from `/proc/stat`'s `btime` line.
fn boot_time(proc_stat: &str) -> Option<f64> {
    proc_stat
        .lines()
        .find_map(|line| line.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

/// The figures of a `/proc/PID/stat` line (see proc(5)): its fields are counted after the
/// command's closing parenthesis, since the command itself may hold spaces and parentheses.
fn parse_stat(line: &str, boot_time: f64, ticks_per_second: f64, page_size: f64) -> Option<Stat> {
    let (_, after_command) = line.rsplit_once(')')?;
    // Field 3 (state) is the first after the command; field n is at index n - 3.
    let fields: Vec<&str> = after_command.split_whitespace().collect();
    let field = |n: usize| -> Option<f64> { fields.get(n - 3)?.parse().ok() };
    Some(Stat {
        cpu_seconds: (field(14)? + field(15)?) / ticks_per_second,
        start_time_seconds: boot_time + field(22)? / ticks_per_second,
        virtual_memory_bytes: field(23)?,
        resident_memory_bytes: field(24)? * page_size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_with_a_tricky_command_parses() {
        // utime 250 and stime 150 ticks, started 1000 ticks after boot, 8 MiB virtual,
        // 300 resident pages.
        let line = "42 (polis) (node)) S 1 42 42 0 -1 4194560 100 0 0 0 250 150 0 0 20 0 9 0 \
                    1000 8388608 300 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        let stat = parse_stat(line, 1_700_000_000.0, 100.0, 4096.0).unwrap();
        assert_eq!(
            stat,
            Stat {
                cpu_seconds: 4.0,
                start_time_seconds: 1_700_000_010.0,
                virtual_memory_bytes: 8_388_608.0,
                resident_memory_bytes: 1_228_800.0,
            }
        );
        assert_eq!(parse_stat("42 (truncated", 0.0, 100.0, 4096.0), None);
    }

    #[test]
    fn the_boot_time_comes_from_btime() {
        let proc_stat = "cpu  1 2 3\nintr 5\nbtime 1700000000\nprocesses 9\n";
        assert_eq!(boot_time(proc_stat), Some(1_700_000_000.0));
        assert_eq!(boot_time("cpu 1 2 3\n"), None);
    }

    #[test]
    fn this_process_reads_as_running_and_using_memory() {
        let stat = read_stat("self").expect("/proc/self/stat");
        assert!(stat.resident_memory_bytes > 0.0);
        assert!(stat.start_time_seconds > 1_600_000_000.0);
        assert!(stat.cpu_seconds >= 0.0);
    }
}
