//! TLS on a listener (rustls with ring): the certificate chain and key from PEM files,
//! reloaded on SIGHUP (connections already open keep what they negotiated), and for
//! `auth = "client-cert"` client certificates checked against the listener's CA. A client
//! without a certificate completes the handshake (so `/healthz` answers it, as it answers a
//! client without a token) and every other request of it is refused with 401; a certificate
//! that does not verify (another CA, expired) fails the handshake.

use std::sync::{Arc, RwLock};

use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::config::TlsFiles;

/// A listener's TLS settings, replaceable while it serves.
pub struct Tls {
    files: TlsFiles,
    current: RwLock<Arc<ServerConfig>>,
}

impl Tls {
    /// Reads the files; an error names the file and what is wrong with it.
    pub fn load(files: &TlsFiles) -> Result<Arc<Tls>, String> {
        Ok(Arc::new(Tls {
            current: RwLock::new(Arc::new(server_config(files)?)),
            files: files.clone(),
        }))
    }

    /// Reads the files again; on an error the previous settings stay.
    pub fn reload(&self) -> Result<(), String> {
        let fresh = Arc::new(server_config(&self.files)?);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        Ok(())
    }

    /// What a new connection's handshake uses.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }
}

fn certs(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let shown = path.display();
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{shown}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{shown}: no certificate in it"));
    }
    Ok(certs)
}

/// The certificates of a CA file (PEM, one or more), each checked to be usable as a trust
/// root; an error names the file and what is wrong with it.
pub fn ca_certificates(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = certs(path)?;
    let mut roots = RootCertStore::empty();
    for c in &certs {
        roots
            .add(c.clone())
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(certs)
}

fn server_config(files: &TlsFiles) -> Result<ServerConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = certs(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| format!("{}: {e}", files.key.display()))?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match &files.client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            roots.add_parsable_certificates(ca_certificates(ca)?);
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| format!("{}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| format!("{} and {}: {e}", files.cert.display(), files.key.display()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Reloads every listener's TLS files on SIGHUP until `stop` fires.
pub fn spawn_reload(all: Vec<Arc<Tls>>, stop: CancellationToken) {
    if all.is_empty() {
        return;
    }
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP: TLS files will not be reloaded");
        return;
    };
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = hup.recv() => {}
            }
            for tls in &all {
                match tls.reload() {
                    Ok(()) => {
                        tracing::info!(cert = %tls.files.cert.display(), "TLS certificate reloaded")
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "TLS reload failed; keeping the previous certificate")
                    }
                }
            }
        }
    });
}

/// The subject of a DER certificate as `CN=...,O=...` (the attributes gantry knows by
/// name; others as their OID in hex). None when it cannot be read.
pub fn subject(der: &[u8]) -> Option<String> {
    let (_, cert, _) = tlv(der)?;
    let (_, mut tbs, _) = tlv(cert)?;
    // [0] version (optional), serial, signature algorithm, issuer, validity, subject.
    if tbs.first() == Some(&0xa0) {
        tbs = tlv(tbs)?.2;
    }
    for _ in 0..4 {
        tbs = tlv(tbs)?.2;
    }
    let (_, mut name, _) = tlv(tbs)?;
    let mut parts = Vec::new();
    while !name.is_empty() {
        let (_, set, rest) = tlv(name)?;
        name = rest;
        let (_, attr, _) = tlv(set)?;
        let (_, oid, after) = tlv(attr)?;
        let (_, value, _) = tlv(after)?;
        parts.push(format!(
            "{}={}",
            oid_name(oid),
            String::from_utf8_lossy(value)
        ));
    }
    Some(parts.join(","))
}

fn oid_name(oid: &[u8]) -> String {
    match oid {
        [0x55, 0x04, 0x03] => "CN".into(),
        [0x55, 0x04, 0x06] => "C".into(),
        [0x55, 0x04, 0x07] => "L".into(),
        [0x55, 0x04, 0x08] => "ST".into(),
        [0x55, 0x04, 0x0a] => "O".into(),
        [0x55, 0x04, 0x0b] => "OU".into(),
        [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x01] => "emailAddress".into(),
        other => other.iter().map(|b| format!("{b:02x}")).collect(),
    }
}

/// One DER element: tag, contents, and what follows it.
fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = b.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |a, b| (a << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A certificate's subject (DER shaped as `openssl req -x509 -subj "/CN=client one/O=Acme"`
    /// writes it, with empty fields before the subject); the integration tests log real ones.
    #[test]
    fn subjects_are_read_from_der() {
        let name = [
            0x30, 0x24, 0x31, 0x13, 0x30, 0x11, 0x06, 0x03, 0x55, 0x04, 0x03, 0x0c, 0x0a, b'c',
            b'l', b'i', b'e', b'n', b't', b' ', b'o', b'n', b'e', 0x31, 0x0d, 0x30, 0x0b, 0x06,
            0x03, 0x55, 0x04, 0x0a, 0x0c, 0x04, b'A', b'c', b'm', b'e',
        ];
        // version, serial, signature algorithm, issuer, validity, then the subject.
        let mut tbs = vec![
            0xa0, 0x03, 0x02, 0x01, 0x02, 0x02, 0x01, 0x07, 0x30, 0x00, 0x30, 0x00, 0x30, 0x00,
        ];
        tbs.extend_from_slice(&name);
        let mut tbs_seq = vec![0x30, tbs.len() as u8];
        tbs_seq.extend_from_slice(&tbs);
        let mut cert = vec![0x30, tbs_seq.len() as u8];
        cert.extend_from_slice(&tbs_seq);
        assert_eq!(subject(&cert).as_deref(), Some("CN=client one,O=Acme"));
        assert_eq!(subject(&cert[..20]), None);
        assert_eq!(subject(&[]), None);
    }
}
