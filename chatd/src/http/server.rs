//! The server loop: poem's endpoint on hyper connections configured here, for what poem's
//! `Server` does not offer: a header-read timeout (a client sending its headers a byte a
//! second is cut off), an inactivity timeout (a stalled body, a response nobody reads), and
//! a cap on the connections held at once, beyond which a connection is answered one 503
//! `overloaded` with `Retry-After` and closed.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::combinators::BoxBody;
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use poem::endpoint::BoxEndpoint;
use poem::http::uri::Scheme;
use poem::web::{LocalAddr, RemoteAddr};
use poem::{Addr, Endpoint, IntoResponse, Response};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::ApiError;
use crate::chat::Code;
use crate::limits::{Limit, Limited};

/// The connection limits of one listener.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Connections served at once.
    pub max_connections: usize,
    /// The time a client has for a request's headers (and an idle keep-alive connection for
    /// its next request).
    pub header_read_timeout: Duration,
    /// A connection with nothing read or written for this long is closed.
    pub idle_timeout: Duration,
}

/// Connections over the cap answered at once, at most (more are closed unanswered).
const REFUSALS: usize = 64;

/// Serves `ep` on `listener` until `shutdown` resolves, then lets open connections finish
/// their requests for up to `grace`.
pub async fn serve(
    listener: TcpListener,
    ep: BoxEndpoint<'static, Response>,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
    limits: ConnectionLimits,
) -> io::Result<()> {
    let ep = Arc::new(ep);
    let local = listener.local_addr()?;
    let open = Arc::new(Semaphore::new(limits.max_connections));
    let refusals = Arc::new(Semaphore::new(REFUSALS));
    let stop = CancellationToken::new();
    let connections = TaskTracker::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, remote) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, say: wait a moment rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let admitted = match open.clone().try_acquire_owned() {
            Ok(permit) => Admitted {
                _permit: permit,
                refused: false,
            },
            Err(_) => {
                // Counted in `chat_limited_total`.
                let _ = Limited::new(Limit::Overloaded, Duration::from_secs(1));
                match refusals.clone().try_acquire_owned() {
                    Ok(permit) => Admitted {
                        _permit: permit,
                        refused: true,
                    },
                    Err(_) => continue, // dropped: closed unanswered
                }
            }
        };
        let _ = stream.set_nodelay(true);
        connections.spawn(connection(
            stream,
            local,
            remote,
            ep.clone(),
            admitted,
            stop.clone(),
            limits,
        ));
    }
    drop(listener);
    stop.cancel();
    connections.close();
    if tokio::time::timeout(grace, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            grace_secs = grace.as_secs(),
            "connections still open after the grace period; closing them"
        );
    }
    Ok(())
}

/// A connection's place, held while it is open.
struct Admitted {
    _permit: OwnedSemaphorePermit,
    /// Over the cap: one 503, then closed.
    refused: bool,
}

fn overloaded() -> Response {
    let mut resp = ApiError::new(Code::Overloaded, "too many connections; retry").into_response();
    let headers = resp.headers_mut();
    headers.insert(
        poem::http::header::RETRY_AFTER,
        poem::http::HeaderValue::from_static("1"),
    );
    headers.insert(
        poem::http::header::CONNECTION,
        poem::http::HeaderValue::from_static("close"),
    );
    resp
}

async fn connection(
    stream: TcpStream,
    local: SocketAddr,
    remote: SocketAddr,
    ep: Arc<BoxEndpoint<'static, Response>>,
    admitted: Admitted,
    stop: CancellationToken,
    limits: ConnectionLimits,
) {
    let epoch = Instant::now();
    let activity = Arc::new(AtomicU64::new(0));
    let refused = admitted.refused;
    // The permit lives as long as the socket: after an upgrade, in the WebSocket's task.
    let io = Watched {
        inner: stream,
        epoch,
        activity: activity.clone(),
        _admitted: admitted,
    };
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let ep = ep.clone();
        async move {
            let resp = if refused {
                overloaded()
            } else {
                let req = poem::Request::from((
                    req,
                    LocalAddr(Addr::SocketAddr(local)),
                    RemoteAddr(Addr::SocketAddr(remote)),
                    Scheme::HTTP,
                ));
                ep.get_response(req).await
            };
            Ok::<_, Infallible>(hyper::Response::<BoxBody<Bytes, io::Error>>::from(resp))
        }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(!refused);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(limits.idle_timeout / 2));
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);
    let mut stopping = false;
    loop {
        let last = activity.load(Ordering::Relaxed);
        let deadline = epoch + Duration::from_millis(last) + limits.idle_timeout;
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, %remote, "connection ended with an error");
                }
                return;
            }
            () = stop.cancelled(), if !stopping => {
                conn.as_mut().graceful_shutdown();
                stopping = true;
            }
            () = tokio::time::sleep_until(deadline) => {
                if activity.load(Ordering::Relaxed) == last {
                    tracing::debug!(%remote, "closing a connection idle for too long");
                    return;
                }
            }
        }
    }
}

/// A socket that notes when it last moved bytes.
struct Watched {
    inner: TcpStream,
    epoch: Instant,
    activity: Arc<AtomicU64>,
    _admitted: Admitted,
}

impl Watched {
    fn touch(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.activity.store(ms, Ordering::Relaxed);
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.touch();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            this.touch();
        }
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            this.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
