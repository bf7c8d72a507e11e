//! The pool's store: an OCI registry, through oci-client. Lists the apps it offers (catalog,
//! tags, manifests, configs), streams bundle blobs from an offset (range requests, for
//! resuming), and publishes bundles (a chunked, streamed blob upload: no whole-file buffer).

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::{stream, StreamExt, TryStreamExt};
use oci_client::client::{
    BlobResponse, Certificate, CertificateEncoding, ClientConfig, ClientProtocol,
};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::{OciDescriptor, OciImageManifest, OciManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde::{Deserialize, Serialize};

use super::names::{self, ARTIFACT_TYPE, BUNDLE_MEDIA_TYPE, CONFIG_MEDIA_TYPE, ID_ANNOTATION};
use crate::config::{PoolConfig, StoreConfig};
use crate::core::apps::{AppConfig, AppId};
use crate::core::engine::ByteStream;
use crate::core::{CoreError, CoreResult};

/// One app version the store offers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexEntry {
    pub id: AppId,
    pub config: AppConfig,
    pub repository: String,
    pub tag: String,
    /// The bundle layer's digest and size.
    pub digest: String,
    pub size: u64,
}

/// An app's bundle to publish: its config, the bundle ZIP as a stream, and whether it may
/// replace the same version in the store.
pub struct Publication {
    pub config: AppConfig,
    pub bundle: ByteStream,
    pub replace: bool,
}

/// Largest AppConfig blob read from a store.
const MAX_CONFIG_BYTES: i64 = 64 << 10;
/// Blob upload chunks: oci-client sends one PATCH per chunk it is given.
const PUSH_CHUNK: usize = 4 << 20;

pub struct Registry {
    client: Client,
    /// The store as configured (`https://host:port`), as errors name it.
    url: String,
    /// `host[:port]`, as references name it.
    host: String,
    namespace: String,
    auth: RegistryAuth,
}

impl Registry {
    /// The client of `store`, with the pool's timeouts and extra trust roots.
    pub fn new(store: &StoreConfig, pool: &PoolConfig) -> CoreResult<Self> {
        let (plain, host) = match store.registry.strip_prefix("http://") {
            Some(h) => (true, h),
            None => (false, store.registry.trim_start_matches("https://")),
        };
        let protocol = if plain {
            ClientProtocol::HttpsExcept(vec![host.to_string()])
        } else {
            ClientProtocol::Https
        };
        let config = ClientConfig {
            protocol,
            connect_timeout: Some(pool.connect_timeout),
            read_timeout: Some(pool.idle_timeout),
            extra_root_certificates: pool
                .ca
                .iter()
                .map(|c| Certificate {
                    encoding: CertificateEncoding::Der,
                    data: c.to_vec(),
                })
                .collect(),
            ..Default::default()
        };
        // Not `Client::new`: it falls back to a default client when this one cannot be made.
        let client = Client::try_from(config).map_err(|e| {
            CoreError::Failed(format!(
                "cannot make a client of the store {}: {e}",
                store.registry
            ))
        })?;
        let auth = match &store.credentials {
            Some((user, password)) => RegistryAuth::Basic(user.clone(), password.clone()),
            None => RegistryAuth::Anonymous,
        };
        Ok(Self {
            client,
            url: store.registry.clone(),
            host: host.to_string(),
            namespace: store.namespace.clone(),
            auth,
        })
    }

    fn reference(&self, repository: &str, tag: &str) -> Reference {
        Reference::with_tag(self.host.clone(), repository.to_string(), tag.to_string())
    }

    /// Every app version below the namespace, at most `parallel` manifests read at once.
    pub async fn index(self: &Arc<Self>, parallel: usize) -> CoreResult<Vec<IndexEntry>> {
        let mut locations = Vec::new();
        for repo in self.repositories().await? {
            for tag in self.tags(&repo).await? {
                locations.push((repo.clone(), tag));
            }
        }
        let found: Vec<CoreResult<Option<IndexEntry>>> = stream::iter(locations)
            .map(|(repo, tag)| {
                let me = self.clone();
                async move { me.entry(&repo, &tag).await }
            })
            .buffer_unordered(parallel.max(1))
            .collect()
            .await;
        let mut entries = Vec::new();
        for f in found {
            entries.extend(f?);
        }
        entries.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(entries)
    }

    async fn repositories(&self) -> CoreResult<Vec<String>> {
        let prefix = format!("{}/", self.namespace);
        let probe = self.reference(&format!("{}x", prefix), "latest");
        let mut out = Vec::new();
        let mut last: Option<String> = None;
        loop {
            let page = self
                .client
                .catalog(&probe, &self.auth, Some(100), last.as_deref())
                .await
                .map_err(|e| self.error(e))?;
            let n = page.repositories.len();
            last = page.repositories.last().cloned();
            out.extend(
                page.repositories
                    .into_iter()
                    .filter(|r| self.namespace.is_empty() || r.starts_with(&prefix)),
            );
            if n < 100 {
                return Ok(out);
            }
        }
    }

