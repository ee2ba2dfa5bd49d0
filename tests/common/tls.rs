//! A throwaway certificate authority for the fake WeChat server.
//!
//! The proxy under test must verify WeChat's certificate like it does in production, so the
//! fake serves a real chain: a test CA (whose PEM the proxy trusts through its `ca_file`) and
//! a leaf for `localhost` and `127.0.0.1` signed by it. Everything uses the `ring` provider
//! explicitly: the crate is built without aws-lc, so there is no process-wide default.

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A freshly generated CA and the server side of a TLS listener whose leaf it signed.
pub struct TestCa {
    /// The CA certificate in PEM, what a proxy config's `ca_file` points at.
    pub ca_pem: String,
    /// The same CA certificate in DER, for in-process clients (see [`client_config`]).
    pub ca_der: CertificateDer<'static>,
    /// A server config presenting the leaf (plus the CA) for `localhost` and `127.0.0.1`.
    pub server_config: Arc<rustls::ServerConfig>,
}

/// The only crypto provider this crate is built with; passed explicitly everywhere.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl TestCa {
    /// Generates a CA and a leaf certificate; takes a few milliseconds (ECDSA P-256 keys).
    pub fn generate() -> TestCa {
        let ca_key = KeyPair::generate().expect("generate CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "fake WeChat test CA");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = ca_params.self_signed(&ca_key).expect("self-sign CA");

        let leaf_key = KeyPair::generate().expect("generate leaf key");
        let mut leaf_params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .expect("leaf params");
        leaf_params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        leaf_params.use_authority_key_identifier_extension = true;
        leaf_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let leaf = leaf_params
            .signed_by(&leaf_key, &ca, &ca_key)
            .expect("sign leaf");

        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
        let server_config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default TLS versions")
            .with_no_client_auth()
            .with_single_cert(vec![leaf.der().clone(), ca.der().clone()], key)
            .expect("leaf certificate and key match");

        TestCa {
            ca_pem: ca.pem(),
            ca_der: ca.der().clone(),
            server_config: Arc::new(server_config),
        }
    }
}

/// A client config trusting only `ca_der`: lets tests talk to the fake over real TLS
/// without the proxy in between.
pub fn client_config(ca_der: &CertificateDer<'static>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca_der.clone()).expect("CA certificate parses");
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}
