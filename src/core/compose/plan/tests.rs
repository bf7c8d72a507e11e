//! The planner on compose snippets: what each part makes of the keys it owns.

use std::path::PathBuf;
use std::time::Duration;

use bollard::models::{
    DeviceMapping, HostConfig, MountType, PortBinding, ResourcesUlimits, RestartPolicy,
    RestartPolicyNameEnum,
};

use super::labels::*;
use super::resources::parse_duration;
use super::service::shlex_split;
use super::*;
use crate::core::compose::parse::parse;

fn ctx_parts() -> (PathBuf, PathBuf, HashMap<String, String>, ComposePolicy) {
    (
        PathBuf::from("/var/lib/gantry/apps/demo"),
        PathBuf::from("/var/lib/gantry/apps/demo/docker-compose.yml"),
        HashMap::from([("FROM_ENV".to_string(), "e".to_string())]),
        ComposePolicy::default(),
    )
}

fn plan_with(yaml: &str, policy: &ComposePolicy) -> Result<Plan, ComposeError> {
    let (dir, file, vars, _) = ctx_parts();
    let model = parse(yaml, &vars)?;
    let ctx = PlanContext {
        project: "demo",
        app_id: "Demo App:1.0",
        dir: &dir,
        compose_file: &file,
        vars: &vars,
        policy,
    };
    plan(&model, &ctx)
}

fn plan_yaml(yaml: &str) -> Plan {
    plan_with(yaml, &ComposePolicy::default()).unwrap()
}

/// Every switch of the policy on.
fn permissive() -> ComposePolicy {
    ComposePolicy {
        allow_host_namespaces: true,
        allow_network_options: true,
        allow_shared_resources: true,
        allow_volume_drivers: true,
        allow_logging_drivers: true,
        ..Default::default()
    }
}

fn host(p: &Plan, svc: &str) -> HostConfig {
    p.service(svc).unwrap().body.host_config.clone().unwrap()
}

fn binding(ip: &str, port: &str) -> PortBinding {
    PortBinding {
        host_ip: Some(ip.into()),
        host_port: Some(port.into()),
    }
}

#[test]
fn ports_short_long_ranges_udp_host_ip() {
    let p = plan_yaml(
        r#"
services:
  web:
    image: busybox
    ports:
      - "127.0.0.1:8080:80"
      - 9090
      - "127.0.0.1:5000-5001:5000-5001/udp"
      - "127.0.0.1:7000-7010:7000"
      - target: 443
        published: 8443
        host_ip: 127.0.0.1
      - target: 53
        published: "5353"
        protocol: udp
        host_ip: "2001:db8::1"
      - "127.0.0.1:8081:80"
"#,
    );
    let body = &p.service("web").unwrap().body;
    let mut exposed = body.exposed_ports.clone().unwrap();
    exposed.sort();
    assert_eq!(
        exposed,
        vec!["443/tcp", "5000/udp", "5001/udp", "53/udp", "7000/tcp", "80/tcp", "9090/tcp"]
    );
    let pb = host(&p, "web").port_bindings.unwrap();
    assert_eq!(
        pb["80/tcp"].clone().unwrap(),
        vec![binding("127.0.0.1", "8080"), binding("127.0.0.1", "8081")]
    );
    assert_eq!(pb["9090/tcp"].clone().unwrap(), vec![binding("", "")]);
    assert_eq!(
        pb["5000/udp"].clone().unwrap(),
        vec![binding("127.0.0.1", "5000")]
    );
    assert_eq!(
        pb["5001/udp"].clone().unwrap(),
        vec![binding("127.0.0.1", "5001")]
    );
    assert_eq!(
        pb["7000/tcp"].clone().unwrap(),
        vec![binding("127.0.0.1", "7000-7010")]
    );
    assert_eq!(
        pb["443/tcp"].clone().unwrap(),
        vec![binding("127.0.0.1", "8443")]
    );
    assert_eq!(
        pb["53/udp"].clone().unwrap(),
        vec![binding("2001:db8::1", "5353")]
    );
}

