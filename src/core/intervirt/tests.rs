//! The agent's request logic against a fake engine and the dataplane's kernel fakes.

use super::*;
use crate::core::network::netlink::fake::FakeNetlink;
use crate::core::network::netlink::{Netlink, Netns};
use crate::core::network::nft::fake::FakeFirewall;
use crate::core::network::nft::Firewall;
use crate::core::power::RecordingPower;
use crate::testutil::FakeEngine;

/// Docker with the image `debian/13`; a started container's pid is one the netlink fake
/// knows (until the container stops).
fn fake_engine(netlink: &FakeNetlink) -> FakeEngine {
    let engine = FakeEngine::with_images(&["debian/13"]);
    let netlink = netlink.clone();
    engine.on_process(move |pid, alive| {
        if alive {
            netlink.live_pids.lock().unwrap().insert(pid);
        } else {
            netlink.kill_pid(pid);
        }
    });
    engine
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
    let engine = Arc::new(fake_engine(&netlink));
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

/// Every container the agent created has no Docker networking: gantry's dataplane is its
/// network.
impl Drop for Rig {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        for (name, body) in self.engine.create_requests() {
            let mode = body.host_config.and_then(|h| h.network_mode);
            assert_eq!(mode.as_deref(), Some("none"), "{name}");
        }
    }
}

impl Rig {
    fn pid(&self, name: &str) -> Option<u32> {
        self.engine.container(name)?.pid
    }

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
    let pid = r.pid("a").unwrap();
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
    assert!(r.pid("b").is_none(), "nothing created for a refused add");

    assert!(kind_of(&r.agent.start_container("a").await) == Some(ErrorKind::Conflict));
    r.agent.stop_container("a").await.unwrap();
    assert_eq!(r.attached_pid("a").await, None);
    assert!(!r.host_link("a"));
    assert!(kind_of(&r.agent.stop_container("a").await) == Some(ErrorKind::Conflict));
    r.agent.start_container("a").await.unwrap();
    let pid2 = r.pid("a").unwrap();
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
    assert!(r.engine.containers().is_empty());
    assert!(!r.agent.known("a").await.unwrap());
    let gone = r.agent.remove_container("a", ProgressSink::default()).await;
    assert!(kind_of(&gone) == Some(ErrorKind::NotFound));
}

#[tokio::test]
async fn failed_add_is_rolled_back_and_reports_the_reason() {
    let r = rig();
    // The image's command does not exist: the start fails.
    let exec = "exec: \"/nonexistent\": no such file or directory";
    let broken = EngineError::Rejected(exec.into());
    r.engine.fail_next("start_container x", broken);
    let e = r.agent.add_container(spec("x", 4)).await.unwrap_err();
    assert!(
        matches!(&e, AgentError::Guest(m) if m.contains("nonexistent")),
        "{e:?}"
    );
    assert!(r.engine.containers().is_empty());
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
    let pid = r.pid("a").unwrap();
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
    assert!(r.pid("a").is_none());
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
    assert!(r.pid("a").is_some());
    assert!(r.pid("b").is_none());
    assert_eq!(r.attached_pid("a").await, r.pid("a"));
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
    let pid = r.pid("a").unwrap();

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
    let new_pid = r.pid("a").unwrap();
    assert_ne!(pid, new_pid);
    assert_eq!(r.attached_pid("a").await, Some(new_pid));
    assert!(r.pid("b").is_none());

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
    assert!(r.engine.containers().is_empty());
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
