//! The HTTP client that talks to WeChat: TLS with rustls, a keep-alive pool,
//! connect timeouts. One client serves every app and every token fetch.

use std::sync::Arc;

use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use crate::body::ProxyBody;
use crate::config::UpstreamSettings;

/// The pooled client every upstream request goes through.
pub type HttpClient = Client<HttpsConnector<HttpConnector>, ProxyBody>;

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

/// Builds the client: WebPKI roots plus `ca_file`, HTTP/1.1, keep-alive.
pub fn client(settings: &UpstreamSettings) -> Result<HttpClient, UpstreamError> {
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
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);

    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(std::time::Duration::from_secs(60))
        .pool_max_idle_per_host(1024)
        .build(https))
}