#[test]
fn environment_list_map_file_and_valueless() {
    let p = plan_yaml(
        r#"
services:
  a:
    image: busybox
    environment: ["A=1", "B=x=y", "FROM_ENV", "UNSET_ONE"]
  b:
    image: busybox
    environment:
      N: 1
      F: 1.50
      T: true
      E: ""
      FROM_ENV:
"#,
    );
    assert_eq!(
        p.service("a").unwrap().body.env.clone().unwrap(),
        vec!["A=1", "B=x=y", "FROM_ENV=e", "UNSET_ONE"]
    );
    assert_eq!(
        p.service("b").unwrap().body.env.clone().unwrap(),
        vec!["N=1", "F=1.5", "T=True", "E=", "FROM_ENV=e"]
    );
}

#[test]
fn env_file_is_read_relative_to_the_app_dir() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("web.env"), "A=from-file\nB=file\n").unwrap();
    let vars = HashMap::new();
    let model = parse(
        "services: {web: {image: busybox, env_file: web.env, environment: {B: env}}}",
        &vars,
    )
    .unwrap();
    let file = dir.path().join("compose.yaml");
    let pol = ComposePolicy::default();
    let ctx = PlanContext {
        project: "p",
        app_id: "p",
        dir: dir.path(),
        compose_file: &file,
        vars: &vars,
        policy: &pol,
    };
    let p = plan(&model, &ctx).unwrap();
    assert_eq!(
        p.service("web").unwrap().body.env.clone().unwrap(),
        vec!["A=from-file", "B=env"]
    );
    let model = parse(
        "services: {web: {image: busybox, env_file: ../x.env}}",
        &vars,
    )
    .unwrap();
    assert!(matches!(
        plan(&model, &ctx),
        Err(ComposeError::Policy { .. })
    ));
}

#[test]
fn labels_and_compose_labels() {
    let p = plan_yaml(
        r#"
services:
  web:
    image: busybox
    labels: ["a=b", "flag", "com.docker.compose.project=evil"]
  db:
    image: busybox
    labels: {x.y: 1, z: }
"#,
    );
    let l = p.service("web").unwrap().body.labels.clone().unwrap();
    assert_eq!(l["a"], "b");
    assert_eq!(l["flag"], "");
    assert_eq!(l[LABEL_PROJECT], "demo");
    assert_eq!(l[LABEL_SERVICE], "web");
    assert_eq!(l[LABEL_ONEOFF], "False");
    assert_eq!(l[LABEL_CONTAINER_NUMBER], "1");
    assert_eq!(l[LABEL_VERSION], COMPOSE_VERSION);
    assert_eq!(l[LABEL_APP_ID], "Demo App:1.0");
    assert_eq!(l[LABEL_WORKING_DIR], "/var/lib/gantry/apps/demo");
    assert_eq!(
        l[LABEL_CONFIG_FILES],
        "/var/lib/gantry/apps/demo/docker-compose.yml"
    );
    assert!(!l.contains_key(LABEL_CONFIG_HASH), "added when applying");
    let l = p.service("db").unwrap().body.labels.clone().unwrap();
    assert_eq!(l["x.y"], "1");
    assert_eq!(l["z"], "");
    assert_eq!(p.service("web").unwrap().container_name, "demo_web_1");
}

#[test]
fn healthcheck_durations() {
    let p = plan_yaml(
        r#"
services:
  a:
    image: busybox
    healthcheck:
      test: ["CMD", "true"]
      interval: 1m30s
      timeout: 500ms
      retries: "3"
      start_period: 1.5s
  b:
    image: busybox
    healthcheck:
      test: curl -f http://localhost || exit 1
  c:
    image: busybox
    healthcheck:
      disable: true
"#,
    );
    let h = p.service("a").unwrap().body.healthcheck.clone().unwrap();
    assert_eq!(h.test.unwrap(), vec!["CMD", "true"]);
    assert_eq!(h.interval, Some(90_000_000_000));
    assert_eq!(h.timeout, Some(500_000_000));
    assert_eq!(h.retries, Some(3));
    assert_eq!(h.start_period, Some(1_500_000_000));
    let h = p.service("b").unwrap().body.healthcheck.clone().unwrap();
    assert_eq!(
        h.test.unwrap(),
        vec!["CMD-SHELL", "curl -f http://localhost || exit 1"]
    );
    let h = p.service("c").unwrap().body.healthcheck.clone().unwrap();
    assert_eq!(h.test.unwrap(), vec!["NONE"]);
    assert!(plan_with(
        "services: {a: {image: x, healthcheck: {interval: 10}}}",
        &ComposePolicy::default()
    )
    .is_err());
}

