//! The node's debug endpoint on loopback: `/metrics` (Prometheus text, or OpenMetrics when asked), `/debug/tree` (JSON
//! snapshots by path), `/debug/logs?path=` (an actor's kept log lines) and `POST /debug/kill`
//! (fault injection, body `{"path": "/cluster/consensus", "how": "crash" | "brutal"}`). Killing
//! needs `Authorization: Bearer <token>` with the token the server was started with: loopback
//! alone would let any local process stop the node.

use std::net::SocketAddr;

use actix_web::dev::ServerHandle;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use subtle::ConstantTimeEq;

use crate::{Exposition, Kill, KillError, Registry};

/// Why the debug endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum DebugServerError {
    /// It can kill actors, so it never listens beyond loopback.
    #[error("the debug endpoint only binds to loopback, not {0}")]
    NotLoopback(SocketAddr),
    /// The address could not be bound.
    #[error("cannot bind the debug endpoint to {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// A running debug endpoint.
pub struct DebugServer {
    addr: SocketAddr,
    handle: ServerHandle,
}

impl DebugServer {
    /// Serve `registry` on `bind` (a loopback address; port 0 picks a free one); kills need
    /// `kill_token`. Must be called inside an actix system.
    pub fn start(
        registry: Registry,
        bind: SocketAddr,
        kill_token: String,
    ) -> Result<DebugServer, DebugServerError> {
        if !bind.ip().is_loopback() {
            return Err(DebugServerError::NotLoopback(bind));
        }
        let data = web::Data::new(registry);
        let token = web::Data::new(KillToken(kill_token));
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .app_data(token.clone())
                .route("/metrics", web::get().to(metrics))
                .route("/debug/tree", web::get().to(tree))
                .route("/debug/logs", web::get().to(logs))
                .route("/debug/kill", web::post().to(kill))
        })
        .workers(1)
        .disable_signals()
        .bind(bind)
        .map_err(|source| DebugServerError::Bind { addr: bind, source })?;
        let addr = server.addrs().first().copied().unwrap_or(bind);
        let server = server.run();
        let handle = server.handle();
        actix_rt::spawn(server);
        Ok(DebugServer { addr, handle })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stop serving.
    pub async fn stop(&self) {
        self.handle.stop(true).await;
    }
}

async fn metrics(registry: web::Data<Registry>, request: HttpRequest) -> HttpResponse {
    let accept = request
        .headers()
        .get(actix_web::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok());
    let format = Exposition::negotiate(accept);
    HttpResponse::Ok()
        .content_type(format.content_type())
        .body(registry.metrics_text(format))
}

async fn tree(registry: web::Data<Registry>) -> HttpResponse {
    HttpResponse::Ok().json(registry.snapshot())
}

#[derive(serde::Deserialize)]
struct LogsQuery {
    path: String,
}

async fn logs(registry: web::Data<Registry>, query: web::Query<LogsQuery>) -> HttpResponse {
    match registry.logs(&query.path) {
        Some(lines) => HttpResponse::Ok().json(lines),
        None => HttpResponse::NotFound().body(format!("no actor at {}\n", query.path)),
    }
}

#[derive(serde::Deserialize)]
struct KillRequest {
    path: String,
    how: Kill,
}

/// The secret a kill request must carry.
struct KillToken(String);

impl KillToken {
    /// Whether `request` carries the token, compared in constant time.
    fn admits(&self, request: &HttpRequest) -> bool {
        let presented = request
            .headers()
            .get(actix_web::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        let expected = self.0.as_bytes();
        !expected.is_empty() && bool::from(presented.as_bytes().ct_eq(expected))
    }
}

async fn kill(
    registry: web::Data<Registry>,
    token: web::Data<KillToken>,
    http: HttpRequest,
    request: web::Json<KillRequest>,
) -> HttpResponse {
    if !token.admits(&http) {
        return HttpResponse::Unauthorized()
            .body("killing an actor needs the node's debug token (Authorization: Bearer)\n");
    }
    match registry.kill(&request.path, request.how) {
        Ok(()) => {
            HttpResponse::Accepted().body(format!("{:?} sent to {}\n", request.how, request.path))
        }
        Err(e @ KillError::NoSuchActor(_)) => HttpResponse::NotFound().body(format!("{e}\n")),
        Err(e @ KillError::NotRunning(_)) => HttpResponse::Conflict().body(format!("{e}\n")),
    }
}
