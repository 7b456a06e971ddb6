//! gRPC over Polis TLS: tonic servers fed by our own rustls acceptor (handshakes off the accept
//! loop, with a timeout), client channels through our own rustls connector, and the verified
//! client certificate handed to handlers, which authorize by it.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::{server::TlsStream, TlsAcceptor, TlsConnector};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::transport::server::Connected;
use tonic::transport::{Channel, Endpoint};

/// How long a client gets to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long dialling a server (TCP and TLS) may take: a peer that is off drops SYNs, and the
/// caller has other peers to try.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How many TLS handshakes a server runs at once; connections beyond are closed on accept, so
/// unauthenticated clients cannot make a server hold unbounded state.
pub const MAX_HANDSHAKES: usize = 64;
/// How often a client pings its server over HTTP/2, idle or not, so that a server that went
/// away without closing (powered off, frozen, cut off) ends the channel's calls and Watch
/// streams instead of hanging them until TCP gives up.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// How long a ping may go unanswered before the channel is declared dead.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a call on a client channel waits for its answer (for a stream: for the stream to
/// open), so that a server whose handler hangs (a stuck actor, an etcd without quorum) fails
/// its caller, who has other servers to try or a backoff to run, instead of holding it.
pub const CALL_DEADLINE: Duration = Duration::from_secs(15);

/// Why a channel could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum GrpcError {
    /// The server name is not a valid DNS name or address.
    #[error("invalid server name {0:?}")]
    ServerName(String),
    /// Connecting or the TLS handshake failed.
    #[error("cannot reach {addr} as {name}: {cause}")]
    Connect {
        /// The address dialled.
        addr: SocketAddr,
        /// The name its certificate had to carry.
        name: String,
        /// Why, with every cause below it (tonic's own message only says "transport error").
        cause: String,
    },
}

/// Who is on the other end of a server connection.
#[derive(Clone, Debug)]
pub struct Peer {
    /// Where the connection comes from.
    pub remote: SocketAddr,
    /// The client's end-entity certificate (DER), as verified by the TLS config.
    pub certificate: Option<Vec<u8>>,
}

impl Peer {
    /// The Ed25519 public key of the client's certificate (Polis accepts no other kind).
    pub fn public_key(&self) -> Option<[u8; 32]> {
        let der = self.certificate.as_ref()?;
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        cert.public_key()
            .subject_public_key
            .data
            .as_ref()
            .try_into()
            .ok()
    }
}

/// A server-side TLS connection, telling tonic who the peer is. It ends (reads and writes fail)
/// when the server that accepted it ends, so no stream outlives its server's incarnation.
pub struct TlsConnection {
    stream: TlsStream<TcpStream>,
    peer: Peer,
    server_ended: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl TlsConnection {
    /// An error once the accepting server has ended; registers for the wake-up until then.
    fn check_server(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        match self.server_ended.as_mut().poll(cx) {
            Poll::Ready(()) => Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the server that accepted this connection has ended",
            )),
            Poll::Pending => Ok(()),
        }
    }
}

impl Connected for TlsConnection {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Peer {
        self.peer.clone()
    }
}