    async fn tags(&self, repository: &str) -> CoreResult<Vec<String>> {
        let r = self.reference(repository, "latest");
        let mut out = Vec::new();
        let mut last: Option<String> = None;
        loop {
            let page = match self
                .client
                .list_tags(&r, &self.auth, Some(100), last.as_deref())
                .await
            {
                Ok(p) => p,
                // A repository whose tags were all deleted.
                Err(e) if store_error_is_not_found(&e) => return Ok(out),
                Err(e) => return Err(self.error(e)),
            };
            let n = page.tags.len();
            last = page.tags.last().cloned();
            out.extend(page.tags);
            if n < 100 {
                return Ok(out);
            }
        }
    }

    /// The app at `repository:tag`, or None when it is not a gantry app bundle.
    async fn entry(&self, repository: &str, tag: &str) -> CoreResult<Option<IndexEntry>> {
        let r = self.reference(repository, tag);
        let (manifest, _) = match self.client.pull_image_manifest(&r, &self.auth).await {
            Ok(m) => m,
            Err(e) if store_error_is_not_found(&e) => return Ok(None),
            Err(e) => return Err(self.error(e)),
        };
        let Some(layer) = bundle_layer(&manifest) else {
            return Ok(None);
        };
        if manifest.config.media_type != CONFIG_MEDIA_TYPE
            || manifest.config.size > MAX_CONFIG_BYTES
        {
            return Ok(None);
        }
        let mut bytes = Vec::new();
        self.client
            .pull_blob(&r, &manifest.config, &mut bytes)
            .await
            .map_err(|e| self.error(e))?;
        let Ok(config) = serde_json::from_slice::<AppConfig>(&bytes) else {
            tracing::warn!(
                repository,
                tag,
                "skipping an app whose config is not AppConfig"
            );
            return Ok(None);
        };
        let id = config.id();
        let annotated = manifest
            .annotations
            .as_ref()
            .and_then(|a| a.get(ID_ANNOTATION));
        if !names::id_matches(&id, annotated) {
            tracing::warn!(
                repository,
                tag,
                "skipping an app whose annotation names another id"
            );
            return Ok(None);
        }
        Ok(Some(IndexEntry {
            id,
            config,
            repository: repository.to_string(),
            tag: tag.to_string(),
            digest: layer.digest.clone(),
            size: u64::try_from(layer.size).unwrap_or(0),
        }))
    }

    /// The bundle blob `digest` of `repository` from byte `offset` on. The registry may
    /// answer the whole blob instead (no range support): then `restart` is true.
    pub async fn blob_from(
        &self,
        repository: &str,
        digest: &str,
        offset: u64,
    ) -> CoreResult<(ByteStream, bool)> {
        let r = Reference::with_digest(self.host.clone(), repository.to_string(), digest.into());
        // The token is fetched (or renewed) the way pulls of manifests do it.
        self.client
            .store_auth_if_needed(r.resolve_registry(), &self.auth)
            .await;
        let layer = OciDescriptor {
            media_type: BUNDLE_MEDIA_TYPE.to_string(),
            digest: digest.to_string(),
            ..Default::default()
        };
        let response = self
            .client
            .pull_blob_stream_partial(&r, &layer, offset, None)
            .await
            .map_err(|e| self.error(e))?;
        let (sized, restart) = match response {
            BlobResponse::Partial(s) => (s, false),
            BlobResponse::Full(s) => (s, offset > 0),
        };
        Ok((Box::pin(sized.stream), restart))
    }

    /// Publishes a bundle: blob, config, manifest. An existing tag is replaced only with
    /// `replace`, and never by another app.
    pub async fn publish(&self, p: Publication) -> CoreResult<IndexEntry> {
        let Publication {
            config,
            bundle,
            replace,
        } = p;
        let config = &config;
        let id = config.id();
        let (repository, tag) = names::location(&self.namespace, &config.name, &config.version);
        if let Some(existing) = self.entry(&repository, &tag).await? {
            if existing.id != id || !replace {
                return Err(CoreError::Conflict(format!(
                    "the store holds {} at {repository}:{tag} already{}",
                    existing.id,
                    if existing.id == id {
                        "; publish with replace=true to replace it"
                    } else {
                        ""
                    }
                )));
            }
        }
        let r = self.reference(&repository, &tag);
        self.client
            .store_auth_if_needed(r.resolve_registry(), &self.auth)
            .await;
        let pushed = self
            .client
            .push_blob_stream_chunked(&r, coalesce(bundle).map_err(OciDistributionError::from))
            .await
            .map_err(|e| self.error(e))?;
        let config_json = serde_json::to_vec(config).expect("AppConfig serialises");
        let config_digest = names::sha256_digest(&super::hex_sha256(&config_json));
        self.client
            .push_blob(&r, config_json.clone(), &config_digest)
            .await
            .map_err(|e| self.error(e))?;
        let manifest = manifest(
            config,
            &pushed.blob_digest,
            pushed.size,
            &config_digest,
            config_json.len(),
        );
        self.client
            .push_manifest(&r, &OciManifest::Image(manifest))
            .await
            .map_err(|e| self.error(e))?;
        Ok(IndexEntry {
            id,
            config: config.clone(),
            repository,
            tag,
            digest: pushed.blob_digest,
            size: pushed.size,
        })
    }
}

