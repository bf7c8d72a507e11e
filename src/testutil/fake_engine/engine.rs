//! [`ContainerEngine`] for [`FakeEngine`]: every call is recorded and shaped by the test's
//! rules ([`FakeEngine::enter`]), then served from the in-memory world.

use std::time::Duration;

use async_trait::async_trait;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerSummary, EndpointSettings,
    ImageDeleteResponseItem, ImageInspect, ImageSummary, Network, NetworkCreateRequest, Volume,
    VolumeCreateRequest,
};

use super::calls::{listing, CallLog};
use super::FakeEngine;
use crate::core::engine::{
    ByteStream, ContainerEngine, EngineError, EngineEventStream, EngineResult, EngineVersion,
    EventStream, Filter, LoadedImages,
};

/// A call in flight: its end is recorded when it is dropped (also when its caller gives up).
struct Entered<'a> {
    log: &'a CallLog,
    handle: u64,
}

impl Drop for Entered<'_> {
    fn drop(&mut self) {
        self.log.end(self.handle);
    }
}

fn not_in_fake<T>(what: &str) -> EngineResult<T> {
    Err(EngineError::Failed(format!(
        "the fake engine does not {what}"
    )))
}

impl FakeEngine {
    /// Records the call, then puts it through the test's rules: gate, delay, hold, failure.
    async fn enter(
        &self,
        method: &'static str,
        target: &str,
        arg: Option<String>,
    ) -> EngineResult<Entered<'_>> {
        let name = self.world().resolve(target);
        let (handle, call) = self.log.begin(method, target, name, arg);
        let entered = Entered {
            log: &self.log,
            handle,
        };
        let treatment = self.rules().treat(&call);
        if treatment.held() {
            self.log.set_held(handle);
        }
        if let Some(gate) = treatment.gate {
            // A guard against a hang, not a timing assertion.
            if tokio::time::timeout(Duration::from_secs(30), gate.wait())
                .await
                .is_err()
            {
                let calls = listing(&self.log.all());
                panic!("{} never met the rest of its gate: {calls}", call.text());
            }
        }
        if let Some(delay) = treatment.delay {
            tokio::time::sleep(delay).await;
        }
        if treatment.hold {
            std::future::pending::<()>().await;
        }
        match treatment.failure {
            Some(e) => Err(e),
            None => Ok(entered),
        }
    }
}

#[async_trait]
impl ContainerEngine for FakeEngine {
    async fn version(&self) -> EngineResult<EngineVersion> {
        let _call = self.enter("version", "", None).await?;
        Ok(EngineVersion {
            version: "fake".into(),
            api_version: "1.45".into(),
        })
    }

    async fn list_images(&self) -> EngineResult<Vec<ImageSummary>> {
        let _call = self.enter("list_images", "", None).await?;
        Ok(self.world().list_images())
    }

    async fn inspect_image(&self, id: &str) -> EngineResult<ImageInspect> {
        let _call = self.enter("inspect_image", id, None).await?;
        self.world().inspect_image(id)
    }

    async fn load_images(&self, _tar: ByteStream) -> EngineResult<LoadedImages> {
        not_in_fake("load images")
    }

    fn export_image(&self, _id: &str) -> ByteStream {
        Box::pin(futures_util::stream::empty())
    }

    async fn remove_image(
        &self,
        id: &str,
        _force: bool,
    ) -> EngineResult<Vec<ImageDeleteResponseItem>> {
        let _call = self.enter("remove_image", id, None).await?;
        let deleted = self.world().remove_image(id)?;
        Ok(vec![ImageDeleteResponseItem {
            untagged: Some(id.to_string()),
            deleted: Some(deleted),
        }])
    }

    async fn prune_images(&self, _all: bool) -> EngineResult<Vec<String>> {
        not_in_fake("prune images")
    }

    async fn list_containers(&self) -> EngineResult<Vec<ContainerSummary>> {
        let _call = self.enter("list_containers", "", None).await?;
        Ok(self.world().list(&[]))
    }

    async fn inspect_container(&self, id: &str) -> EngineResult<ContainerInspectResponse> {
        let _call = self.enter("inspect_container", id, None).await?;
        self.world().inspect(id)
    }