/// Service a has (nearly) every key of resources and lifecycle, b the deploy limits.
const RESOURCES: &str = r#"
services:
  a:
    image: busybox
    mem_limit: 512m
    cpus: 0.5
    shm_size: "1gb"
    ulimits:
      nproc: 65535
      nofile: {soft: 20000, hard: "40000"}
    tmpfs: ["/run", "/tmp:size=64m,mode=1777"]
    restart: on-failure:3
    sysctls: ["net.core.somaxconn=1024"]
    extra_hosts: {gw: 198.18.0.1}
    read_only: "yes"
    init: true
    tty: true
    stdin_open: true
    user: 1000
    working_dir: /srv
    hostname: box
    stop_signal: SIGINT
    stop_grace_period: 1m
    command: sh -c 'echo "a b"; sleep 1'
    entrypoint: ["/bin/sh", 1]
    logging: {driver: json-file, options: {max-size: 10m, max-file: 3}}
  b:
    image: busybox
    mem_limit: 1000000
    deploy: {resources: {limits: {cpus: "1.25", memory: 1g}}}
    restart: unless-stopped
    cap_drop: [ALL]
"#;

#[test]
fn resources_ulimits_tmpfs_restart_and_more() {
    let p = plan_yaml(RESOURCES);
    let a = p.service("a").unwrap();
    let h = host(&p, "a");
    assert_eq!(h.memory, Some(512 * 1024 * 1024));
    assert_eq!(h.nano_cpus, Some(500_000_000));
    assert_eq!(h.shm_size, Some(1024 * 1024 * 1024));
    let mut ul = h.ulimits.unwrap();
    ul.sort_by(|x, y| x.name.cmp(&y.name));
    assert_eq!(
        ul,
        vec![
            ResourcesUlimits {
                name: Some("nofile".into()),
                soft: Some(20000),
                hard: Some(40000)
            },
            ResourcesUlimits {
                name: Some("nproc".into()),
                soft: Some(65535),
                hard: Some(65535)
            },
        ]
    );
    let t = h.tmpfs.unwrap();
    assert_eq!(t["/run"], "");
    assert_eq!(t["/tmp"], "size=64m,mode=1777");
    assert_eq!(
        h.restart_policy.unwrap(),
        RestartPolicy {
            name: Some(RestartPolicyNameEnum::ON_FAILURE),
            maximum_retry_count: Some(3)
        }
    );
    assert_eq!(h.sysctls.unwrap()["net.core.somaxconn"], "1024");
    assert_eq!(h.extra_hosts.unwrap(), vec!["gw:198.18.0.1"]);
    assert_eq!(h.readonly_rootfs, Some(true));
    assert_eq!(h.init, Some(true));
    let lc = h.log_config.unwrap();
    assert_eq!(lc.typ.as_deref(), Some("json-file"));
    assert_eq!(lc.config.unwrap()["max-file"], "3");
    assert_eq!(a.body.tty, Some(true));
    assert_eq!(a.body.open_stdin, Some(true));
    assert_eq!(a.body.user.as_deref(), Some("1000"));
    assert_eq!(a.body.working_dir.as_deref(), Some("/srv"));
    assert_eq!(a.body.hostname.as_deref(), Some("box"));
    assert_eq!(a.body.stop_signal.as_deref(), Some("SIGINT"));
    assert_eq!(a.body.stop_timeout, Some(60));
    assert_eq!(a.stop_timeout, 60);
    assert_eq!(
        a.body.cmd.clone().unwrap(),
        vec!["sh", "-c", "echo \"a b\"; sleep 1"]
    );
    assert_eq!(a.body.entrypoint.clone().unwrap(), vec!["/bin/sh", "1"]);
}

