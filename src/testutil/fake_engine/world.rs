//! The fake's Docker: containers, images, networks and volumes in memory, with Docker's
//! answers (NotFound for what is not there, Conflict for a name in use or a running
//! container removed without force).

use std::collections::{BTreeMap, HashMap};

use bollard::models::{
    ContainerConfig, ContainerCreateBody, ContainerInspectResponse, ContainerState,
    ContainerStateStatusEnum, ContainerSummary, ContainerSummaryStateEnum, EndpointSettings,
    Health, HealthStatusEnum, ImageInspect, ImageSummary, Network, NetworkCreateRequest, Volume,
    VolumeCreateRequest,
};

use crate::core::engine::{EngineError, EngineResult, Filter};

/// A container of the fake.
#[derive(Debug, Clone)]
pub struct FakeContainer {
    pub id: String,
    pub name: String,
    /// The reference it was created from.
    pub image: String,
    pub labels: HashMap<String, String>,
    pub state: ContainerSummaryStateEnum,
    /// The process of the current run.
    pub pid: Option<u32>,
    pub health: Option<HealthStatusEnum>,
    /// The create request (for a container the test added: image and labels only).
    pub body: ContainerCreateBody,
    /// Networks connected after the create.
    pub networks: Vec<String>,
}

impl FakeContainer {
    /// A created (not started) container, id `id-<name>`.
    pub fn new(name: &str, image: &str) -> Self {
        FakeContainer {
            id: format!("id-{name}"),
            name: name.to_string(),
            image: image.to_string(),
            labels: HashMap::new(),
            state: ContainerSummaryStateEnum::CREATED,
            pid: None,
            health: None,
            body: ContainerCreateBody {
                image: Some(image.to_string()),
                ..Default::default()
            },
            networks: Vec::new(),
        }
    }

    pub fn with_id(mut self, id: &str) -> Self {
        self.id = id.to_string();
        self
    }

    pub fn with_labels(mut self, labels: &[(&str, &str)]) -> Self {
        let labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        self.labels.extend(labels);
        self.body.labels = Some(self.labels.clone());
        self
    }

    /// Running (with a pid the engine hands out when it is added) or exited.
    pub fn running(mut self, running: bool) -> Self {
        self.state = if running {
            ContainerSummaryStateEnum::RUNNING
        } else {
            ContainerSummaryStateEnum::EXITED
        };
        self
    }

    pub fn is_running(&self) -> bool {
        self.state == ContainerSummaryStateEnum::RUNNING
    }

    fn has_healthcheck(&self) -> bool {
        let test = self.body.healthcheck.as_ref().and_then(|h| h.test.as_ref());
        test.is_some_and(|t| t.first().map(String::as_str) != Some("NONE"))
    }

    fn matches(&self, filters: &[Filter]) -> bool {
        let volume = |v: &str| {
            let hc = self.body.host_config.as_ref();
            let binds = hc.and_then(|h| h.binds.as_ref()).into_iter().flatten();
            let mounts = hc.and_then(|h| h.mounts.as_ref()).into_iter().flatten();
            binds.into_iter().any(|b| b.split(':').next() == Some(v))
                || mounts.into_iter().any(|m| m.source.as_deref() == Some(v))
        };
        matches_all(filters, &self.labels, |f| match f {
            Filter::Name(n) => self.name.contains(n.as_str()),
            Filter::Volume(v) => volume(v),
            Filter::Ancestor(i) => self.image == *i,
            Filter::Id(i) => self.id == *i,
            Filter::Label(_) => true,
        })
    }

    fn summary(&self, image_id: &str) -> ContainerSummary {
        let status = match self.state {
            ContainerSummaryStateEnum::RUNNING => "Up",
            ContainerSummaryStateEnum::EXITED => "Exited (0)",
            _ => "Created",
        };
        ContainerSummary {
            id: Some(self.id.clone()),
            names: Some(vec![format!("/{}", self.name)]),
            image: Some(self.image.clone()),
            image_id: Some(image_id.to_string()),
            labels: Some(self.labels.clone()),
            state: Some(self.state),
            status: Some(status.into()),
            ..Default::default()
        }
    }

