//! A small client for a node's loopback debug endpoint, used by `polisctl` and the local
//! cluster launcher.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Where a node's debug endpoint listens unless told otherwise (loopback of its namespace).
pub const DEBUG_ADDRESS: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 7840);

/// Why a debug request failed; each names the node's endpoint.
#[derive(Debug, thiserror::Error)]
pub enum DebugClientError {
    /// Nothing answered at the address.
    #[error("cannot reach the debug endpoint at {addr}: {source}")]
    Unreachable {
        /// The endpoint.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The endpoint answered with something that is not HTTP.
    #[error("the debug endpoint at {0} sent a malformed response")]
    Malformed(SocketAddr),
    /// The endpoint refused the request.
    #[error("the debug endpoint at {addr} answered {status}: {body}")]
    Status {
        /// The endpoint.
        addr: SocketAddr,
        /// The HTTP status.
        status: u16,
        /// Its explanation.
        body: String,
    },
}

/// Send one request and return the body of a 2xx answer.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> Result<String, DebugClientError> {
    let unreachable = |source| DebugClientError::Unreachable { addr, source };
    let mut stream =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(unreachable)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(unreachable)?;
    // HTTP/1.0: one request, the answer not chunked, the connection closed after it.
    let request = format!(
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).map_err(unreachable)?;
    let mut response = String::new();
    stream.read_to_string(&mut response).map_err(unreachable)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or(DebugClientError::Malformed(addr))?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or(DebugClientError::Malformed(addr))?;
    if !(200..300).contains(&status) {
        return Err(DebugClientError::Status {
            addr,
            status,
            body: body.trim().to_owned(),
        });
    }
    Ok(body.to_owned())
}
