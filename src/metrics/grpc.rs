//! gRPC server metrics for the Curator, as one tower layer around all its services rather than
//! code in each handler, under the names go-grpc-prometheus made conventional:
//! `grpc_server_handled_total{grpc_service, grpc_method, grpc_code}` and
//! `grpc_server_handling_seconds{grpc_service, grpc_method}`. A call counts once it has ended:
//! for a stream (Watch) that is when its trailers are sent, or when the client goes away.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use http_body::{Frame, SizeHint};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tonic::body::Body;
use tonic::codegen::http::{HeaderMap, Request, Response};
use tonic::codegen::{Bytes, Service};
use tonic::{Code, Status};

/// Labels of a finished call.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandledLabels {
    grpc_service: String,
    grpc_method: String,
    grpc_code: String,
}

/// Labels of a method's latency.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    grpc_service: String,
    grpc_method: String,
}

type LatencyFamily = Family<MethodLabels, Histogram, fn() -> Histogram>;

/// The Curator's call counts and latencies, shared by every connection.
#[derive(Clone, Debug)]
pub struct GrpcMetrics {
    handled: Family<HandledLabels, Counter>,
    handling: LatencyFamily,
}

impl Default for GrpcMetrics {
    fn default() -> Self {
        GrpcMetrics {
            handled: Family::default(),
            // 0.5 ms to ~16 s: a local read up to a registration waiting on etcd.
            handling: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0005, 2.0, 16))
            }),
        }
    }
}

impl GrpcMetrics {
    /// Add both families to `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "grpc_server_handled",
            "Calls completed on the server, by method and gRPC status code",
            self.handled.clone(),
        );
        registry.register(
            "grpc_server_handling_seconds",
            "Time from a call's arrival to its end on the server",
            self.handling.clone(),
        );
    }

    /// The tower layer that records every call of the server it wraps.
    pub fn layer(&self) -> GrpcMetricsLayer {
        GrpcMetricsLayer(self.clone())
    }
}

/// Wraps a tonic server's routes in [`MeteredService`].
#[derive(Clone, Debug)]
pub struct GrpcMetricsLayer(GrpcMetrics);

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = MeteredService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MeteredService {
            inner,
            metrics: self.0.clone(),
        }
    }
}

/// A gRPC service whose calls are counted and timed.
#[derive(Clone, Debug)]
pub struct MeteredService<S> {
    inner: S,
    metrics: GrpcMetrics,
}

impl<S> Service<Request<Body>> for MeteredService<S>
where
    S: Service<Request<Body>, Response = Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = Response<MeteredBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let call = Call::new(self.metrics.clone(), request.uri().path());
        let answer = self.inner.call(request);
        Box::pin(async move {
            let mut call = call;
            let (parts, body) = answer.await?.into_parts();
            // A call that failed at once answers with its status in the headers.
            if let Some(code) = status_code(&parts.headers) {
                call.end(code);
            }
            Ok(Response::from_parts(parts, MeteredBody { body, call }))
        })
    }
}

/// A response body that records its call when the trailers carry the final status.
#[derive(Debug)]
pub struct MeteredBody {
    body: Body,
    call: Call,
}

impl http_body::Body for MeteredBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(status_code) {
                    self.call.end(code);
                }
            }
            Poll::Ready(Some(Err(status))) => self.call.end(status.code()),
            // Trailers always carry the status; a body that ends without it broke off.
            Poll::Ready(None) => self.call.end(Code::Unknown),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// One call in flight: its method, its start, and whether it has been recorded.
#[derive(Debug)]
struct Call {
    metrics: GrpcMetrics,
    method: MethodLabels,
    started: Instant,
    ended: bool,
}

impl Call {
    /// A call to `path` (`/package.Service/Method`) starting now.
    fn new(metrics: GrpcMetrics, path: &str) -> Self {
        let (service, method) = path
            .trim_start_matches('/')
            .split_once('/')
            .unwrap_or(("unknown", "unknown"));
        Call {
            metrics,
            method: MethodLabels {
                grpc_service: service.to_owned(),
                grpc_method: method.to_owned(),
            },
            started: Instant::now(),
            ended: false,
        }
    }

