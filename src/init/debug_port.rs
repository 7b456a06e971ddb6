//! The debug endpoint of a VM, reached from its host without putting it on the cluster network:
//! a virtio-serial port named `polis.debug` relays each HTTP request that the host writes to the
//! node's loopback debug endpoint, and writes the answer back prefixed by its length in decimal
//! and a newline (a serial port has no end of stream to mark the end of an answer).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::debug_client::AUTHORIZATION;

/// The name QEMU gives the port (`virtserialport,name=…`).
pub const PORT_NAME: &str = "polis.debug";

/// Relay requests from the port named [`PORT_NAME`] to `endpoint`, on a thread of its own, for
/// the life of the process, presenting the token in `token_file` (the port is the host's root's
/// way in). A machine without the port never finds it, and nothing happens.
pub fn serve(endpoint: SocketAddr, token_file: PathBuf, log: slog::Logger) {
    let spawned = std::thread::Builder::new()
        .name("debug-port".into())
        .spawn(move || {
            let Some(device) = find(Path::new("/sys/class/virtio-ports"), Path::new("/dev")) else {
                slog::debug!(log, "no debug port"; "name" => PORT_NAME);
                return;
            };
            slog::info!(log, "relaying the debug port to the debug endpoint";
                "port" => %device.display(), "endpoint" => %endpoint);
            loop {
                if let Err(e) = relay(&device, endpoint, &token_file) {
                    slog::warn!(log, "debug port failed; reopening it"; "error" => %e);
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        });
    if let Err(e) = spawned {
        eprintln!("cannot start the debug port relay: {e}");
    }
}

/// The device of the virtio port named [`PORT_NAME`].
fn find(class: &Path, dev: &Path) -> Option<PathBuf> {
    std::fs::read_dir(class)
        .ok()?
        .filter_map(Result::ok)
        .find_map(|entry| {
            let name = std::fs::read_to_string(entry.path().join("name")).ok()?;
            (name.trim() == PORT_NAME).then(|| dev.join(entry.file_name()))
        })
}

fn relay(device: &Path, endpoint: SocketAddr, token_file: &Path) -> std::io::Result<()> {
    let mut port = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(device)?;
    let mut pending = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = port.read(&mut chunk)?;
        if n == 0 {
            // No host connected: what was half sent is void.
            pending.clear();
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        pending.extend_from_slice(&chunk[..n]);
        while let Some(len) = request_len(&pending) {
            let request: Vec<u8> = pending.drain(..len).collect();
            let token = std::fs::read_to_string(token_file).unwrap_or_default();
            let request = with_token(&request, token.trim());
            let answer = forward(&request, endpoint).unwrap_or_else(|e| {
                let body = format!("the debug endpoint at {endpoint} failed: {e}");
                format!(
                    "HTTP/1.0 502 Bad Gateway\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )
                .into_bytes()
            });
            port.write_all(format!("{}\n", answer.len()).as_bytes())?;
            port.write_all(&answer)?;
        }
    }
}

/// The length of the first complete HTTP request in `buf` (head and `Content-Length` body).
pub fn request_len(buf: &[u8]) -> Option<usize> {
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..head_end]);
    let body: usize = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    (buf.len() >= head_end + body).then_some(head_end + body)
}

/// `request` with the token's header after its request line.
fn with_token(request: &[u8], token: &str) -> Vec<u8> {
    let Some(line_end) = request.windows(2).position(|w| w == b"\r\n") else {
        return request.to_vec();
    };
    let mut out = request[..line_end + 2].to_vec();
    out.extend_from_slice(format!("{AUTHORIZATION}{token}\r\n").as_bytes());
    out.extend_from_slice(&request[line_end + 2..]);
    out
}

fn forward(request: &[u8], endpoint: SocketAddr) -> std::io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect_timeout(&endpoint, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.write_all(request)?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_complete_with_its_body() {
        let get = b"GET /debug/tree HTTP/1.0\r\nHost: x\r\n\r\nGET";
        assert_eq!(request_len(get), Some(get.len() - 3));
        let post = b"POST /debug/kill HTTP/1.0\r\ncontent-length: 4\r\n\r\n{}";
        assert_eq!(request_len(post), None, "two body bytes are missing");
        let mut full = post.to_vec();
        full.extend_from_slice(b"  ");
        assert_eq!(request_len(&full), Some(full.len()));
        assert_eq!(request_len(b"GET / HTTP/1.0\r\n"), None);
    }

    #[test]
    fn the_token_goes_after_the_request_line() {
        let request = b"POST /debug/kill HTTP/1.0\r\nHost: x\r\n\r\n";
        let with = with_token(request, "t0k");
        assert_eq!(
            with,
            b"POST /debug/kill HTTP/1.0\r\nAuthorization: Bearer t0k\r\nHost: x\r\n\r\n"
        );
        assert_eq!(request_len(&with), Some(with.len()));
    }

    #[test]
    fn the_port_is_found_by_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let class = dir.path().join("class");
        for (port, name) in [("vport0p0", "other\n"), ("vport0p1", "polis.debug\n")] {
            std::fs::create_dir_all(class.join(port)).unwrap();
            std::fs::write(class.join(port).join("name"), name).unwrap();
        }
        assert_eq!(
            find(&class, Path::new("/dev")),
            Some(PathBuf::from("/dev/vport0p1"))
        );
    }
}