    fn inspect(&self, image_id: &str) -> ContainerInspectResponse {
        let status = match self.state {
            ContainerSummaryStateEnum::RUNNING => ContainerStateStatusEnum::RUNNING,
            ContainerSummaryStateEnum::EXITED => ContainerStateStatusEnum::EXITED,
            _ => ContainerStateStatusEnum::CREATED,
        };
        let health = self.health.map(|status| Health {
            status: Some(status),
            ..Default::default()
        });
        ContainerInspectResponse {
            id: Some(self.id.clone()),
            name: Some(format!("/{}", self.name)),
            image: Some(image_id.to_string()),
            config: Some(ContainerConfig {
                image: Some(self.image.clone()),
                labels: Some(self.labels.clone()),
                healthcheck: self.body.healthcheck.clone(),
                ..Default::default()
            }),
            state: Some(ContainerState {
                status: Some(status),
                running: Some(self.is_running()),
                pid: Some(i64::from(self.pid.unwrap_or(0))),
                exit_code: Some(0),
                health,
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

/// Label filters must all match; the filters of each other kind match when any does.
fn matches_all(
    filters: &[Filter],
    labels: &HashMap<String, String>,
    other: impl Fn(&Filter) -> bool,
) -> bool {
    let label = |l: &str| match l.split_once('=') {
        Some((k, v)) => labels.get(k).is_some_and(|x| x == v),
        None => labels.contains_key(l),
    };
    let labels_ok = filters.iter().all(|f| match f {
        Filter::Label(l) => label(l),
        _ => true,
    });
    let mut kinds: BTreeMap<&str, bool> = BTreeMap::new();
    for f in filters.iter().filter(|f| !matches!(f, Filter::Label(_))) {
        *kinds.entry(f.key()).or_default() |= other(f);
    }
    labels_ok && kinds.values().all(|ok| *ok)
}

fn missing(what: &str, name: &str) -> EngineError {
    EngineError::NotFound(format!("No such {what}: {name}"))
}

#[derive(Default)]
pub(super) struct World {
    pub containers: Vec<FakeContainer>,
    /// Reference -> image id.
    pub images: BTreeMap<String, String>,
    pub networks: Vec<Network>,
    pub volumes: Vec<Volume>,
    pub created: Vec<(String, ContainerCreateBody)>,
    last_pid: u32,
}

impl World {
    fn container(&mut self, id_or_name: &str) -> EngineResult<&mut FakeContainer> {
        self.containers
            .iter_mut()
            .find(|c| c.id == id_or_name || c.name == id_or_name)
            .ok_or_else(|| missing("container", id_or_name))
    }

    /// The name of the container or network `id_or_name` names.
    pub fn resolve(&self, id_or_name: &str) -> Option<String> {
        let container = self.containers.iter().find(|c| c.id == id_or_name);
        let network = self
            .networks
            .iter()
            .find(|n| n.id.as_deref() == Some(id_or_name));
        container
            .map(|c| c.name.clone())
            .or_else(|| network.and_then(|n| n.name.clone()))
    }

    fn image_id(&self, reference: &str) -> String {
        self.images.get(reference).cloned().unwrap_or_default()
    }

    pub fn add_image(&mut self, reference: &str) {
        self.images
            .insert(reference.to_string(), format!("sha256:{reference}"));
    }

    /// Adds `c` as it is; a running one gets a pid, returned.
    pub fn add_container(&mut self, mut c: FakeContainer) -> Option<u32> {
        let pid = c.is_running().then(|| self.next_pid());
        c.pid = pid;
        self.containers.push(c);
        pid
    }

    fn next_pid(&mut self) -> u32 {
        self.last_pid = self.last_pid.max(100) + 1;
        self.last_pid
    }

    pub fn create(&mut self, name: &str, body: ContainerCreateBody) -> EngineResult<String> {
        if self.containers.iter().any(|c| c.name == name) {
            return Err(EngineError::Conflict(format!(
                "the container name \"/{name}\" is already in use"
            )));
        }
        let image = body.image.clone().unwrap_or_default();
        if !self.images.contains_key(&image) {
            return Err(missing("image", &image));
        }
        self.created.push((name.to_string(), body.clone()));
        let mut c = FakeContainer::new(name, &image);
        c.labels = body.labels.clone().unwrap_or_default();
        c.body = body;
        let id = c.id.clone();
        self.containers.push(c);
        Ok(id)
    }

    /// Starts the container; the pid of its new run, if it was not running.
    pub fn start(&mut self, id: &str) -> EngineResult<Option<u32>> {
        if self.container(id)?.is_running() {
            return Ok(None);
        }
        let pid = self.next_pid();
        let c = self.container(id)?;
        c.state = ContainerSummaryStateEnum::RUNNING;
        c.pid = Some(pid);
        c.health = c.has_healthcheck().then_some(HealthStatusEnum::HEALTHY);
        Ok(Some(pid))
    }

    /// Stops the container; the pid of the run that ended, if it was running.
    pub fn stop(&mut self, id: &str) -> EngineResult<Option<u32>> {
        let c = self.container(id)?;
        if c.is_running() {
            c.state = ContainerSummaryStateEnum::EXITED;
        }
        Ok(c.pid.take())
    }

    pub fn remove(&mut self, id: &str, force: bool) -> EngineResult<Option<u32>> {
        let c = self.container(id)?;
        if c.is_running() && !force {
            return Err(EngineError::Conflict(format!(
                "cannot remove the running container {id}: stop it first or force"
            )));
        }
        let pid = c.pid.take();
        let id = c.id.clone();
        self.containers.retain(|c| c.id != id);
        Ok(pid)
    }

    pub fn inspect(&mut self, id: &str) -> EngineResult<ContainerInspectResponse> {
        let c = self.container(id)?.clone();
        Ok(c.inspect(&self.image_id(&c.image)))
    }

    pub fn list(&self, filters: &[Filter]) -> Vec<ContainerSummary> {
        self.containers
            .iter()
            .filter(|c| c.matches(filters))
            .map(|c| c.summary(&self.image_id(&c.image)))
            .collect()
    }

    pub fn inspect_image(&self, reference: &str) -> EngineResult<ImageInspect> {
        let id = self.images.get(reference).or_else(|| {
            let by_id = self.images.iter().find(|(_, id)| id.as_str() == reference);
            by_id.map(|(_, id)| id)
        });
        Ok(ImageInspect {
            id: Some(id.ok_or_else(|| missing("image", reference))?.clone()),
            repo_tags: Some(vec![reference.to_string()]),
            ..Default::default()
        })
    }

    pub fn list_images(&self) -> Vec<ImageSummary> {
        self.images
            .iter()
            .map(|(reference, id)| ImageSummary {
                id: id.clone(),
                repo_tags: vec![reference.clone()],
                ..Default::default()
            })
            .collect()
    }

    pub fn remove_image(&mut self, reference: &str) -> EngineResult<String> {
        let id = self.inspect_image(reference)?.id.unwrap_or_default();
        if let Some(c) = self
            .containers
            .iter()
            .find(|c| self.image_id(&c.image) == id)
        {
            return Err(EngineError::Conflict(format!(
                "image {reference} is being used by container {}",
                c.id
            )));
        }
        self.images.retain(|_, i| *i != id);
        Ok(id)
    }

    pub fn create_network(&mut self, request: NetworkCreateRequest) -> EngineResult<String> {
        if self.find_network(&request.name).is_some() {
            let name = &request.name;
            return Err(EngineError::Conflict(format!(
                "network {name} already exists"
            )));
        }
        let id = format!("net-{}", request.name);
        self.networks.push(Network {
            id: Some(id.clone()),
            name: Some(request.name),
            driver: request.driver,
            labels: request.labels,
            ..Default::default()
        });
        Ok(id)
    }

    fn find_network(&self, id_or_name: &str) -> Option<usize> {
        let is = |n: &Network| {
            n.id.as_deref() == Some(id_or_name) || n.name.as_deref() == Some(id_or_name)
        };
        self.networks.iter().position(is)
    }

    pub fn list_networks(&self, filters: &[Filter]) -> Vec<Network> {
        let matches = |n: &Network| {
            let name = n.name.as_deref().unwrap_or_default();
            matches_all(
                filters,
                n.labels.as_ref().unwrap_or(&HashMap::new()),
                |f| !matches!(f, Filter::Name(x) if !name.contains(x.as_str())),
            )
        };
        self.networks
            .iter()
            .filter(|n| matches(n))
            .cloned()
            .collect()
    }

    pub fn remove_network(&mut self, id: &str) -> EngineResult<()> {
        let i = self
            .find_network(id)
            .ok_or_else(|| missing("network", id))?;
        self.networks.remove(i);
        Ok(())
    }

    pub fn connect(
        &mut self,
        network: &str,
        container: &str,
        _: EndpointSettings,
    ) -> EngineResult<()> {
        self.find_network(network)
            .ok_or_else(|| missing("network", network))?;
        self.container(container)?
            .networks
            .push(network.to_string());
        Ok(())
    }

    /// Creating a volume that exists gives the existing one, as in Docker.
    pub fn create_volume(&mut self, request: VolumeCreateRequest) -> Volume {
        let name = request.name.unwrap_or_default();
        if let Some(v) = self.volumes.iter().find(|v| v.name == name) {
            return v.clone();
        }
        let v = Volume {
            name,
            driver: request.driver.unwrap_or_else(|| "local".into()),
            labels: request.labels.unwrap_or_default(),
            ..Default::default()
        };
        self.volumes.push(v.clone());
        v
    }

    pub fn list_volumes(&self, filters: &[Filter]) -> Vec<Volume> {
        let matches = |v: &Volume| {
            matches_all(
                filters,
                &v.labels,
                |f| !matches!(f, Filter::Name(x) if !v.name.contains(x.as_str())),
            )
        };
        self.volumes
            .iter()
            .filter(|v| matches(v))
            .cloned()
            .collect()
    }

    pub fn inspect_volume(&self, name: &str) -> EngineResult<Volume> {
        let v = self.volumes.iter().find(|v| v.name == name);
        v.cloned().ok_or_else(|| missing("volume", name))
    }

    pub fn remove_volume(&mut self, name: &str, force: bool) -> EngineResult<()> {
        self.inspect_volume(name)?;
        let user = self
            .containers
            .iter()
            .find(|c| c.matches(&[Filter::Volume(name.into())]));
        if let (Some(c), false) = (user, force) {
            return Err(EngineError::Conflict(format!(
                "volume {name} is in use by {}",
                c.id
            )));
        }
        self.volumes.retain(|v| v.name != name);
        Ok(())
    }
}
