//! The owner's commands (`nodes`, `ticket`, `approve`, `decommission`, `take-ownership`)
//! against any cluster: one named by `--endpoint` and `--credentials`, one of the clusters file
//! (`--cluster`, or its current one), or the local cluster launched in `--dir`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use polis::clusters::{self, Cluster, Clusters};
use polis::netns::within;
use polis::owner::{self, Credentials, CuratorAddress, Owner, OwnerError};
use polis::pki::{fingerprint, hex};

use crate::cluster::{launched, runtime, ClusterError, NODES_FILE};

/// Which cluster an owner command is for, and as whom.
pub enum Target {
    /// A cluster whose Curators answer at these endpoints, with these credentials.
    Remote {
        /// Where the credentials are kept (a renewed owner certificate is written there).
        dir: PathBuf,
        /// Curator endpoints, tried in order.
        endpoints: Vec<SocketAddr>,
        /// The owner's credentials.
        credentials: Box<Credentials>,
    },
    /// The local cluster launched in this directory (reached inside its nodes' namespaces).
    Local(PathBuf),
}

impl Target {
    /// The target the flags name: `--endpoint` with `--credentials`; else `--cluster` from the
    /// clusters file; else the cluster launched in `dir`, if one is; else the clusters file's
    /// current cluster.
    pub fn choose(
        endpoints: &[String],
        credentials: Option<&Path>,
        cluster: Option<&str>,
        dir: &Path,
    ) -> Result<Self, ClusterError> {
        let remote = |endpoints: &[String], credentials: &Path| {
            Ok::<_, ClusterError>(Target::Remote {
                dir: credentials.to_owned(),
                endpoints: endpoints
                    .iter()
                    .map(|e| clusters::endpoint(e))
                    .collect::<Result<_, _>>()?,
                credentials: Box::new(Credentials::load(credentials)?),
            })
        };
        match (endpoints.is_empty(), credentials) {
            (false, Some(credentials)) => return remote(endpoints, credentials),
            (true, None) => {}
            _ => {
                return Err(ClusterError::Usage(
                    "--endpoint and --credentials go together".into(),
                ))
            }
        }
        if cluster.is_none() && dir.join(NODES_FILE).exists() {
            return Ok(Target::Local(dir.to_owned()));
        }
        let path = Clusters::path()?;
        match Clusters::load(&path)?.select(cluster, &path)? {
            Some(chosen) => remote(&chosen.endpoints, &chosen.credentials),
            None => Err(ClusterError::Usage(format!(
                "no cluster to manage: no local cluster in {}, none current in {}; name one \
                 with --endpoint and --credentials, or take ownership first",
                dir.display(),
                path.display()
            ))),
        }
    }
}

/// Run `call` as the owner against the first Curator of `target` that answers.
fn with_owner<T: Send>(
    target: &Target,
    call: impl AsyncFn(&mut Owner) -> Result<T, OwnerError> + Sync,
) -> Result<T, ClusterError> {
    match target {
        Target::Remote {
            dir,
            endpoints,
            credentials,
        } => {
            let mut last = ClusterError::Usage("no Curator endpoint given".into());
            let mut credentials = (**credentials).clone();
            for &address in endpoints {
                let answer = runtime(Path::new("."))?.block_on(async {
                    let mut owner = Owner::at(address, &mut credentials, dir).await?;
                    call(&mut owner).await
                });
                match answer {
                    Ok(value) => return Ok(value),
                    Err(e) => last = e.into(),
                }
            }
            Err(last)
        }
        Target::Local(dir) => with_local_owner(dir, call),
    }
}

