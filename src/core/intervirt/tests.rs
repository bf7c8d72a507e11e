//! The agent's request logic against a fake engine and the dataplane's kernel fakes.

use std::collections::BTreeMap;
use std::sync::Mutex;

use bollard::models::{
    ContainerConfig, ContainerState, ContainerSummary, ImageInspect, ImageSummary,
};

use super::*;
use crate::core::engine::{EngineResult, EngineVersion};
use crate::core::network::netlink::fake::FakeNetlink;
use crate::core::network::netlink::{Netlink, Netns};
use crate::core::network::nft::fake::FakeFirewall;
use crate::core::network::nft::Firewall;
use crate::core::power::RecordingPower;

#[derive(Clone, Debug)]
struct FakeContainer {
    image: String,
    labels: HashMap<String, String>,
    pid: Option<u32>,
    /// Starting fails with this message.
    broken: bool,
}

/// Containers in memory; a started container gets a fresh pid that the netlink fake knows.
struct FakeEngine {
    containers: Mutex<BTreeMap<String, FakeContainer>>,
    images: Vec<String>,
    next_pid: Mutex<u32>,
    netlink: FakeNetlink,
    calls: Mutex<Vec<String>>,
}

impl FakeEngine {
    fn new(netlink: FakeNetlink) -> Self {
        Self {
            containers: Mutex::new(BTreeMap::new()),
            images: vec!["debian/13".into(), "broken".into()],
            next_pid: Mutex::new(100),
            netlink,
            calls: Mutex::new(Vec::new()),
        }
    }
    fn pid(&self, name: &str) -> Option<u32> {
        self.containers.lock().unwrap().get(name)?.pid
    }
    fn log(&self, call: String) {
        self.calls.lock().unwrap().push(call);
    }
    fn stopped(&self, name: &str) {
        let pid = self
            .containers
            .lock()
            .unwrap()
            .get_mut(name)
            .and_then(|c| c.pid.take());
        if let Some(pid) = pid {
            self.netlink.kill_pid(pid);
        }
    }
}

fn missing(name: &str) -> EngineError {
    EngineError::NotFound(format!("No such container: {name}"))
}