impl AsyncRead for TlsConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.check_server(cx)?;
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.check_server(cx)?;
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// The connections accepted on `listener` that complete a TLS handshake under the newest of
/// `configs` (a server swaps in a new config when its CRL changes, and the next handshake checks
/// against it), for `Router::serve_with_incoming`. Each handshake runs on its own task, so a slow
/// or hostile client cannot hold up the others; failed handshakes are logged and dropped, and at
/// most [`MAX_HANDSHAKES`] run at once.
pub fn incoming(
    listener: TcpListener,
    configs: watch::Receiver<Arc<ServerConfig>>,
    log: slog::Logger,
) -> impl Stream<Item = Result<TlsConnection, io::Error>> {
    let (tx, rx) = mpsc::channel(16);
    let server_ended = CancellationToken::new();
    let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    tokio::spawn(async move {
        // When the server drops the stream, this loop returns and every connection ends.
        let _end_connections = server_ended.clone().drop_guard();
        loop {
            // The listener closes as soon as the server drops the stream, not at the next accept.
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = tx.closed() => return,
            };
            let (tcp, remote) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    slog::warn!(log, "accept failed"; "error" => %e);
                    continue;
                }
            };
            if let Err(e) = send_at_once(&tcp) {
                slog::warn!(log, "TCP_NODELAY refused"; "peer" => %remote, "error" => %e);
            }
            // Before authentication nothing may queue without bound: past the limit, a new
            // connection is closed at once rather than held.
            let Ok(permit) = handshakes.clone().try_acquire_owned() else {
                slog::info!(log, "too many TLS handshakes in flight; connection closed";
                    "peer" => %remote, "limit" => MAX_HANDSHAKES);
                continue;
            };
            let acceptor = TlsAcceptor::from(configs.borrow().clone());
            let (sender, log) = (tx.clone(), log.clone());
            let server_ended = Box::pin(server_ended.clone().cancelled_owned());
            tokio::spawn(async move {
                let _permit = permit;
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let certificate = stream
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|chain| chain.first())
                            .map(|c| c.to_vec());
                        let peer = Peer {
                            remote,
                            certificate,
                        };
                        let connection = TlsConnection {
                            stream,
                            peer,
                            server_ended,
                        };
                        let _ = sender.send(connection).await;
                    }
                    Ok(Err(e)) => {
                        slog::info!(log, "TLS handshake refused"; "peer" => %remote, "error" => %e)
                    }
                    Err(_) => slog::info!(log, "TLS handshake timed out"; "peer" => %remote),
                }
            });
        }
    });
    futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|connection| (Ok(connection), rx))
    })
}

/// A channel to `addr`, whose certificate must name `server_name`, under `config`, each call
/// bounded by [`CALL_DEADLINE`]. Connects (and completes the handshake) before returning.
pub async fn channel(
    addr: SocketAddr,
    server_name: &str,
    config: ClientConfig,
) -> Result<Channel, GrpcError> {
    channel_with_deadline(addr, server_name, config, CALL_DEADLINE).await
}

/// [`channel`], each call bounded by `deadline` instead.
pub async fn channel_with_deadline(
    addr: SocketAddr,
    server_name: &str,
    config: ClientConfig,
    deadline: Duration,
) -> Result<Channel, GrpcError> {
    let name = ServerName::try_from(server_name.to_owned())
        .map_err(|_| GrpcError::ServerName(server_name.to_owned()))?;
    let connector = TlsConnector::from(Arc::new(config));
    // The URI only satisfies tonic; the connector below dials `addr` and speaks TLS itself.
    let endpoint =
        Endpoint::from_shared(format!("http://{addr}")).map_err(|source| GrpcError::Connect {
            addr,
            name: server_name.to_owned(),
            cause: causes(&source),
        })?;
    endpoint
        .timeout(deadline)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .connect_with_connector(tower::service_fn(move |_| {
            let (connector, name) = (connector.clone(), name.clone());
            let dial = async move {
                let tcp = TcpStream::connect(addr).await?;
                send_at_once(&tcp)?;
                let tls = connector.connect(name, tcp).await?;
                Ok::<_, io::Error>(TokioIo::new(tls))
            };
            async move {
                tokio::time::timeout(CONNECT_TIMEOUT, dial)
                    .await
                    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))?
            }
        }))
        .await
        .map_err(|source| GrpcError::Connect {
            addr,
            name: server_name.to_owned(),
            cause: causes(&source),
        })
}

/// Turn Nagle's algorithm off on `tcp`: a gRPC call is a few small writes, and with it on the
/// last of them waits for the peer's delayed ACK (about 40 ms a call).
fn send_at_once(tcp: &TcpStream) -> io::Result<()> {
    tcp.set_nodelay(true)
}

/// `error` and its sources, outermost first, joined by ": ", each message once.
fn causes(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        // Wrappers often repeat their cause's message; say it once.
        let said = cause.to_string();
        if !text.ends_with(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn both_ends_of_a_connection_send_small_writes_at_once() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let (client, (server, _)) = (client.unwrap(), accepted.unwrap());
        for tcp in [&client, &server] {
            assert!(!tcp.nodelay().unwrap(), "Nagle is on by default");
            send_at_once(tcp).unwrap();
            assert!(tcp.nodelay().unwrap());
        }
    }
}
