//! The HTTP client that talks to WeChat: TLS with rustls, a keep-alive pool,
//! connect timeouts, and optionally an HTTP CONNECT tunnel through a fixed-IP
//! egress proxy. One client per egress route serves its apps' API calls and
//! token fetches.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Uri;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use tokio::net::TcpStream;

use crate::body::ProxyBody;
use crate::config::{EgressProxy, UpstreamSettings};

/// The pooled client every upstream request goes through.
pub type HttpClient = Client<HttpsConnector<Egress>, ProxyBody>;

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
    type Response = TokioIo<TcpStream>;
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
                Box::pin(async move { connecting.await.map_err(Into::into) })
            }
            Egress::Tunnel { tunnel, shown } => {
                let connecting = tunnel.call(dst);
                let proxy = shown.clone();
                Box::pin(async move {
                    connecting.await.map_err(|e| {
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

    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(std::time::Duration::from_secs(60))
        .pool_max_idle_per_host(1024)
        .build(https))
}