crate::testutil::fake_engine! {
    impl ContainerEngine for FakeEngine;
    not_faked: load_images, export_image, remove_image, prune_images, prune_containers,
        list_volumes, inspect_volume, remove_volume, prune_volumes;
    async fn version(&self) -> EngineResult<EngineVersion> {
        Ok(EngineVersion {
            version: "fake".into(),
            api_version: "1.45".into(),
        })
    }
    async fn list_images(&self) -> EngineResult<Vec<ImageSummary>> {
        Ok(Vec::new())
    }
    async fn inspect_image(&self, id: &str) -> EngineResult<ImageInspect> {
        if self.images.iter().any(|i| i == id) {
            Ok(ImageInspect {
                id: Some(format!("sha256:{id}")),
                ..Default::default()
            })
        } else {
            Err(EngineError::NotFound(format!("No such image: {id}")))
        }
    }
    async fn list_containers(&self) -> EngineResult<Vec<ContainerSummary>> {
        self.list_containers_filtered(&[]).await
    }
    async fn inspect_container(&self, id: &str) -> EngineResult<ContainerInspectResponse> {
        let all = self.containers.lock().unwrap();
        let c = all.get(id).ok_or_else(|| missing(id))?;
        Ok(ContainerInspectResponse {
            name: Some(format!("/{id}")),
            image: Some(format!("sha256:{}", c.image)),
            config: Some(ContainerConfig {
                image: Some(c.image.clone()),
                labels: Some(c.labels.clone()),
                ..Default::default()
            }),
            state: Some(ContainerState {
                running: Some(c.pid.is_some()),
                pid: Some(i64::from(c.pid.unwrap_or(0))),
                ..Default::default()
            }),
            ..Default::default()
        })
    }
    async fn start_container(&self, id: &str) -> EngineResult<()> {
        self.log(format!("start {id}"));
        let mut all = self.containers.lock().unwrap();
        let c = all.get_mut(id).ok_or_else(|| missing(id))?;
        if c.broken {
            return Err(EngineError::Rejected(
                "exec: \"/nonexistent\": no such file or directory".into(),
            ));
        }
        if c.pid.is_none() {
            let mut next = self.next_pid.lock().unwrap();
            *next += 1;
            c.pid = Some(*next);
            self.netlink.live_pids.lock().unwrap().insert(*next);
        }
        Ok(())
    }
    async fn stop_container(&self, id: &str) -> EngineResult<()> {
        self.stop_container_with_timeout(id, 10).await
    }
    async fn restart_container(&self, id: &str) -> EngineResult<()> {
        self.stopped(id);
        self.start_container(id).await
    }
    async fn remove_container(&self, id: &str, _force: bool, _v: bool) -> EngineResult<()> {
        self.log(format!("remove {id}"));
        self.stopped(id);
        self.containers
            .lock()
            .unwrap()
            .remove(id)
            .map(|_| ())
            .ok_or_else(|| missing(id))
    }
    async fn list_containers_filtered(
        &self,
        filters: &[Filter],
    ) -> EngineResult<Vec<ContainerSummary>> {
        let all = self.containers.lock().unwrap();
        Ok(all
            .iter()
            .filter(|(_, c)| {
                filters.iter().all(|f| match f {
                    Filter::Label(l) => {
                        let (k, v) = l.split_once('=').unwrap_or((l, ""));
                        c.labels.get(k).is_some_and(|x| v.is_empty() || x == v)
                    }
                    _ => true,
                })
            })
            .map(|(n, _)| ContainerSummary {
                names: Some(vec![format!("/{n}")]),
                ..Default::default()
            })
            .collect())
    }
    async fn create_container(
        &self,
        name: &str,
        body: ContainerCreateBody,
    ) -> EngineResult<String> {
        self.log(format!("create {name}"));
        let host = body.host_config.unwrap();
        assert_eq!(host.network_mode.as_deref(), Some("none"));
        let mut all = self.containers.lock().unwrap();
        if all.contains_key(name) {
            return Err(EngineError::Conflict(format!("name {name} is in use")));
        }
        let image = body.image.unwrap();
        all.insert(
            name.into(),
            FakeContainer {
                broken: image == "broken",
                image,
                labels: body.labels.unwrap(),
                pid: None,
            },
        );
        Ok(format!("id-{name}"))
    }
    async fn stop_container_with_timeout(&self, id: &str, _t: u32) -> EngineResult<()> {
        self.log(format!("stop {id}"));
        if !self.containers.lock().unwrap().contains_key(id) {
            return Err(missing(id));
        }
        self.stopped(id);
        Ok(())
    }
    async fn pull_image(&self, reference: &str) -> EngineResult<()> {
        Err(EngineError::Unavailable(format!(
            "no registry for {reference}"
        )))
    }
}

struct Rig {
    agent: Arc<IntervirtAgent>,
    engine: Arc<FakeEngine>,
    netlink: FakeNetlink,
    firewall: FakeFirewall,
    dir: tempfile::TempDir,
}

fn rig_with(upgrade: UpgradeCommand) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let netlink = FakeNetlink::default();
    let firewall = FakeFirewall::default();
    let engine = Arc::new(FakeEngine::new(netlink.clone()));
    let (nl, fw) = (netlink.clone(), firewall.clone());
    let net = DataplaneHandle::start_with(
        DataplaneConfig {
            state_dir: dir.path().join("intervirt"),
            netns: None,
        },
        move |_| {
            Ok((
                Box::new(nl) as Box<dyn Netlink>,
                Box::new(fw) as Box<dyn Firewall>,
            ))
        },
    )
    .unwrap();
    let settings = AgentSettings {
        state_dir: dir.path().join("intervirt"),
        netns: None,
        upgrade_command: upgrade,
        upgrade_timeout: Duration::from_secs(60),
        pull_on_update: true,
        stop_timeout_secs: 1,
        strict_client: false,
    };
    std::fs::create_dir_all(&settings.state_dir).unwrap();
    let power = Arc::new(RecordingPower {
        file: dir.path().join("power.log"),
    });
    let agent = IntervirtAgent::with_dataplane(settings, engine.clone(), power, net);
    Rig {
        agent,
        engine,
        netlink,
        firewall,
        dir,
    }
}

fn rig() -> Rig {
    rig_with(UpgradeCommand::None)
}

fn spec(name: &str, n: u8) -> NewContainer {
    NewContainer {
        name: name.into(),
        image: "debian/13".into(),
        mac: format!("02:00:5e:00:00:{n:02x}").parse().unwrap(),
        ipv4: Some(Ipv4Addr::new(198, 18, 7, n)),
        ipv6: Some(format!("2001:db8:7::{n:x}").parse().unwrap()),
        internet: false,
    }
}