    async fn start_container(&self, id: &str) -> EngineResult<()> {
        let _call = self.enter("start_container", id, None).await?;
        let pid = self.world().start(id)?;
        self.process(pid, true);
        Ok(())
    }

    async fn stop_container(&self, id: &str) -> EngineResult<()> {
        self.stop_container_with_timeout(id, 10).await
    }

    async fn restart_container(&self, id: &str) -> EngineResult<()> {
        let _call = self.enter("restart_container", id, None).await?;
        let ended = self.world().stop(id)?;
        self.process(ended, false);
        let started = self.world().start(id)?;
        self.process(started, true);
        Ok(())
    }

    async fn remove_container(&self, id: &str, force: bool, _volumes: bool) -> EngineResult<()> {
        let _call = self.enter("remove_container", id, None).await?;
        let ended = self.world().remove(id, force)?;
        self.process(ended, false);
        Ok(())
    }

    async fn prune_containers(&self) -> EngineResult<Vec<String>> {
        not_in_fake("prune containers")
    }

    async fn list_volumes(&self) -> EngineResult<Vec<Volume>> {
        self.list_volumes_filtered(&[]).await
    }

    async fn inspect_volume(&self, name: &str) -> EngineResult<Volume> {
        let _call = self.enter("inspect_volume", name, None).await?;
        self.world().inspect_volume(name)
    }

    async fn remove_volume(&self, name: &str, force: bool) -> EngineResult<()> {
        let _call = self.enter("remove_volume", name, None).await?;
        self.world().remove_volume(name, force)
    }

    async fn prune_volumes(&self) -> EngineResult<Vec<String>> {
        not_in_fake("prune volumes")
    }

    async fn list_containers_filtered(
        &self,
        filters: &[Filter],
    ) -> EngineResult<Vec<ContainerSummary>> {
        let _call = self.enter("list_containers_filtered", "", None).await?;
        Ok(self.world().list(filters))
    }

    async fn create_container(
        &self,
        name: &str,
        body: ContainerCreateBody,
    ) -> EngineResult<String> {
        let _call = self.enter("create_container", name, None).await?;
        self.world().create(name, body)
    }

    async fn stop_container_with_timeout(&self, id: &str, timeout_secs: u32) -> EngineResult<()> {
        let arg = Some(timeout_secs.to_string());
        let _call = self.enter("stop_container_with_timeout", id, arg).await?;
        let ended = self.world().stop(id)?;
        self.process(ended, false);
        Ok(())
    }

    async fn list_networks(&self, filters: &[Filter]) -> EngineResult<Vec<Network>> {
        let _call = self.enter("list_networks", "", None).await?;
        Ok(self.world().list_networks(filters))
    }

    async fn create_network(&self, request: NetworkCreateRequest) -> EngineResult<String> {
        let _call = self.enter("create_network", &request.name, None).await?;
        self.world().create_network(request)
    }

    async fn remove_network(&self, id: &str) -> EngineResult<()> {
        let _call = self.enter("remove_network", id, None).await?;
        self.world().remove_network(id)
    }

    async fn connect_network(&self, net: &str, id: &str, ep: EndpointSettings) -> EngineResult<()> {
        let _call = self
            .enter("connect_network", id, Some(net.to_string()))
            .await?;
        self.world().connect(net, id, ep)
    }

    async fn list_volumes_filtered(&self, filters: &[Filter]) -> EngineResult<Vec<Volume>> {
        let _call = self.enter("list_volumes_filtered", "", None).await?;
        Ok(self.world().list_volumes(filters))
    }

    async fn create_volume(&self, request: VolumeCreateRequest) -> EngineResult<Volume> {
        let name = request.name.clone().unwrap_or_default();
        let _call = self.enter("create_volume", &name, None).await?;
        Ok(self.world().create_volume(request))
    }

    async fn pull_image(&self, reference: &str) -> EngineResult<()> {
        let _call = self.enter("pull_image", reference, None).await?;
        Err(EngineError::NotFound(format!(
            "no registry for {reference}"
        )))
    }

    fn container_events(&self, _filters: &[Filter]) -> EventStream {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        self.streams.lock().unwrap().push(tx);
        Box::pin(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)))
    }

    fn engine_events(&self, _since: Option<i64>) -> EngineEventStream {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        self.engine_streams.lock().unwrap().push(tx);
        Box::pin(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)))
    }
}