    /// Record the call's end with `code`, once.
    fn end(&mut self, code: Code) {
        if std::mem::replace(&mut self.ended, true) {
            return;
        }
        let handled = HandledLabels {
            grpc_service: self.method.grpc_service.clone(),
            grpc_method: self.method.grpc_method.clone(),
            grpc_code: code_name(code).to_owned(),
        };
        self.metrics.handled.get_or_create(&handled).inc();
        self.metrics
            .handling
            .get_or_create(&self.method)
            .observe(self.started.elapsed().as_secs_f64());
    }
}

impl Drop for Call {
    /// A response dropped before its end: the client cancelled or went away.
    fn drop(&mut self) {
        self.end(Code::Cancelled);
    }
}

/// The `grpc-status` in `headers`, if any.
fn status_code(headers: &HeaderMap) -> Option<Code> {
    headers
        .get("grpc-status")
        .map(|value| Code::from_bytes(value.as_bytes()))
}

/// A code's name as gRPC's Go implementation spells it, which dashboards match on.
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::convert::Infallible;

    use http_body::Body as _;
    use tower::{Layer, ServiceExt};

    use super::*;

    /// A body that yields its frames in order.
    struct Frames(VecDeque<Frame<Bytes>>);

    impl http_body::Body for Frames {
        type Data = Bytes;
        type Error = Status;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
            Poll::Ready(self.0.pop_front().map(Ok))
        }
    }

    /// A body of one message then trailers with `code`.
    fn answered(code: Code) -> Response<Body> {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", (code as i32).to_string().parse().unwrap());
        let frames = [
            Frame::data(Bytes::from_static(b"\0\0\0\0\0")),
            Frame::trailers(trailers),
        ];
        Response::new(Body::new(Frames(frames.into())))
    }

    fn text(metrics: &GrpcMetrics) -> String {
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        out
    }

    async fn drain(response: Response<MeteredBody>) {
        let mut body = response.into_body();
        while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
        {
            frame.unwrap();
        }
    }

    #[tokio::test]
    async fn every_call_counts_once_with_its_final_code() {
        let metrics = GrpcMetrics::default();
        let routes = tower::service_fn(|request: Request<Body>| async move {
            Ok::<_, Infallible>(match request.uri().path() {
                // A trailers-only failure, as tonic sends a handler's error.
                "/polis.api.Management/ApproveNode" => {
                    Status::permission_denied("not the owner").into_http()
                }
                _ => answered(Code::Ok),
            })
        });
        let mut service = metrics.layer().layer(routes);
        let call = |path: &str| Request::builder().uri(path).body(Body::empty()).unwrap();
        for _ in 0..2 {
            let response = service
                .ready()
                .await
                .unwrap()
                .call(call("/polis.api.Management/GetNodes"));
            drain(response.await.unwrap()).await;
        }
        let response = service
            .ready()
            .await
            .unwrap()
            .call(call("/polis.api.Management/ApproveNode"));
        drain(response.await.unwrap()).await;
        // A response its client never reads to the end.
        let response = service
            .ready()
            .await
            .unwrap()
            .call(call("/polis.curator.Curator/Watch"));
        drop(response.await.unwrap());

        let text = text(&metrics);
        for (series, value) in [
            ("grpc_server_handled_total{grpc_service=\"polis.api.Management\",grpc_method=\"GetNodes\",grpc_code=\"OK\"}", 2),
            ("grpc_server_handled_total{grpc_service=\"polis.api.Management\",grpc_method=\"ApproveNode\",grpc_code=\"PermissionDenied\"}", 1),
            ("grpc_server_handled_total{grpc_service=\"polis.curator.Curator\",grpc_method=\"Watch\",grpc_code=\"Unknown\"}", 0),
            ("grpc_server_handling_seconds_count{grpc_service=\"polis.api.Management\",grpc_method=\"GetNodes\"}", 2),
        ] {
            let found = text
                .lines()
                .find_map(|line| line.strip_prefix(series))
                .map(|v| v.trim().parse::<u64>().unwrap());
            assert_eq!(found.unwrap_or(0), value, "{series} in\n{text}");
        }
        assert!(
            text.contains("grpc_method=\"Watch\",grpc_code=\"Canceled\"} 1"),
            "{text}"
        );
    }
}
