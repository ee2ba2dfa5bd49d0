//! The HTTP client that talks to WeChat: TLS with rustls, a keep-alive pool,
//! connect timeouts, and optionally an HTTP CONNECT tunnel through a fixed-IP
//! egress proxy. One client per egress route serves its apps' API calls and
//! token fetches.
//!
//! A pooled connection can be closed by the server just as a request goes
//! out on it (its keep-alive timeout fired). The request never reached the
//! application, so the proxy sends it again on a connection of its own; each
//! connection counts its requests so the proxy can tell a reused one.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::connect::{
    capture_connection, CaptureConnection, Connected, Connection, HttpConnector,
};
use hyper_util::client::legacy::{Client, ResponseFuture};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use tokio::net::TcpStream;

use crate::body::ProxyBody;
use crate::config::{EgressProxy, UpstreamSettings};

/// WeChat's servers close idle keep-alive connections; a pooled connection
/// must be dropped before that, or requests race the server's close. Well
/// under the usual server timeouts (nginx 75 s, many load balancers 60 s,
/// some 15–30 s): a new TLS connection per 10 s idle gap costs little.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// The client every upstream request goes through: a keep-alive pool, and
/// the same route without one for a retry that must not reuse a connection.
#[derive(Clone)]
pub struct HttpClient {
    /// Keeps connections for reuse.
    pooled: Client<HttpsConnector<Egress>, ProxyBody>,
    /// Opens a connection per request and keeps none.
    fresh: Client<HttpsConnector<Egress>, ProxyBody>,
}

impl HttpClient {
    /// Sends `request` on a pooled connection.
    pub async fn request(
        &self,
        request: Request<ProxyBody>,
    ) -> Result<Response<Incoming>, hyper_util::client::legacy::Error> {
        let (answer, connection) = self.request_watched(request);
        let answer = answer.await;
        // Counted like every request, so the next one on this connection
        // knows it is reused.
        connection.was_reused();
        answer
    }

    /// Sends `request` on a pooled connection, and tells afterwards (through
    /// [`Reuse::was_reused`]) whether that connection had served a request
    /// before.
    pub fn request_watched(&self, mut request: Request<ProxyBody>) -> (ResponseFuture, Reuse) {
        let captured = capture_connection(&mut request);
        (self.pooled.request(request), Reuse(captured))
    }

    /// Sends `request` on a new connection that is closed afterwards.
    pub fn request_fresh(&self, request: Request<ProxyBody>) -> ResponseFuture {
        self.fresh.request(request)
    }
}

/// Which connection a request went out on.
pub struct Reuse(CaptureConnection);

impl Reuse {
    /// Whether the connection had carried a request before this one. Call
    /// once per request, after it was sent.
    pub fn was_reused(&self) -> bool {
        let connected = self.0.connection_metadata();
        let Some(connected) = connected.as_ref() else {
            return false;
        };
        let mut extensions = http::Extensions::new();
        connected.get_extras(&mut extensions);
        extensions
            .get::<Uses>()
            .is_some_and(|uses| uses.0.fetch_add(1, Ordering::Relaxed) > 0)
    }
}

/// Requests a connection carried, shared by every copy of its metadata.
#[derive(Clone, Default)]
struct Uses(Arc<AtomicUsize>);

/// A connection to the upstream that carries its [`Uses`] in its metadata.
pub struct Counted<T> {
    /// The connection.
    io: T,
    /// Its request count.
    uses: Uses,
}

impl<T: Connection> Connection for Counted<T> {
    fn connected(&self) -> Connected {
        self.io.connected().extra(self.uses.clone())
    }
}

impl<T: hyper::rt::Read + Unpin> hyper::rt::Read for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: hyper::rt::Write + Unpin> hyper::rt::Write for Counted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// How a connection reaches WeChat: straight, or through a CONNECT tunnel.
#[derive(Clone)]
pub enum Egress {
    /// TCP to the upstream itself.
    Direct(HttpConnector),
    /// TCP to the egress proxy, then `CONNECT upstream:port`; TLS to WeChat
    /// runs end to end inside.
    Tunnel {
        /// The tunnel connector.
        tunnel: Tunnel<HttpConnector>,
        /// `host:port` of the proxy, for error messages.
        shown: Arc<str>,
    },
}

/// A failure to open a tunnel, naming the egress proxy.
#[derive(Debug, thiserror::Error)]
#[error("through egress proxy {proxy}: {source}")]
pub struct EgressError {
    proxy: Arc<str>,
    source: Box<dyn std::error::Error + Send + Sync>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<Uri> for Egress {
    type Response = Counted<TokioIo<TcpStream>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match self {
            Egress::Direct(http) => http.poll_ready(cx).map_err(Into::into),
            Egress::Tunnel { tunnel, .. } => tunnel.poll_ready(cx).map_err(Into::into),
        }
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        match self {
            Egress::Direct(http) => {
                let connecting = http.call(dst);
                Box::pin(async move { connecting.await.map(counted).map_err(Into::into) })
            }
            Egress::Tunnel { tunnel, shown } => {
                let connecting = tunnel.call(dst);
                let proxy = shown.clone();
                Box::pin(async move {
                    connecting.await.map(counted).map_err(|e| {
                        Box::new(EgressError {
                            proxy,
                            source: Box::new(e),
                        }) as BoxError
                    })
                })
            }
        }
    }
}

fn counted<T>(io: T) -> Counted<T> {
    Counted {
        io,
        uses: Uses::default(),
    }
}

/// Why the upstream client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// `ca_file` is unreadable or holds no usable certificate.
    #[error("upstream.ca_file: {0}")]
    CaFile(String),
    /// rustls refused the configuration.
    #[error("TLS setup failed: {0}")]
    Tls(#[from] rustls::Error),
}

/// Builds a client: WebPKI roots plus `ca_file`, HTTP/1.1, keep-alive,
/// through `egress` when given.
pub fn client(
    settings: &UpstreamSettings,
    egress: Option<&EgressProxy>,
) -> Result<HttpClient, UpstreamError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = &settings.ca_file {
        let shown = path.display();
        let mut added = 0;
        for cert in CertificateDer::pem_file_iter(path)
            .map_err(|e| UpstreamError::CaFile(format!("cannot read {shown}: {e}")))?
        {
            let cert = cert.map_err(|e| UpstreamError::CaFile(format!("{shown}: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| UpstreamError::CaFile(format!("{shown}: {e}")))?;
            added += 1;
        }
        if added == 0 {
            return Err(UpstreamError::CaFile(format!(
                "{shown} holds no PEM certificate"
            )));
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();

    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(settings.connect_timeout));
    // Disable Nagle: requests and answers are small and latency-bound.
    http.set_nodelay(true);
    let route = match egress {
        None => Egress::Direct(http),
        Some(proxy) => {
            let mut tunnel = Tunnel::new(proxy.uri.clone(), http);
            if let Some(auth) = &proxy.auth {
                tunnel = tunnel.with_auth(auth.clone());
            }
            Egress::Tunnel {
                tunnel,
                shown: proxy.to_string().into(),
            }
        }
    };
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(route);

    Ok(HttpClient {
        pooled: Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_max_idle_per_host(1024)
            .build(https.clone()),
        fresh: Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build(https),
    })
}