/// Run `call` as the owner against the first node of the cluster launched in `dir` that
/// answers, from inside that node's namespace (a VM's is the one with the bridge).
fn with_local_owner<T: Send>(
    dir: &Path,
    call: impl AsyncFn(&mut Owner) -> Result<T, OwnerError> + Sync,
) -> Result<T, ClusterError> {
    let mut credentials = Credentials::load(dir)?;
    let mut last = ClusterError::Usage(format!("no node listed in {}", dir.display()));
    for node in launched(dir)? {
        let (Some(id), Some(address), Some(namespace)) = (
            node["id"].as_str(),
            node["address"].as_str().and_then(|a| a.parse().ok()),
            node["namespace"].as_str(),
        ) else {
            continue;
        };
        let curator = CuratorAddress {
            node_id: id.to_owned(),
            address: SocketAddr::new(address, polis::curator::CURATOR_PORT),
        };
        let answer = within(namespace, || {
            runtime(dir)?.block_on(async {
                credentials.renew_if_due(&curator, dir).await?;
                let mut owner = Owner::connect(
                    &curator,
                    &credentials.ca,
                    &credentials.key,
                    credentials.certificate.clone(),
                )
                .await?;
                Ok::<_, ClusterError>(call(&mut owner).await?)
            })
        })?;
        match answer {
            Ok(value) => return Ok(value),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Take ownership of the cluster at `endpoint` with the owner key in `key_file`: its CA is
/// trusted only if its fingerprint is `expected` (or, with none given, if the user confirms it
/// on a terminal). The credentials go to `credentials` and the cluster into the clusters file
/// as `name`, made current.
pub fn take_ownership(
    endpoint: &str,
    key_file: &Path,
    expected: Option<&str>,
    credentials: &Path,
    name: &str,
    json: bool,
) -> Result<(), ClusterError> {
    let address = clusters::endpoint(endpoint)?;
    let key = owner::read_key(key_file)?;
    let mut seen = String::new();
    let taken = runtime(credentials)?.block_on(owner::take_ownership(address, key, |ca| {
        seen = fingerprint(ca);
        accept_ca(&seen, expected)
    }))?;
    taken.save(credentials)?;
    let path = Clusters::path()?;
    let mut config = Clusters::load(&path)?;
    config.set_current(
        name,
        Cluster {
            endpoints: vec![endpoint.to_owned()],
            credentials: credentials.to_owned(),
        },
    );
    config.save(&path)?;
    match json {
        true => println!(
            "{}",
            serde_json::json!({
                "cluster": name,
                "ca_fingerprint": seen,
                "credentials": credentials,
                "config": path,
            })
        ),
        false => eprintln!(
            "polisctl: you own cluster {name:?} (CA SHA-256 {seen}); credentials in {}, \
             cluster in {} (current)",
            credentials.display(),
            path.display()
        ),
    }
    Ok(())
}

/// Whether the CA whose fingerprint is `seen` may be trusted: it must be `expected` (hex,
/// colons and case ignored); with none expected, the user is asked on a terminal.
fn accept_ca(seen: &str, expected: Option<&str>) -> Result<(), OwnerError> {
    use std::io::{BufRead, IsTerminal, Write};
    let refused = |why: String| OwnerError::CaRefused {
        fingerprint: seen.to_owned(),
        why,
    };
    if let Some(expected) = expected {
        let expected: String = expected
            .chars()
            .filter(|c| *c != ':')
            .map(|c| c.to_ascii_lowercase())
            .collect();
        return match expected == seen {
            true => Ok(()),
            false => Err(refused(format!("--ca-fingerprint says {expected}"))),
        };
    }
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Err(refused(
            "no --ca-fingerprint given and no terminal to confirm it on".into(),
        ));
    }
    eprint!("The cluster's CA has the SHA-256 fingerprint\n  {seen}\nTrust it? [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    let _ = stdin.lock().read_line(&mut answer);
    match answer.trim() {
        "y" | "Y" | "yes" => Ok(()),
        _ => Err(refused("not confirmed".into())),
    }
}

/// List the cluster's nodes.
pub fn nodes(target: &Target, json: bool) -> Result<(), ClusterError> {
    let nodes = with_owner(target, async |owner| owner.nodes().await)?;
    print_nodes(&nodes, json);
    Ok(())
}

/// Print the register ticket, replacing it first if `rotate`.
pub fn ticket(target: &Target, rotate: bool, json: bool) -> Result<(), ClusterError> {
    let ticket = with_owner(target, async |owner| match rotate {
        true => owner.rotate_ticket().await,
        false => owner.ticket().await,
    })?;
    match json {
        true => println!("{}", serde_json::json!({ "ticket": hex(&ticket) })),
        false => println!("{}", hex(&ticket)),
    }
    Ok(())
}

/// Approve the NEW node whose public key is `pubkey` (hex).
pub fn approve(target: &Target, pubkey: &str) -> Result<(), ClusterError> {
    let key = unhex(pubkey).ok_or_else(|| ClusterError::Usage(format!("{pubkey:?} is not hex")))?;
    with_owner(target, async |owner| owner.approve(&key).await)
}

/// Decommission node `id` and wait until it is retired, saying what the cluster waits on.
pub fn decommission(target: &Target, id: &str) -> Result<(), ClusterError> {
    with_owner(target, async |owner| {
        owner.decommission(id).await?;
        owner
            .wait_retired(id, DECOMMISSION_PATIENCE, |waiting_on| {
                eprintln!("decommissioning {id}: waiting on {waiting_on}")
            })
            .await
    })?;
    eprintln!("{id} is decommissioned and retired");
    Ok(())
}

/// Print the PCR 7 values nodes ask the owner to approve.
pub fn pcr_requests(target: &Target, json: bool) -> Result<(), ClusterError> {
    let requests = with_owner(target, async |owner| owner.pcr_requests().await)?;
    if json {
        let list: Vec<serde_json::Value> = requests
            .iter()
            .map(|r| {
                serde_json::json!({
                    "id": r.id,
                    "approved_pcr7": hex(&r.approved_pcr7),
                    "requested_pcr7": hex(&r.requested_pcr7),
                    "event_log_sha256": (!r.event_log_digest.is_empty()).then(|| hex(&r.event_log_digest)),
                    "requested_at": r.requested_at,
                    "refused": r.refused,
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(list));
        return Ok(());
    }
    if requests.is_empty() {
        eprintln!("no node asks for a PCR 7 approval");
        return Ok(());
    }
    let now = polis::pki::unix_now();
    let rows: Vec<[String; 6]> = requests
        .iter()
        .map(|r| {
            [
                r.id.clone(),
                if r.refused { "refused" } else { "pending" }.to_owned(),
                hex(&r.approved_pcr7),
                hex(&r.requested_pcr7),
                age(now - r.requested_at),
                match r.event_log_digest.is_empty() {
                    true => "-".to_owned(),
                    false => hex(&r.event_log_digest),
                },
            ]
        })
        .collect();
    let header = [
        "NODE",
        "STATE",
        "APPROVED PCR 7",
        "REQUESTED PCR 7",
        "ASKED",
        "EVENT LOG SHA-256",
    ]
    .map(str::to_owned);
    print!("{}", crate::table::table(&header, &rows));
    Ok(())
}

/// Approve (or refuse) the PCR 7 value node `id` asks for now, saying which.
pub fn approve_pcr(target: &Target, id: &str, approve: bool) -> Result<(), ClusterError> {
    let decided = with_owner(target, async |owner| {
        let requests = owner.pcr_requests().await?;
        let Some(request) = requests.into_iter().find(|r| r.id == id) else {
            return Ok(None);
        };
        owner
            .decide_pcr(id, &request.requested_pcr7, approve)
            .await?;
        Ok(Some(request))
    })?;
    let request = decided.ok_or_else(|| {
        ClusterError::Usage(format!(
            "node {id} asks for no PCR 7 approval (see polisctl pcr-requests)"
        ))
    })?;
    eprintln!(
        "{} PCR 7 value {} for {id} (approved before: {})",
        if approve { "approved" } else { "refused" },
        hex(&request.requested_pcr7),
        hex(&request.approved_pcr7)
    );
    Ok(())
}

/// How long `polisctl decommission` waits for the retirement before saying what blocks it.
const DECOMMISSION_PATIENCE: std::time::Duration = std::time::Duration::from_secs(120);

fn unhex(s: &str) -> Option<Vec<u8>> {
    s.len()
        .is_multiple_of(2)
        .then(|| {
            (0..s.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
                .collect()
        })
        .flatten()
}

pub fn print_nodes(nodes: &[polis::proto::api::Node], json: bool) {
    use polis::curator::records::state_name;
    if json {
        let list: Vec<serde_json::Value> = nodes
            .iter()
            .map(|n| {
                serde_json::json!({
                    "id": n.id,
                    "pubkey": hex(&n.pubkey),
                    "state": state_name(n.state),
                    "address": n.status.as_ref().map(|s| s.external_address.clone()),
                    "roles": held_roles(n),
                    "last_seen": last_seen(n),
                    "certificate_expires": (n.certificate_expires > 0).then_some(n.certificate_expires),
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(list));
        return;
    }
    let now = polis::pki::unix_now();
    let rows: Vec<[String; 6]> = nodes
        .iter()
        .map(|n| {
            let roles = held_roles(n);
            [
                n.id.clone(),
                state_name(n.state).to_owned(),
                n.status
                    .as_ref()
                    .map_or(String::new(), |s| s.external_address.clone()),
                match roles.is_empty() {
                    true => "-".to_owned(),
                    false => roles.join(","),
                },
                last_seen(n).map_or("-".to_owned(), |seen| age(now - seen)),
                utc_day(n.certificate_expires),
            ]
        })
        .collect();
    let header = [
        "NODE",
        "STATE",
        "ADDRESS",
        "ROLES",
        "LAST SEEN",
        "CERT EXPIRES",
    ]
    .map(str::to_owned);
    print!("{}", crate::table::table(&header, &rows));
}

/// When a Curator last heard from node `n` (seconds since the Unix epoch), if ever.
fn last_seen(n: &polis::proto::api::Node) -> Option<i64> {
    n.status
        .as_ref()
        .map(|s| s.last_seen)
        .filter(|seen| *seen > 0)
}

/// The UTC day of `unix` seconds, `YYYY-MM-DD` (`-` for 0: no certificate).
fn utc_day(unix: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp(unix) {
        Ok(at) if unix > 0 => at.date().to_string(),
        _ => "-".to_owned(),
    }
}

/// How long ago `seconds` was, as a person reads it: `5s ago`, `3m ago`, `2h ago`, `4d ago`
/// (a clock behind the Curator's reads as `0s ago`).
fn age(seconds: i64) -> String {
    let seconds = seconds.max(0);
    match seconds {
        0..60 => format!("{seconds}s ago"),
        60..3600 => format!("{}m ago", seconds / 60),
        3600..86400 => format!("{}h ago", seconds / 3600),
        _ => format!("{}d ago", seconds / 86400),
    }
}

/// The roles node `n` holds: only an UP node holds any (a decommissioned node's record keeps the
/// roles it had, which it no longer holds).
fn held_roles(n: &polis::proto::api::Node) -> Vec<&'static str> {
    let up = n.state == polis::proto::common::NodeState::Up as i32;
    let roles = n.roles.as_ref().filter(|_| up);
    [
        (
            "consensus",
            roles.is_some_and(|r| r.consensus_member.is_some()),
        ),
        (
            "kubernetes-worker",
            roles.is_some_and(|r| r.kubernetes_worker.is_some()),
        ),
    ]
    .into_iter()
    .filter_map(|(name, held)| held.then_some(name))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::{age, utc_day};

    #[test]
    fn ages_read_in_the_largest_whole_unit() {
        let ages: Vec<String> = [-3, 0, 59, 60, 3599, 3600, 86399, 86400 * 9]
            .into_iter()
            .map(age)
            .collect();
        assert_eq!(
            ages,
            ["0s ago", "0s ago", "59s ago", "1m ago", "59m ago", "1h ago", "23h ago", "9d ago"]
        );
    }

    #[test]
    fn expiry_days_are_utc_dates() {
        assert_eq!(utc_day(0), "-");
        assert_eq!(utc_day(86_399), "1970-01-01");
        assert_eq!(utc_day(2_000_000_000), "2033-05-18");
    }
}