#[test]
fn deploy_limits_win_and_restart_is_checked() {
    let p = plan_yaml(RESOURCES);
    let h = host(&p, "b");
    assert_eq!(h.memory, Some(1024 * 1024 * 1024));
    assert_eq!(h.nano_cpus, Some(1_250_000_000));
    assert_eq!(h.cap_drop.unwrap(), vec!["ALL"]);
    assert_eq!(
        h.restart_policy.unwrap().name,
        Some(RestartPolicyNameEnum::UNLESS_STOPPED)
    );
    assert_eq!(p.service("b").unwrap().stop_timeout, DEFAULT_STOP_TIMEOUT);
    for bad in ["sometimes", "on-failure:x", "always:1"] {
        let y = format!("services: {{a: {{image: x, restart: \"{bad}\"}}}}");
        assert!(plan_with(&y, &ComposePolicy::default()).is_err(), "{bad}");
    }
}

/// Services using networks (declared, unused, the implicit default, `network_mode`) and
/// volumes (named, bind, anonymous, long syntax) in every way.
const NETWORKS_AND_VOLUMES: &str = r#"
services:
  web:
    image: busybox
    networks:
      front:
      back: {aliases: [api, www], ipv4_address: 198.18.7.10}
    volumes:
      - data:/data
      - ./conf:/etc/conf:ro
      - /var/cache
      - {type: volume, source: data, target: /d2, read_only: true}
      - {type: bind, source: ./static, target: /static}
      - {type: tmpfs, target: /scratch, tmpfs: {size: 1m}}
  db:
    image: busybox
  host:
    image: busybox
    network_mode: host
  side:
    image: busybox
    network_mode: "service:web"
networks:
  front: {}
  back: {driver: bridge, internal: true, ipam: {config: [{subnet: 198.18.7.0/24}]}}
  unused: {}
volumes:
  data: {}
  named: {name: exact-name}
  ext: {external: true}
"#;

#[test]
fn project_networks_and_volumes() {
    let p = plan_with(NETWORKS_AND_VOLUMES, &permissive()).unwrap();
    let names: Vec<(&str, &str, bool)> = p
        .networks
        .iter()
        .map(|n| (n.key.as_str(), n.name.as_str(), n.external))
        .collect();
    assert_eq!(
        names,
        vec![
            ("front", "demo_front", false),
            ("back", "demo_back", false),
            ("default", "demo_default", false)
        ]
    );
    let back = &p.networks[1].request;
    assert_eq!(back.internal, Some(true));
    assert_eq!(back.attachable, Some(true));
    let nl = back.labels.clone().unwrap();
    assert_eq!(nl[LABEL_NETWORK], "back");
    assert_eq!(nl[LABEL_PROJECT], "demo");
    assert_eq!(nl[LABEL_APP_ID], "Demo App:1.0");
    let vols: Vec<(&str, &str, bool)> = p
        .volumes
        .iter()
        .map(|v| (v.key.as_str(), v.name.as_str(), v.external))
        .collect();
    assert_eq!(
        vols,
        vec![
            ("data", "demo_data", false),
            ("named", "exact-name", false),
            ("ext", "ext", true)
        ]
    );
    assert_eq!(
        p.volumes[0].request.labels.clone().unwrap()[LABEL_VOLUME],
        "data"
    );
}

