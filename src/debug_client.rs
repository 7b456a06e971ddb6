//! A small client for a node's loopback debug endpoint, used by `polisctl` and the local
//! cluster launcher.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// Where a node's debug endpoint listens unless told otherwise (loopback of its namespace).
pub const DEBUG_ADDRESS: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 7840);

/// Why a debug request failed; each names the node's endpoint.
#[derive(Debug, thiserror::Error)]
pub enum DebugClientError {
    /// Nothing answered at the address.
    #[error("cannot reach the debug endpoint at {endpoint}: {source}")]
    Unreachable {
        /// The endpoint (an address, or a VM's debug port socket).
        endpoint: String,
        /// Why.
        source: std::io::Error,
    },
    /// The endpoint answered with something that is not HTTP.
    #[error("the debug endpoint at {endpoint} sent a malformed response: {excerpt:?}")]
    Malformed {
        /// The endpoint.
        endpoint: String,
        /// The response's first bytes (empty when the endpoint closed without answering).
        excerpt: String,
    },
    /// The endpoint refused the request.
    #[error("the debug endpoint at {endpoint} answered {status}: {body}")]
    Status {
        /// The endpoint.
        endpoint: String,
        /// The HTTP status.
        status: u16,
        /// Its explanation.
        body: String,
    },
}

/// Send one request (presenting the node's debug token, if given: killing needs it) and return
/// the body of a 2xx answer.
pub fn request(
    addr: SocketAddr,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: &str,
) -> Result<String, DebugClientError> {
    let endpoint = addr.to_string();
    let unreachable = |source| DebugClientError::Unreachable {
        endpoint: endpoint.clone(),
        source,
    };
    let mut stream =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(unreachable)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(unreachable)?;
    stream
        .write_all(http_request(&endpoint, token, method, path, body).as_bytes())
        .map_err(unreachable)?;
    let mut response = String::new();
    stream.read_to_string(&mut response).map_err(unreachable)?;
    answer(&endpoint, &response)
}

/// The same request through a VM's debug port: QEMU's socket for the `polis.debug`
/// virtio-serial port, whose relay in the VM presents the node's token for it and answers with
/// the response's length, a newline and the response. (Who can open the socket is root on the
/// host, as who can read the token is root on the node.)
pub fn request_port(
    socket: &Path,
    method: &str,
    path: &str,
    body: &str,
) -> Result<String, DebugClientError> {
    let endpoint = socket.display().to_string();
    let unreachable = |source| DebugClientError::Unreachable {
        endpoint: endpoint.clone(),
        source,
    };
    let mut stream = UnixStream::connect(socket).map_err(unreachable)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(unreachable)?;
    stream
        .write_all(http_request("localhost", None, method, path, body).as_bytes())
        .map_err(unreachable)?;
    let mut reader = BufReader::new(stream);
    let mut length = String::new();
    reader.read_line(&mut length).map_err(unreachable)?;
    let length: usize = length
        .trim()
        .parse()
        .map_err(|_| malformed(&endpoint, &length))?;
    let mut response = vec![0u8; length];
    reader.read_exact(&mut response).map_err(unreachable)?;
    answer(&endpoint, &String::from_utf8_lossy(&response))
}

/// HTTP/1.0: one request, the answer not chunked, the connection closed after it.
fn http_request(host: &str, token: Option<&str>, method: &str, path: &str, body: &str) -> String {
    let authorization = token.map_or(String::new(), |t| format!("{AUTHORIZATION}{t}\r\n"));
    format!(
        "{method} {path} HTTP/1.0\r\nHost: {host}\r\n{authorization}\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// The header line that carries the debug token, up to the token.
pub const AUTHORIZATION: &str = "Authorization: Bearer ";

/// The debug token of the node rooted at `root`, if it can be read (root only).
pub fn read_token(root: &crate::storage::NodeRoot) -> Option<String> {
    std::fs::read_to_string(root.debug_token())
        .ok()
        .map(|t| t.trim().to_owned())
}

/// The body of a 2xx `response`, or the error it says.
fn answer(endpoint: &str, response: &str) -> Result<String, DebugClientError> {
    let malformed = || malformed(endpoint, response);
    let (head, body) = response.split_once("\r\n\r\n").ok_or_else(malformed)?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(malformed)?;
    if !(200..300).contains(&status) {
        return Err(DebugClientError::Status {
            endpoint: endpoint.to_owned(),
            status,
            body: body.trim().to_owned(),
        });
    }
    Ok(body.to_owned())
}

/// A [`DebugClientError::Malformed`] quoting the start of what `endpoint` sent.
fn malformed(endpoint: &str, response: &str) -> DebugClientError {
    DebugClientError::Malformed {
        endpoint: endpoint.to_owned(),
        excerpt: response.chars().take(80).collect(),
    }
}