impl Registry {
    /// What an oci-client error means to the pool, naming the store. Unreachable, timed out,
    /// 5xx and 429 are `Unavailable` (retrying may work); unknown names and blobs `NotFound`;
    /// refused credentials and a certificate the pool does not trust are `Failed`: retrying
    /// cannot help before the configuration changes.
    fn error(&self, e: OciDistributionError) -> CoreError {
        let store = &self.url;
        if let Some(status) = refused_access(&e) {
            return CoreError::Failed(self.refusal(status, &e));
        }
        match tls_failure(&e) {
            Some(tls @ rustls::Error::InvalidCertificate(_)) => {
                return CoreError::Failed(format!(
                    "the store {store} presented a certificate the pool does not trust \
                     ({tls}); a store whose certificate a private CA signed needs that CA in \
                     pool.ca_file"
                ))
            }
            Some(tls) => {
                return CoreError::Failed(format!(
                    "the TLS handshake with the store {store} failed: {tls}"
                ))
            }
            None => {}
        }
        match e {
            OciDistributionError::RequestError(_) | OciDistributionError::IoError(_) => {
                CoreError::Unavailable(format!("the store {store} cannot be reached: {e}"))
            }
            OciDistributionError::ServerError { code, .. } if code >= 500 || code == 429 => {
                CoreError::Unavailable(format!("the store {store} failed: {e}"))
            }
            ref e if store_error_is_not_found(e) => {
                CoreError::NotFound(format!("the store {store} has no such thing: {e}"))
            }
            OciDistributionError::RegistryError { ref envelope, .. }
                if envelope
                    .errors
                    .iter()
                    .any(|x| x.code == OciErrorCode::Toomanyrequests) =>
            {
                CoreError::Unavailable(format!("the store {store} is busy: {e}"))
            }
            e => CoreError::Failed(format!("the store {store}: {e}")),
        }
    }

    /// The store answered `status` (401 or 403): what the pool sent it, and what to change.
    fn refusal(&self, status: u16, e: &OciDistributionError) -> String {
        let store = &self.url;
        let settings = "pool.username and pool.password_file";
        match (&self.auth, status) {
            (RegistryAuth::Basic(user, _), 401) => format!(
                "the store {store} answered unauthorized: it refused the pool's credentials \
                 (user \"{user}\"; {settings}): {e}"
            ),
            (RegistryAuth::Basic(user, _), _) => format!(
                "the store {store} denied the user \"{user}\" (pool.username) this access: {e}"
            ),
            (_, 401) => format!(
                "the store {store} answered unauthorized: it needs credentials and the pool \
                 has none ({settings}): {e}"
            ),
            _ => format!(
                "the store {store} denied the pool this access without credentials \
                 ({settings}): {e}"
            ),
        }
    }
}

/// 401 when the store refused the pool's credentials (or their absence), 403 when it
/// denied the access they give.
fn refused_access(e: &OciDistributionError) -> Option<u16> {
    match e {
        OciDistributionError::UnauthorizedError { .. }
        | OciDistributionError::AuthenticationFailure(_) => Some(401),
        OciDistributionError::ServerError { code, .. } if matches!(code, 401 | 403) => Some(*code),
        OciDistributionError::RegistryError { envelope, .. } => {
            let has = |c: OciErrorCode| envelope.errors.iter().any(|x| x.code == c);
            if has(OciErrorCode::Unauthorized) {
                Some(401)
            } else if has(OciErrorCode::Denied) {
                Some(403)
            } else {
                None
            }
        }
        _ => None,
    }
}

