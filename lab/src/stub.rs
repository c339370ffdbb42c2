//! Small servers in front of or in place of lab services: a fixed-answer
//! stand-in for an AWS endpoint that fails in one specific way (an STS that
//! denies), an outage proxy (an S3 that goes down and comes back), and the
//! benchmark's keep-alive front.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Router;

use crate::LabError;

/// A task serving on a loopback address: what every server here holds. The
/// task stops when this is dropped.
struct Listening {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Listening {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Listening {
    /// Serves `app` on a free loopback port.
    async fn serve(app: Router) -> Result<Self, LabError> {
        let (addr, task) = crate::serve(app, "127.0.0.1:0").await?;
        Ok(Self { addr, task })
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// A running stub; stops when dropped.
pub struct FixedResponse {
    listening: Listening,
    hits: Arc<AtomicUsize>,
}

impl FixedResponse {
    /// Answers every request with `status`, `content_type` and `body`.
    pub async fn start(
        status: u16,
        content_type: &'static str,
        body: &'static str,
    ) -> Result<Self, LabError> {
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&hits);
        let status = StatusCode::from_u16(status).map_err(|e| LabError::Setup(e.to_string()))?;
        let app = Router::new().fallback(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            async move { (status, [("content-type", content_type)], body).into_response() }
        });
        Ok(Self {
            listening: Listening::serve(app).await?,
            hits,
        })
    }

    /// An STS that denies every AssumeRole, as STS does for a trust-policy or
    /// ExternalId mismatch.
    pub async fn denying_sts() -> Result<Self, LabError> {
        Self::start(
            403,
            "text/xml",
            "<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><Error><Type>Sender</Type>\
             <Code>AccessDenied</Code><Message>User: arn:aws:sts::222222222222:assumed-role/bedrock-relay-exec/bedrock-relay \
             is not authorized to perform: sts:AssumeRole on resource: arn:aws:iam::111111111111:role/BedrockRelayTarget\
             </Message></Error><RequestId>lab</RequestId></ErrorResponse>",
        )
        .await
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        self.listening.endpoint()
    }

    /// Requests answered so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// A TCP proxy in front of a lab service that can be switched off, to stage an
/// outage: while down, new connections are closed at once and open ones are
/// cut, so clients see connection errors (not HTTP errors) until it is back.
pub struct OutageProxy {
    listening: Listening,
    down: tokio::sync::watch::Sender<bool>,
}

impl OutageProxy {
    /// Proxies to `upstream` (an `http://host:port` endpoint).
    pub async fn start(upstream: &str) -> Result<Self, LabError> {
        let upstream = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| LabError::Setup(format!("proxy bind: {e}")))?;
        let addr = listener
            .local_addr()
            .map_err(|e| LabError::Setup(format!("proxy addr: {e}")))?;
        let (down, watch) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if *watch.borrow() {
                    continue; // dropped: the client sees the connection close
                }
                let upstream = upstream.clone();
                let mut watch = watch.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = watch.wait_for(|down| *down) => {}
                    }
                });
            }
        });
        Ok(Self {
            listening: Listening { addr, task },
            down,
        })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        self.listening.endpoint()
    }

    /// Takes the service down (`true`) or brings it back (`false`).
    pub fn set_down(&self, down: bool) {
        self.down.send_replace(down);
    }
}

/// An HTTP front for a lab service that keeps client connections open, as
/// AWS endpoints do, and adds up the time the service took. moto's server
/// answers every request with `Connection: close`, so without it every S3 call
/// from a benchmarked variant would pay for a new TCP connection (connect,
/// shutdown, a socket) that it never pays against S3 itself. Requests are
/// forwarded unchanged, `Host` included, so what is signed is what the
/// service sees.
pub struct KeepAliveFront {
    listening: Listening,
    busy_nanos: Arc<std::sync::atomic::AtomicU64>,
}

impl KeepAliveFront {
    /// Fronts `upstream` (an `http://host:port` endpoint).
    pub async fn start(upstream: &str) -> Result<Self, LabError> {
        use axum::body::{to_bytes, Body};
        use axum::extract::Request;
        use axum::http::header::{CONNECTION, TRANSFER_ENCODING};

        let upstream = upstream.trim_end_matches('/').to_owned();
        let client = reqwest::Client::new();
        let busy_nanos = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let busy = Arc::clone(&busy_nanos);
        let app = Router::new().fallback(move |request: Request| {
            let client = client.clone();
            let upstream = upstream.clone();
            let busy = Arc::clone(&busy);
            async move {
                let started = std::time::Instant::now();
                let (parts, body) = request.into_parts();
                let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
                let forwarded = async {
                    let body = to_bytes(body, usize::MAX)
                        .await
                        .map_err(|e| e.to_string())?;
                    let mut headers = parts.headers.clone();
                    headers.remove(CONNECTION);
                    client
                        .request(parts.method.clone(), format!("{upstream}{path}"))
                        .headers(headers)
                        .body(body)
                        .send()
                        .await
                        .map_err(|e| e.to_string())
                };
                match forwarded.await {
                    Ok(response) => {
                        let status = response.status();
                        let mut headers = response.headers().clone();
                        headers.remove(CONNECTION);
                        headers.remove(TRANSFER_ENCODING);
                        let body = match response.bytes().await {
                            Ok(body) => body,
                            Err(err) => {
                                return (StatusCode::BAD_GATEWAY, err.to_string()).into_response()
                            }
                        };
                        let mut answer = Body::from(body).into_response();
                        *answer.status_mut() = status;
                        *answer.headers_mut() = headers;
                        busy.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
                        answer
                    }
                    Err(err) => (StatusCode::BAD_GATEWAY, err).into_response(),
                }
            }
        });
        Ok(Self {
            listening: Listening::serve(app).await?,
            busy_nanos,
        })
    }

    /// Time spent answering requests so far (the service and this front).
    pub fn busy(&self) -> std::time::Duration {
        std::time::Duration::from_nanos(self.busy_nanos.load(Ordering::Relaxed))
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        self.listening.endpoint()
    }
}
