//! The HTTP API of a user-v2 network, compatible with gvproxy's (gvisor-tap-vsock
//! `pkg/virtualnetwork`, `pkg/services`) and Lima's `wait_port` extension, served over
//! HTTP/1.1 on a unix socket (`limactl usernet -e`, `<name>_ep.sock`).
//!
//! The server runs on its own thread (tokio current_thread) and reaches the data plane only
//! through [`limanet_runtime::Control`]; DNS zones are shared with the DNS server through a
//! [`limanet_dns::ZonesHandle`]. Every connection is served by its own task with a timeout on
//! request headers, so a client that connects and never sends does not hold up others.
//!
//! Endpoints (see [`routes`]): `GET /services/forwarder/all`, `POST
//! /services/forwarder/expose|unexpose`, `GET /services/dhcp/leases` (and `/leases`), `GET
//! /services/dns/all`, `POST /services/dns/add`, `GET /extension/wait_port`, `GET /stats`,
//! `GET /cam`, `GET /flows`.

pub mod json;
pub mod routes;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

pub use routes::Context;

/// Largest request body accepted (zones are the biggest bodies, a few KiB in practice).
const MAX_BODY: usize = 1 << 20;
/// A client must send its request headers within this (Lima's server uses 10 s timeouts).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 64;

/// Where and how to serve.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// The unix socket path. A stale socket there is replaced; any other file is an error.
    pub path: PathBuf,
    /// Group allowed to use the socket (mode 0660); without one the mode is 0600.
    pub group: Option<u32>,
}

/// Why the API could not start.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    File(#[from] limanet_runtime::FileError),
    #[error("cannot start the API thread: {0}")]
    Start(std::io::Error),
}

/// A running API server; dropping it stops the server, joins its thread and removes the
/// socket file.
pub struct ApiServer {
    path: PathBuf,
    /// Removes the socket file on drop (if it is still ours).
    _bound: limanet_runtime::files::BoundPath,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ApiServer {
    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// [`bind`] then [`BoundApi::serve`].
pub fn spawn(config: ApiConfig, ctx: Context) -> Result<ApiServer, ApiError> {
    bind(&config)?.serve(ctx)
}

/// The API socket, bound and listening but not yet served: bind it while the process may still
/// create files where it must, and serve it once privileges are gone.
pub struct BoundApi {
    listener: std::os::unix::net::UnixListener,
    bound: limanet_runtime::files::BoundPath,
    path: PathBuf,
}

impl BoundApi {
    /// Serves the socket from a new thread.
    pub fn serve(self, ctx: Context) -> Result<ApiServer, ApiError> {
        let BoundApi {
            listener,
            bound,
            path,
        } = self;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(ApiError::Start)?;
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("limanet-api".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = match tokio::net::UnixListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => {
                            warn!(error = %e, "cannot serve the API socket");
                            return;
                        }
                    };
                    tokio::select! {
                        () = serve(listener, Arc::new(ctx)) => {}
                        _ = stop_rx => debug!("API server stopping"),
                    }
                });
            })
            .map_err(ApiError::Start)?;
        info!(path = %path.display(), "API listening");
        Ok(ApiServer {
            path,
            _bound: bound,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }
}

/// Binds the API socket with its final mode (0600, or 0660 and `group`): the mode comes from
/// the umask at bind time, so the socket is never reachable more widely, and no path-based
/// chmod can be redirected through a symlink.
pub fn bind(config: &ApiConfig) -> Result<BoundApi, ApiError> {
    let path = &config.path;
    let io = |what: &'static str| {
        move |source| ApiError::Io {
            what,
            path: path.clone(),
            source,
        }
    };
    // A socket left by a daemon that was killed is replaced; a live one or another file is not.
    let mode = if config.group.is_some() { 0o660 } else { 0o600 };
    let (listener, bound) = limanet_runtime::files::bind_socket(path, mode, config.group, |p| {
        std::os::unix::net::UnixListener::bind(p)
    })?;
    listener.set_nonblocking(true).map_err(io("listen on"))?;
    Ok(BoundApi {
        listener,
        bound,
        path: path.clone(),
    })
}

async fn serve(listener: tokio::net::UnixListener, ctx: Arc<Context>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // EMFILE and the like: back off instead of spinning.
                warn!(error = %e, "API accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let ctx = ctx.clone();
                async move { Ok::<_, std::convert::Infallible>(respond(&ctx, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                debug!(error = %e, "API connection ended");
            }
            drop(permit);
        });
    }
}

async fn respond(ctx: &Context, req: hyper::Request<Incoming>) -> hyper::Response<Full<Bytes>> {
    let method = req.method().as_str().to_string();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return to_hyper(routes::Response::error(400, format!("reading body: {e}"))),
    };
    let response = routes::handle(ctx, &method, &path, &query, &body).await;
    debug!(%method, %path, status = response.status, "API request");
    to_hyper(response)
}

fn to_hyper(r: routes::Response) -> hyper::Response<Full<Bytes>> {
    let mut response = hyper::Response::new(Full::new(Bytes::from(r.body)));
    *response.status_mut() =
        hyper::StatusCode::from_u16(r.status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(r.content_type),
    );
    response
}