impl Rig {
    fn host_link(&self, name: &str) -> bool {
        let link = self
            .agent
            .net
            .run_blocking({
                let n = name.to_string();
                move |d| d.container(&n).map(|c| c.link)
            })
            .unwrap()
            .unwrap();
        self.netlink
            .kernel
            .lock()
            .unwrap()
            .links
            .contains_key(&(Netns::Current, format!("gv-{link}")))
    }
    async fn attached_pid(&self, name: &str) -> Option<u32> {
        let n = name.to_string();
        self.agent.net.run(move |d| d.pid(&n)).await.unwrap()
    }
}

#[tokio::test]
async fn add_start_stop_remove_keep_docker_and_network_in_step() {
    let r = rig();
    r.agent.add_container(spec("a", 2)).await.unwrap();
    let pid = r.engine.pid("a").unwrap();
    assert_eq!(r.attached_pid("a").await, Some(pid));
    assert!(r.host_link("a"));

    let again = r.agent.add_container(spec("a", 3)).await.unwrap_err();
    assert!(again.kind() == ErrorKind::Conflict, "{again:?}");
    let same_addr = r
        .agent
        .add_container(NewContainer {
            name: "b".into(),
            ..spec("a", 2)
        })
        .await;
    assert!(
        kind_of(&same_addr) == Some(ErrorKind::Conflict),
        "{same_addr:?}"
    );
    assert!(
        r.engine.pid("b").is_none(),
        "nothing created for a refused add"
    );

    assert!(kind_of(&r.agent.start_container("a").await) == Some(ErrorKind::Conflict));
    r.agent.stop_container("a").await.unwrap();
    assert_eq!(r.attached_pid("a").await, None);
    assert!(!r.host_link("a"));
    assert!(kind_of(&r.agent.stop_container("a").await) == Some(ErrorKind::Conflict));
    r.agent.start_container("a").await.unwrap();
    let pid2 = r.engine.pid("a").unwrap();
    assert_ne!(pid, pid2);
    assert_eq!(r.attached_pid("a").await, Some(pid2));
    assert!(kind_of(&r.agent.start_container("zz").await) == Some(ErrorKind::NotFound));

    let (tx, mut rx) = mpsc::channel(16);
    r.agent
        .remove_container("a", ProgressSink::new(tx))
        .await
        .unwrap();
    let mut steps = Vec::new();
    while let Some(p) = rx.recv().await {
        steps.push(p.text);
    }
    assert_eq!(steps.len(), 3, "{steps:?}");
    assert!(r.engine.containers.lock().unwrap().is_empty());
    assert!(!r.agent.known("a").await.unwrap());
    let gone = r.agent.remove_container("a", ProgressSink::default()).await;
    assert!(kind_of(&gone) == Some(ErrorKind::NotFound));
}

#[tokio::test]
async fn failed_add_is_rolled_back_and_reports_the_reason() {
    let r = rig();
    let mut broken = spec("x", 4);
    broken.image = "broken".into();
    let e = r.agent.add_container(broken).await.unwrap_err();
    assert!(
        matches!(&e, AgentError::Guest(m) if m.contains("nonexistent")),
        "{e:?}"
    );
    assert!(r.engine.containers.lock().unwrap().is_empty());
    assert!(!r.agent.known("x").await.unwrap());

    let mut missing = spec("y", 5);
    missing.image = "nowhere/none".into();
    let e = r.agent.add_container(missing).await.unwrap_err();
    assert!(
        matches!(&e, AgentError::NotFound(m) if m.contains("no registry")),
        "{e:?}"
    );
    assert!(!r.agent.known("y").await.unwrap());
    // The name and the addresses are free again.
    r.agent.add_container(spec("x", 4)).await.unwrap();
}

#[tokio::test]
async fn connect_disconnect_codes() {
    let r = rig();
    r.agent.add_container(spec("a", 2)).await.unwrap();
    r.agent.add_container(spec("b", 3)).await.unwrap();
    r.agent.connect("a", "b").await.unwrap();
    assert!(kind_of(&r.agent.connect("b", "a").await) == Some(ErrorKind::Conflict));
    assert!(kind_of(&r.agent.connect("a", "a").await) == Some(ErrorKind::Invalid));
    assert!(kind_of(&r.agent.connect("a", "q").await) == Some(ErrorKind::NotFound));
    r.agent.disconnect("a", "b").await.unwrap();
    assert!(kind_of(&r.agent.disconnect("a", "b").await) == Some(ErrorKind::Conflict));
    assert!(kind_of(&r.agent.disconnect("a", "q").await) == Some(ErrorKind::NotFound));
    r.agent.set_internet("a", true).await.unwrap();
    r.agent.set_internet("a", true).await.unwrap();
    assert!(*r.firewall.full_applies.lock().unwrap() >= 1);
}

