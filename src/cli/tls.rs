//! TLS to a listener that has it (rustls with ring, as the listeners). The CLI trusts either
//! the listener's own certificate, read from the configuration's `tls_cert_file` (the exact
//! certificate, pinned: no CA, name or date is involved, as the file is the daemon's own), or
//! with `--ca-file` the certificates a CA signed, for the listener's address (an IP address
//! literal, or the host of `--url https://...`).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::{ClientConfig, DigitallySignedStruct as Dss, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::client::{CliError, CliResult};
use super::Exit;

/// How the CLI opens TLS to one listener.
#[derive(Clone)]
pub struct TlsClient {
    connector: TlsConnector,
    name: ServerName<'static>,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsClient")
            .field("name", &self.name)
            .finish()
    }
}

impl TlsClient {
    /// Trusts exactly the certificate in `cert_file` (the first of its chain): the listener's.
    pub fn pinned(cert_file: &Path, addr: SocketAddr) -> CliResult<Self> {
        let chain = pem_certificates(cert_file, "the listener's certificate (tls_cert_file)")?;
        let provider = provider();
        let verifier = Pinned {
            cert: chain[0].clone(),
            provider: provider.clone(),
        };
        let config = builder(&provider)?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        Ok(Self::with(config, ServerName::IpAddress(addr.ip().into())))
    }

    /// Trusts the certificates the CA(s) in `ca_file` signed for `name` (a DNS name or an IP
    /// address).
    pub fn with_ca(ca_file: &Path, name: &str) -> CliResult<Self> {
        let mut roots = RootCertStore::empty();
        for c in pem_certificates(ca_file, "the CA file (--ca-file)")? {
            roots
                .add(c)
                .map_err(|e| CliError::new(Exit::Config, format!("{}: {e}", ca_file.display())))?;
        }
        let provider = provider();
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| CliError::new(Exit::Config, format!("{}: {e}", ca_file.display())))?;
        let name = ServerName::try_from(name.to_string()).map_err(|e| {
            CliError::new(
                Exit::Config,
                format!("{name} is not a TLS server name: {e}"),
            )
        })?;
        let config = builder(&provider)?
            .with_webpki_verifier(verifier)
            .with_no_client_auth();
        Ok(Self::with(config, name))
    }

    fn with(mut config: ClientConfig, name: ServerName<'static>) -> Self {
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        TlsClient {
            connector: TlsConnector::from(Arc::new(config)),
            name,
        }
    }

    /// The handshake over `tcp`.
    pub async fn connect(&self, tcp: TcpStream) -> std::io::Result<TlsStream<TcpStream>> {
        self.connector.connect(self.name.clone(), tcp).await
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn builder(
    provider: &Arc<CryptoProvider>,
) -> CliResult<rustls::ConfigBuilder<ClientConfig, rustls::WantsVerifier>> {
    ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| CliError::new(Exit::Failed, format!("TLS: {e}")))
}

/// The certificates of a PEM file; unreadable is a permission error (the hint says what to
/// do), no certificate in it a configuration error.
fn pem_certificates(path: &Path, what: &str) -> CliResult<Vec<CertificateDer<'static>>> {
    let shown = path.display();
    if let Err(e) = std::fs::File::open(path) {
        return Err(CliError::new(
            Exit::NoPermission,
            format!("cannot read {what} {shown}: {e} (run as root, or pass --ca-file)"),
        ));
    }
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| CliError::new(Exit::Config, format!("{what} {shown}: {e}")))?;
    if certs.is_empty() {
        return Err(CliError::new(
            Exit::Config,
            format!("{what} {shown}: no certificate in it"),
        ));
    }
    Ok(certs)
}

type Cert<'a> = CertificateDer<'a>;
type Signature = Result<HandshakeSignatureValid, rustls::Error>;

/// Accepts the one certificate the listener is configured with; the handshake's signatures
/// are checked with its key as usual.
#[derive(Debug)]
struct Pinned {
    cert: CertificateDer<'static>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.cert.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "the listener presented a certificate other than its tls_cert_file".into(),
            ))
        }
    }

    fn verify_tls12_signature(&self, m: &[u8], c: &Cert<'_>, d: &Dss) -> Signature {
        verify_tls12_signature(m, c, d, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(&self, m: &[u8], c: &Cert<'_>, d: &Dss) -> Signature {
        verify_tls13_signature(m, c, d, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