#[test]
fn service_networks_binds_and_mounts() {
    let p = plan_with(NETWORKS_AND_VOLUMES, &permissive()).unwrap();
    let web = p.service("web").unwrap();
    let h = host(&p, "web");
    // Primary network: first by name (demo_back < demo_front).
    assert_eq!(h.network_mode.as_deref(), Some("demo_back"));
    let ep = &web
        .body
        .networking_config
        .as_ref()
        .unwrap()
        .endpoints_config
        .as_ref()
        .unwrap()["demo_back"];
    assert_eq!(ep.aliases.clone().unwrap(), vec!["web", "api", "www"]);
    assert_eq!(
        ep.ipam_config.as_ref().unwrap().ipv4_address.as_deref(),
        Some("198.18.7.10")
    );
    assert_eq!(web.extra_networks.len(), 1);
    assert_eq!(web.extra_networks[0].0, "demo_front");
    assert_eq!(
        web.extra_networks[0].1.aliases.clone().unwrap(),
        vec!["web"]
    );
    assert_eq!(
        h.binds.unwrap(),
        vec![
            "demo_data:/data:rw",
            "/var/lib/gantry/apps/demo/conf:/etc/conf:ro"
        ]
    );
    assert_eq!(
        web.body.volumes.clone().unwrap(),
        vec!["/data", "/etc/conf", "/var/cache"]
    );
    let m = h.mounts.unwrap();
    assert_eq!(m[0].typ, Some(MountType::VOLUME));
    assert_eq!(m[0].source.as_deref(), Some("demo_data"));
    assert_eq!(m[0].read_only, Some(true));
    assert_eq!(
        m[1].source.as_deref(),
        Some("/var/lib/gantry/apps/demo/static")
    );
    assert_eq!(
        m[2].tmpfs_options.as_ref().unwrap().size_bytes,
        Some(1024 * 1024)
    );
    assert_eq!(host(&p, "db").network_mode.as_deref(), Some("demo_default"));
    assert_eq!(host(&p, "host").network_mode.as_deref(), Some("host"));
    let side = p.service("side").unwrap();
    assert_eq!(side.network_of.as_deref(), Some("web"));
    assert_eq!(host(&p, "side").network_mode, None);
    assert_eq!(p.levels(), vec![vec!["web", "db", "host"], vec!["side"]]);
}

#[test]
fn bind_policy() {
    let pol = ComposePolicy::default();
    for bad in [
        "/etc:/x",
        "../other:/x",
        "./a/../../b:/x",
        "~/x:/x",
        "/var/lib/gantry/apps/demo2:/x",
    ] {
        let y = format!("services: {{a: {{image: x, volumes: [\"{bad}\"]}}}}");
        match plan_with(&y, &pol) {
            Err(ComposeError::Policy { scope, .. }) => assert_eq!(scope, "service \"a\""),
            other => panic!("{bad}: {other:?}"),
        }
    }
    let ok =
        "services: {a: {image: x, volumes: [\"./a/../b:/x\", \"/var/lib/gantry/apps/demo/c:/y\"]}}";
    assert!(plan_with(ok, &pol).is_ok());
    let allowed = ComposePolicy {
        allowed_bind_paths: vec![PathBuf::from("/srv/data")],
        ..Default::default()
    };
    let y = "services: {a: {image: x, volumes: [\"/srv/data/x:/x\"]}}";
    assert!(plan_with(y, &pol).is_err());
    assert!(plan_with(y, &allowed).is_ok());
    let y = "services: {a: {image: x, volumes: [\"/srv/data/../etc:/x\"]}}";
    assert!(plan_with(y, &allowed).is_err());
}

#[test]
fn privileged_devices_capabilities_are_gated() {
    let off = ComposePolicy::default();
    let on = ComposePolicy {
        allow_privileged: true,
        allow_devices: true,
        allow_capabilities: true,
        ..Default::default()
    };
    for y in [
        "services: {a: {image: x, privileged: true}}",
        "services: {a: {image: x, devices: [\"/dev/ttyUSB0:/dev/ttyUSB0\"]}}",
        "services: {a: {image: x, cap_add: [NET_ADMIN]}}",
    ] {
        assert!(
            matches!(plan_with(y, &off), Err(ComposeError::Policy { .. })),
            "{y}"
        );
        assert!(plan_with(y, &on).is_ok(), "{y}");
    }
    let p = plan_with("services: {a: {image: x, devices: [\"/dev/ttyUSB0\"], cap_add: [NET_ADMIN], privileged: true}}", &on).unwrap();
    let h = host(&p, "a");
    assert_eq!(h.privileged, Some(true));
    assert_eq!(h.cap_add.unwrap(), vec!["NET_ADMIN"]);
    assert_eq!(
        h.devices.unwrap(),
        vec![DeviceMapping {
            path_on_host: Some("/dev/ttyUSB0".into()),
            path_in_container: Some("/dev/ttyUSB0".into()),
            cgroup_permissions: Some("rwm".into())
        }]
    );
}