/// The TLS failure (a rustls error) somewhere in the error's sources. An I/O error's
/// `source()` skips the error it wraps (the connector wraps the handshake's I/O error,
/// which wraps rustls's, in another), so the walk goes into that error instead.
fn tls_failure(e: &OciDistributionError) -> Option<&rustls::Error> {
    // `IoError` is transparent: its `source()` is the I/O error's, which skips it.
    let mut next: Option<&(dyn std::error::Error + 'static)> = match e {
        OciDistributionError::IoError(io) => Some(io),
        e => Some(e),
    };
    while let Some(err) = next {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        next = match err.downcast_ref::<std::io::Error>() {
            Some(io) => io
                .get_ref()
                .map(|inner| inner as &(dyn std::error::Error + 'static)),
            None => err.source(),
        };
    }
    None
}

fn store_error_is_not_found(e: &OciDistributionError) -> bool {
    match e {
        OciDistributionError::ImageManifestNotFoundError(_) => true,
        OciDistributionError::ServerError { code, .. } => *code == 404,
        OciDistributionError::RegistryError { envelope, .. } => envelope.errors.iter().any(|x| {
            matches!(
                x.code,
                OciErrorCode::BlobUnknown
                    | OciErrorCode::ManifestUnknown
                    | OciErrorCode::NameUnknown
                    | OciErrorCode::NotFound
            )
        }),
        _ => false,
    }
}

/// The bundle layer of a gantry app manifest.
fn bundle_layer(m: &OciImageManifest) -> Option<&OciDescriptor> {
    match m.layers.as_slice() {
        [layer] if layer.media_type == BUNDLE_MEDIA_TYPE => Some(layer),
        _ => None,
    }
}

fn manifest(
    config: &AppConfig,
    bundle_digest: &str,
    bundle_size: u64,
    config_digest: &str,
    config_size: usize,
) -> OciImageManifest {
    let mut annotations = BTreeMap::from([
        (ID_ANNOTATION.to_string(), config.id().to_string()),
        ("org.opencontainers.image.title".into(), config.name.clone()),
        (
            "org.opencontainers.image.version".into(),
            config.version.clone(),
        ),
    ]);
    if let Some(d) = &config.description {
        annotations.insert("org.opencontainers.image.description".into(), d.clone());
    }
    OciImageManifest {
        schema_version: 2,
        media_type: Some(oci_client::manifest::OCI_IMAGE_MEDIA_TYPE.to_string()),
        config: OciDescriptor {
            media_type: CONFIG_MEDIA_TYPE.to_string(),
            digest: config_digest.to_string(),
            size: config_size as i64,
            ..Default::default()
        },
        layers: vec![OciDescriptor {
            media_type: BUNDLE_MEDIA_TYPE.to_string(),
            digest: bundle_digest.to_string(),
            size: bundle_size as i64,
            annotations: Some(BTreeMap::from([(
                "org.opencontainers.image.title".to_string(),
                format!("{}.zip", names::repository("", &config.name)),
            )])),
            ..Default::default()
        }],
        subject: None,
        artifact_type: Some(ARTIFACT_TYPE.to_string()),
        annotations: Some(annotations),
    }
}

/// Joins a stream's small chunks into chunks of [`PUSH_CHUNK`] (the last may be smaller).
fn coalesce(input: ByteStream) -> impl futures_util::Stream<Item = std::io::Result<Bytes>> + Send {
    stream::unfold((input, false), |(mut input, done)| async move {
        if done {
            return None;
        }
        let mut buf = BytesMut::with_capacity(PUSH_CHUNK);
        while buf.len() < PUSH_CHUNK {
            match input.next().await {
                Some(Ok(b)) => buf.extend_from_slice(&b),
                Some(Err(e)) => return Some((Err(e), (input, true))),
                None if buf.is_empty() => return None,
                None => return Some((Ok(buf.freeze()), (input, true))),
            }
        }
        Some((Ok(buf.freeze()), (input, false)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_and_tls_failures_are_told_apart() {
        let unauthorized = OciDistributionError::UnauthorizedError { url: "u".into() };
        assert_eq!(refused_access(&unauthorized), Some(401));
        let forbidden = OciDistributionError::ServerError {
            code: 403,
            url: "u".into(),
            message: String::new(),
        };
        assert_eq!(refused_access(&forbidden), Some(403));
        let gone = OciDistributionError::ServerError {
            code: 503,
            url: "u".into(),
            message: String::new(),
        };
        assert_eq!(refused_access(&gone), None);

        // The connector's I/O error around the handshake's I/O error around rustls's.
        let bad = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let handshake = std::io::Error::new(std::io::ErrorKind::InvalidData, bad.clone());
        let wrapped = OciDistributionError::IoError(std::io::Error::other(handshake));
        assert_eq!(tls_failure(&wrapped), Some(&bad));
        let refused = OciDistributionError::IoError(std::io::ErrorKind::ConnectionRefused.into());
        assert_eq!(tls_failure(&refused), None);
        assert_eq!(tls_failure(&unauthorized), None);
    }
}