#[tokio::test]
async fn reconcile_follows_docker() {
    let r = rig();
    r.agent.add_container(spec("a", 2)).await.unwrap();
    // Docker restarts it behind the agent's back: a new pid, then a reconcile re-attaches.
    r.engine.restart_container("a").await.unwrap();
    let pid = r.engine.pid("a").unwrap();
    assert_ne!(r.attached_pid("a").await, Some(pid));
    r.agent.reconcile("a").await.unwrap();
    assert_eq!(r.attached_pid("a").await, Some(pid));
    assert!(r.host_link("a"));
    // Repeated and unknown names are harmless.
    r.agent.reconcile("a").await.unwrap();
    r.agent.reconcile("stranger").await.unwrap();
    r.engine.stop_container("a").await.unwrap();
    r.agent.reconcile("a").await.unwrap();
    assert_eq!(r.attached_pid("a").await, None);
}

#[tokio::test]
async fn power_stops_containers_answers_first_and_resumes_them_at_start() {
    let r = rig();
    r.agent.add_container(spec("a", 2)).await.unwrap();
    r.agent.add_container(spec("b", 3)).await.unwrap();
    r.agent.stop_container("b").await.unwrap();
    let order = r.agent.prepare_power(PowerAction::Reboot).await.unwrap();
    assert!(r.engine.pid("a").is_none());
    assert!(
        !r.dir.path().join("power.log").exists(),
        "nothing before execute"
    );
    order.execute().await;
    assert_eq!(
        std::fs::read_to_string(r.dir.path().join("power.log")).unwrap(),
        "reboot\n"
    );
    // The next start brings back what was running (a), not what the client stopped (b).
    r.agent.start_up(CancellationToken::new()).await;
    assert!(r.engine.pid("a").is_some());
    assert!(r.engine.pid("b").is_none());
    assert_eq!(r.attached_pid("a").await, r.engine.pid("a"));
    assert!(!r.dir.path().join("intervirt").join(RESUME_FILE).exists());
}

#[tokio::test]
async fn wipe_and_update() {
    let r = rig_with(UpgradeCommand::Argv(vec![
        "sh".into(),
        "-c".into(),
        "echo upgraded".into(),
    ]));
    r.agent.add_container(spec("a", 2)).await.unwrap();
    r.agent.add_container(spec("b", 3)).await.unwrap();
    r.agent.connect("a", "b").await.unwrap();
    r.agent.stop_container("b").await.unwrap();
    let pid = r.engine.pid("a").unwrap();

    let (tx, mut rx) = mpsc::channel(64);
    r.agent.update(ProgressSink::new(tx)).await.unwrap();
    let mut lines = Vec::new();
    while let Some(p) = rx.recv().await {
        lines.push(p.text);
    }
    assert!(lines.contains(&"upgraded".to_string()), "{lines:?}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("Keeping the current image")),
        "{lines:?}"
    );
    // Running containers restart with their network; stopped ones stay stopped.
    let new_pid = r.engine.pid("a").unwrap();
    assert_ne!(pid, new_pid);
    assert_eq!(r.attached_pid("a").await, Some(new_pid));
    assert!(r.engine.pid("b").is_none());

    let (tx, mut rx) = mpsc::channel(64);
    r.agent.wipe(ProgressSink::new(tx)).await.unwrap();
    let mut steps = Vec::new();
    while let Some(p) = rx.recv().await {
        steps.push(p.text);
    }
    assert_eq!(
        steps,
        vec![
            "Removing container a",
            "Removing container b",
            "Removing the network configuration"
        ]
    );
    assert!(r.engine.containers.lock().unwrap().is_empty());
    assert!(!r.agent.known("a").await.unwrap());
}

#[tokio::test]
async fn a_failing_upgrade_is_a_command_error() {
    let r = rig_with(UpgradeCommand::Argv(vec![
        "sh".into(),
        "-c".into(),
        "exit 7".into(),
    ]));
    let e = r.agent.update(ProgressSink::default()).await.unwrap_err();
    assert!(
        matches!(&e, AgentError::Command(m) if m.contains("status 7")),
        "{e:?}"
    );
}

/// The kind of a request's error, None when it succeeded.
fn kind_of<T>(r: &AgentResult<T>) -> Option<ErrorKind> {
    r.as_ref().err().map(AgentError::kind)
}