#[test]
fn dependencies() {
    let p = plan_yaml(
        r#"
services:
  web: {image: x, depends_on: {db: {condition: service_healthy}, init: {condition: service_completed_successfully}}}
  db: {image: x}
  init: {image: x, depends_on: [db]}
"#,
    );
    assert_eq!(p.levels(), vec![vec!["db"], vec!["init"], vec!["web"]]);
    assert_eq!(
        p.service("web").unwrap().depends_on,
        vec![
            Dependency {
                service: "db".into(),
                condition: Condition::Healthy
            },
            Dependency {
                service: "init".into(),
                condition: Condition::CompletedSuccessfully
            },
        ]
    );
    let pol = ComposePolicy::default();
    assert!(plan_with("services: {a: {image: x, depends_on: [b]}}", &pol).is_err());
    let e = plan_with(
        "services: {a: {image: x, depends_on: [b]}, b: {image: x, depends_on: [a]}}",
        &pol,
    )
    .unwrap_err();
    assert!(e.to_string().contains("circular"), "{e}");
    assert!(plan_with(
        "services: {a: {image: x, depends_on: {b: {condition: whenever}}}, b: {image: x}}",
        &pol
    )
    .is_err());
    assert!(plan_with("services: {a: {image: x, networks: [nope]}}", &pol).is_err());
    assert!(plan_with("services: {a: {image: x, volumes: [\"nope:/x\"]}}", &pol).is_err());
    assert!(plan_with("services: {a: {command: x}}", &pol).is_err());
}

#[test]
fn durations_bytes_shlex() {
    assert_eq!(parse_duration("10s"), Some(Duration::from_secs(10)));
    assert_eq!(parse_duration("1h2m3s"), Some(Duration::from_secs(3723)));
    assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
    assert_eq!(parse_duration("2us"), Some(Duration::from_micros(2)));
    for bad in ["", "10", "s", "1s1h", "1x", "1s2s"] {
        assert_eq!(parse_duration(bad), None, "{bad}");
    }
    assert_eq!(parse_bytes("100"), Some(100));
    assert_eq!(parse_bytes("1k"), Some(1024));
    assert_eq!(parse_bytes("1KB"), Some(1024));
    assert_eq!(parse_bytes("1.5m"), Some(1024 * 1024 * 3 / 2));
    assert_eq!(parse_bytes("2g"), Some(2 * 1024 * 1024 * 1024));
    assert_eq!(parse_bytes("1t"), None);
    assert_eq!(parse_bytes("m"), None);
    assert_eq!(
        shlex_split(r#"a "b c" 'd e' f\ g "h\"i" "j\k""#).unwrap(),
        vec!["a", "b c", "d e", "f g", "h\"i", "j\\k"]
    );
    assert_eq!(shlex_split("  ").unwrap(), Vec::<String>::new());
    assert_eq!(shlex_split("''").unwrap(), vec![""]);
    assert!(shlex_split("'open").is_none());
}

#[test]
fn hash_is_stable_and_order_independent() {
    let a = serde_json::json!({"b": 1, "a": [1, {"y": 2, "x": 3}]});
    let b = serde_json::json!({"a": [1, {"x": 3, "y": 2}], "b": 1});
    assert_eq!(config_hash(&a), config_hash(&b));
    assert_eq!(config_hash(&a).len(), 16);
    let c = serde_json::json!({"a": [1, {"x": 3, "y": 2}], "b": 2});
    assert_ne!(config_hash(&a), config_hash(&c));
    // FNV-1a 64 of "" is the offset basis.
    assert_eq!(config_hash(&serde_json::json!("")), {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in b"\"\"" {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        format!("{h:016x}")
    });
}

/// What each isolation switch gates: refused by default naming the key and the switch,
/// planned once the switch is on.
#[test]
fn isolation_switches() {
    let cases = [
        ("services: {a: {image: x, network_mode: host}}", "allow_host_namespaces"),
        ("services: {a: {image: x, pid: host}}", "allow_host_namespaces"),
        ("services: {a: {image: x, ipc: host}}", "allow_host_namespaces"),
        ("services: {a: {image: x, networks: [h]}}\nnetworks: {h: {external: {name: host}}}", "allow_host_namespaces"),
        ("services: {a: {image: x, network_mode: bridge}}", "allow_shared_resources"),
        ("services: {a: {image: x, network_mode: \"container:other\"}}", "allow_shared_resources"),
        ("services: {a: {image: x}}\nvolumes: {v: {driver_opts: {type: none, o: bind, device: /}}}", "allow_volume_drivers"),
        ("services: {a: {image: x}}\nvolumes: {v: {driver: sshfs}}", "allow_volume_drivers"),
        ("services: {a: {image: x, networks: [n]}}\nnetworks: {n: {driver: macvlan}}", "allow_network_options"),
        ("services: {a: {image: x, networks: [n]}}\nnetworks: {n: {driver_opts: {com.docker.network.bridge.name: eth0}}}", "allow_network_options"),
        ("services: {a: {image: x, networks: [n]}}\nnetworks: {n: {ipam: {config: [{subnet: 198.18.9.0/24}]}}}", "allow_network_options"),
        ("services: {a: {image: x, logging: {driver: syslog, options: {syslog-address: \"udp://198.18.0.1:514\"}}}}", "allow_logging_drivers"),
    ];
    for (yaml, switch) in cases {
        let e = plan_with(yaml, &ComposePolicy::default()).unwrap_err();
        assert!(matches!(e, ComposeError::Policy { .. }), "{yaml}: {e:?}");
        assert!(
            e.to_string().contains(&format!("apps.{switch}")),
            "{yaml}: {e}"
        );
        plan_with(yaml, &permissive()).unwrap_or_else(|e| panic!("{yaml}: {e}"));
    }
    // A container of the app itself is its service's network.
    let own = "services: {a: {image: x}, b: {image: x, network_mode: \"container:demo_a_1\"}}";
    let p = plan_with(own, &ComposePolicy::default()).unwrap();
    assert_eq!(p.service("b").unwrap().network_of.as_deref(), Some("a"));
    // Local logging and plain bridge networks need no switch.
    plan_with("services: {a: {image: x, logging: {driver: journald}, networks: [n]}}\nnetworks: {n: {driver: bridge, internal: true}}\nvolumes: {v: {driver: local}}", &ComposePolicy::default()).unwrap();
}

#[test]
fn gantry_labels_and_ports() {
    for yaml in [
        "services: {a: {image: x, labels: {io.gantry.app-id: \"Other:1\"}}}",
        "services: {a: {image: x, networks: [n]}}\nnetworks: {n: {labels: [io.gantry.x=1]}}",
        "services: {a: {image: x}}\nvolumes: {v: {labels: {io.gantry.y: z}}}",
    ] {
        let e = plan_with(yaml, &permissive()).unwrap_err();
        assert!(e.to_string().contains("io.gantry."), "{yaml}: {e}");
    }
    let mut pol = ComposePolicy {
        reserved: vec![
            "127.0.0.1:54169".parse().unwrap(),
            "0.0.0.0:55436".parse().unwrap(),
        ],
        ..Default::default()
    };
    for bad in [
        "54169:80",
        "127.0.0.1:54169:80",
        "198.18.0.9:55436:80",
        "54000-55000:80",
    ] {
        let y = format!("services: {{a: {{image: x, ports: [\"{bad}\"]}}}}");
        let e = plan_with(&y, &pol).unwrap_err();
        assert!(
            e.to_string().contains("gantry's own listener"),
            "{bad}: {e}"
        );
    }
    for ok in ["198.18.0.9:54169:80", "54169:80/udp", "8080:80", "80"] {
        let y = format!("services: {{a: {{image: x, ports: [\"{ok}\"]}}}}");
        plan_with(&y, &pol).unwrap_or_else(|e| panic!("{ok}: {e}"));
    }
    pol.allowed_host_ports = vec![(8000, 8099)];
    pol.allowed_host_ips = vec!["127.0.0.1".parse().unwrap()];
    let y = |p: &str| format!("services: {{a: {{image: x, ports: [\"{p}\"]}}}}");
    plan_with(&y("127.0.0.1:8080:80"), &pol).unwrap();
    for (bad, key) in [
        ("127.0.0.1:9000:80", "allowed_host_ports"),
        ("8080:80", "allowed_host_ips"),
        ("127.0.0.1::80", "allowed_host_ports"),
    ] {
        let e = plan_with(&y(bad), &pol).unwrap_err();
        assert!(e.to_string().contains(key), "{bad}: {e}");
    }
}
