//! The compose files in `docker/` against the seed's deployment. No Docker engine is
//! needed: the files are parsed and merged the way `docker compose -f base -f override`
//! merges them, and each environment's effective settings are checked: six nodes, their
//! cluster flags, ports, health checks, the init service, and the staging and production
//! memory, persistence, auth, TLS and resource settings.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_norway::value::Tag;
use serde_norway::{Mapping, Value};

const NODES: usize = 6;
const TLS_DIR: &str = "/etc/redis/tls/";

fn docker_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("docker")
}

fn read(name: &str) -> String {
    let path = docker_dir().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// One compose file, with its `<<` merge keys resolved (Compose resolves them per file,
/// before merging files).
fn load(name: &str) -> Value {
    let mut value: Value =
        serde_norway::from_str(&read(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    value
        .apply_merge()
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    value
}

/// Merges `over` into `base` by the Compose rules: mappings merge key by key; `command`,
/// `entrypoint` and `healthcheck.test` are replaced; `ports` and `volumes` keep one entry
/// per unique key; other sequences append; `!override` replaces and `!reset` removes.
fn merge(base: &mut Value, over: &Value, path: &[&str]) {
    match (base, over) {
        (Value::Mapping(base), Value::Mapping(over)) => {
            for (key, value) in over {
                let name = key.as_str().expect("mapping keys are strings");
                let mut child: Vec<&str> = path.to_vec();
                child.push(name);
                match value {
                    Value::Tagged(t) if t.tag == Tag::new("reset") => {
                        base.remove(key);
                    }
                    Value::Tagged(t) if t.tag == Tag::new("override") => {
                        base.insert(key.clone(), t.value.clone());
                    }
                    _ => match base.get_mut(key) {
                        Some(existing) => merge(existing, value, &child),
                        None => {
                            base.insert(key.clone(), value.clone());
                        }
                    },
                }
            }
        }
        (Value::Sequence(base), Value::Sequence(over)) => {
            let last = path.last().copied().unwrap_or("");
            let in_service = path.len() == 3 && path[0] == "services";
            if in_service && (last == "command" || last == "entrypoint")
                || path.ends_with(&["healthcheck", "test"])
            {
                *base = over.clone();
            } else if in_service && (last == "ports" || last == "volumes") {
                let key = if last == "ports" {
                    port_key
                } else {
                    volume_target
                };
                for entry in over {
                    base.retain(|old| key(old) != key(entry));
                    base.push(entry.clone());
                }
            } else {
                base.extend(over.iter().cloned());
            }
        }
        (base, over) => *base = over.clone(),
    }
}

/// Compose's unique key for a port is {ip, target, published, protocol}: the short
/// syntax string as written.
fn port_key(v: &Value) -> String {
    scalar(v)
}

/// Compose's unique key for a volume is its target path.
fn volume_target(v: &Value) -> String {
    match v {
        Value::Mapping(m) => scalar(m.get("target").expect("long-syntax volume without target")),
        short => {
            let s = scalar(short);
            s.split(':')
                .nth(1)
                .unwrap_or_else(|| panic!("volume without target: {s}"))
                .to_string()
        }
    }
}

/// The effective configuration of `base` followed by `overrides`, like
/// `docker compose -f base -f override... config` (without interpolation).
fn effective(overrides: &[&str]) -> Value {
    let mut config = load("docker-compose.base.yml");
    for name in overrides {
        merge(&mut config, &load(name), &[]);
    }
    config
}

/// A scalar as the string Compose would pass on (numbers and booleans included).
fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Tagged(t) => scalar(&t.value),
        other => panic!("expected a scalar, got {other:?}"),
    }
}

fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::Sequence(items) => items.iter().map(scalar).collect(),
        Value::Tagged(t) => strings(&t.value),
        other => panic!("expected a sequence, got {other:?}"),
    }
}

fn get<'a>(v: &'a Value, path: &[&str]) -> &'a Value {
    let mut cur = v;
    for (i, key) in path.iter().enumerate() {
        cur = match cur {
            Value::Tagged(t) => &t.value,
            other => other,
        };
        cur = cur
            .get(*key)
            .unwrap_or_else(|| panic!("missing `{}`", path[..=i].join(".")));
    }
    cur
}

fn try_get<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    let mut cur = v;
    for key in path {
        cur = cur.get(*key)?;
    }
    Some(cur)
}

fn node_name(n: usize) -> String {
    format!("redis-cluster-{n}")
}

fn service<'a>(config: &'a Value, name: &str) -> &'a Value {
    get(config, &["services", name])
}

/// What the container runs: entrypoint, then command (Docker appends one to the other).
fn argv(svc: &Value) -> Vec<String> {
    let mut argv = try_get(svc, &["entrypoint"])
        .map(strings)
        .unwrap_or_default();
    argv.extend(try_get(svc, &["command"]).map(strings).unwrap_or_default());
    argv
}

/// The value redis-server ends up with for `--name`: the last one given, as Redis applies
/// command-line options in order.
fn flag<'a>(argv: &'a [String], name: &str) -> Option<&'a str> {
    argv.windows(2)
        .rev()
        .find(|w| w[0] == name)
        .map(|w| w[1].as_str())
}

fn expect_flag(argv: &[String], svc: &str, name: &str, want: &str) {
    assert_eq!(flag(argv, name), Some(want), "{svc}: `{name}` in {argv:?}");
}

/// Every string anywhere in a value (for paths referenced from health checks and env).
fn all_strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Sequence(items) => items.iter().for_each(|i| all_strings(i, out)),
        Value::Mapping(m) => m.iter().for_each(|(k, v)| {
            all_strings(k, out);
            all_strings(v, out);
        }),
        Value::Tagged(t) => all_strings(&t.value, out),
        _ => {}
    }
}

struct Env {
    /// The port clients use inside the network: what the init service dials.
    client_port: u16,
    /// The effective `cluster-announce-port` (prod announces no plaintext port).
    announce_port: &'static str,
}

/// The checks every environment must pass on its effective configuration.
fn check_topology(config: &Value, env: &Env) {
    let services = get(config, &["services"])
        .as_mapping()
        .expect("services is a mapping");
    let names: BTreeSet<String> = services.keys().map(scalar).collect();
    let mut want: BTreeSet<String> = (0..NODES).map(node_name).collect();
    want.insert("redis-cluster-init".into());
    assert_eq!(names, want, "services");

    let image = scalar(get(service(config, "redis-cluster-0"), &["image"]));
    assert!(
        image == "redis:7" || image.starts_with("redis:7-"),
        "image {image}"
    );

    let declared_volumes = get(config, &["volumes"])
        .as_mapping()
        .expect("top-level volumes");
    let network = get(config, &["networks", "redis-cluster", "ipam", "config"]);
    let subnet = scalar(get(&network[0], &["subnet"]));
    let ip_range = scalar(get(&network[0], &["ip_range"]));

    let mut host_ports = BTreeSet::new();
    let mut data_volumes = BTreeSet::new();
    let mut addresses = BTreeSet::new();
    for n in 0..NODES {
        let name = node_name(n);
        let svc = service(config, &name);
        assert_eq!(
            scalar(get(svc, &["image"])),
            image,
            "{name}: one image for all nodes"
        );

        // The cluster flags, identical on every node but for the announced name.
        let argv = argv(svc);
        assert_eq!(
            argv[..2],
            ["docker-entrypoint.sh", "redis-server"],
            "{name}: {argv:?}"
        );
        expect_flag(&argv, &name, "--cluster-enabled", "yes");
        expect_flag(&argv, &name, "--cluster-config-file", "nodes.conf");
        expect_flag(&argv, &name, "--cluster-node-timeout", "5000");
        expect_flag(&argv, &name, "--cluster-port", "16379");
        expect_flag(&argv, &name, "--cluster-announce-bus-port", "16379");
        expect_flag(&argv, &name, "--cluster-announce-port", env.announce_port);
        expect_flag(&argv, &name, "--cluster-announce-hostname", &name);
        expect_flag(
            &argv,
            &name,
            "--cluster-preferred-endpoint-type",
            "hostname",
        );
        // An IP-valued flag holding a name is what the hostname flags replace.
        assert_eq!(flag(&argv, "--cluster-announce-ip"), None, "{name}");

        // Node N is 127.0.0.1:645N on the host, and nothing else.
        let ports = strings(get(svc, &["ports"]));
        assert_eq!(
            ports,
            [format!("127.0.0.1:645{n}:{}", env.client_port)],
            "{name}: ports"
        );
        let published: u16 = ports[0]
            .split(':')
            .nth(1)
            .and_then(|p| p.parse().ok())
            .expect("host port");
        assert!(
            host_ports.insert(published),
            "{name}: host port {published} reused"
        );

        let test = strings(get(svc, &["healthcheck", "test"])).join(" ");
        assert!(
            test.contains("redis-cli") && test.contains("ping"),
            "{name}: health check {test}"
        );
        assert!(
            test.contains("PONG"),
            "{name}: redis-cli exits 0 on errors; match PONG"
        );
        assert!(
            try_get(svc, &["healthcheck", "interval"]).is_some(),
            "{name}: health check interval"
        );

        let volumes = short_volumes(svc);
        let data = volumes
            .iter()
            .find(|v| v.ends_with(":/data"))
            .unwrap_or_else(|| panic!("{name}: no /data volume"));
        let volume = data.trim_end_matches(":/data").to_string();
        assert!(
            declared_volumes.contains_key(volume.as_str()),
            "{name}: volume {volume} not declared"
        );
        assert!(data_volumes.insert(volume), "{name}: data volume shared");

        // A fixed address in the subnet, outside the range Docker hands out dynamically.
        let ip = scalar(get(svc, &["networks", "redis-cluster", "ipv4_address"]));
        assert!(
            in_cidr(&ip, &subnet) && !in_cidr(&ip, &ip_range),
            "{name}: {ip} vs {subnet} / {ip_range}"
        );
        assert!(addresses.insert(ip), "{name}: address reused");
    }
    assert_eq!(
        host_ports,
        (6450..6456).collect::<BTreeSet<u16>>(),
        "host ports"
    );

    // The init service: all six nodes, masters first, once all of them are healthy.
    let init = service(config, "redis-cluster-init");
    assert_eq!(
        scalar(get(init, &["image"])),
        image,
        "init: same image (its redis-cli)"
    );
    let nodes = strings(get(init, &["command"]));
    let want: Vec<String> = (0..NODES)
        .map(|n| format!("{}:{}", node_name(n), env.client_port))
        .collect();
    assert_eq!(nodes, want, "init: node list");
    let depends = get(init, &["depends_on"])
        .as_mapping()
        .expect("depends_on as a mapping");
    assert_eq!(depends.len(), NODES, "init: depends_on");
    for n in 0..NODES {
        let condition = scalar(get(init, &["depends_on", &node_name(n), "condition"]));
        assert_eq!(
            condition,
            "service_healthy",
            "init: depends_on {}",
            node_name(n)
        );
    }
    let entry = strings(get(init, &["entrypoint"]));
    let script = entry.last().expect("init entrypoint");
    let volumes = short_volumes(init);
    assert!(
        volumes
            .iter()
            .any(|v| v.starts_with("./cluster-init.sh:") && v.contains(&format!(":{script}"))),
        "init: {script} is not docker/cluster-init.sh: {volumes:?}"
    );
    assert!(get(init, &["networks"])
        .as_sequence()
        .is_some_and(|n| n.iter().any(|n| n == "redis-cluster")));
}

/// A service's short-syntax (`source:target[:mode]`) volumes.
fn short_volumes(svc: &Value) -> Vec<String> {
    let volumes = get(svc, &["volumes"])
        .as_sequence()
        .expect("volumes is a sequence");
    volumes
        .iter()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect()
}

/// `ip` inside `cidr` (IPv4 only).
fn in_cidr(ip: &str, cidr: &str) -> bool {
    let parse = |s: &str| -> u32 {
        u32::from(
            s.parse::<std::net::Ipv4Addr>()
                .unwrap_or_else(|e| panic!("{s}: {e}")),
        )
    };
    let (net, bits) = cidr.split_once('/').expect("CIDR");
    let bits: u32 = bits.parse().expect("prefix length");
    let mask = if bits == 0 {
        0
    } else {
        u32::MAX << (32 - bits)
    };
    parse(ip) & mask == parse(net) & mask
}

fn resources(svc: &Value) -> BTreeMap<&'static str, String> {
    let r = |path: &[&str]| scalar(get(svc, &[&["deploy", "resources"][..], path].concat()));
    BTreeMap::from([
        ("limits.cpus", r(&["limits", "cpus"])),
        ("limits.memory", r(&["limits", "memory"])),
        ("reservations.cpus", r(&["reservations", "cpus"])),
        ("reservations.memory", r(&["reservations", "memory"])),
    ])
}

fn expected_resources(
    limits: (&str, &str),
    reservations: (&str, &str),
) -> BTreeMap<&'static str, String> {
    BTreeMap::from([
        ("limits.cpus", limits.0.to_string()),
        ("limits.memory", limits.1.to_string()),
        ("reservations.cpus", reservations.0.to_string()),
        ("reservations.memory", reservations.1.to_string()),
    ])
}

#[test]
fn base_is_the_seeds_six_node_cluster() {
    let config = effective(&[]);
    check_topology(
        &config,
        &Env {
            client_port: 6379,
            announce_port: "6379",
        },
    );
    for n in 0..NODES {
        let argv = argv(service(&config, &node_name(n)));
        // Development: no memory cap, persistence or auth of its own.
        for absent in ["--maxmemory", "--requirepass", "--tls-port"] {
            assert_eq!(flag(&argv, absent), None, "{}: {absent}", node_name(n));
        }
    }
}

#[test]
fn staging_adds_memory_persistence_and_limits() {
    let config = effective(&["docker-compose.staging.yml"]);
    check_topology(
        &config,
        &Env {
            client_port: 6379,
            announce_port: "6379",
        },
    );
    for n in 0..NODES {
        let name = node_name(n);
        let svc = service(&config, &name);
        let argv = argv(svc);
        expect_flag(&argv, &name, "--maxmemory", "512mb");
        expect_flag(&argv, &name, "--maxmemory-policy", "allkeys-lru");
        expect_flag(&argv, &name, "--appendonly", "yes");
        expect_flag(&argv, &name, "--appendfsync", "everysec");
        assert_eq!(
            resources(svc),
            expected_resources(("0.5", "512M"), ("0.25", "256M")),
            "{name}"
        );
    }
}

#[test]
fn prod_adds_auth_tls_persistence_and_limits() {
    let config = effective(&["docker-compose.prod.yml"]);
    check_topology(
        &config,
        &Env {
            client_port: 6380,
            announce_port: "0",
        },
    );
    let script = read("gen-certs.sh");
    let password_ref = "${REDIS_PASSWORD:?";

    for n in 0..NODES {
        let name = node_name(n);
        let svc = service(&config, &name);
        let argv = argv(svc);
        expect_flag(&argv, &name, "--maxmemory", "1gb");
        expect_flag(&argv, &name, "--maxmemory-policy", "allkeys-lru");
        expect_flag(&argv, &name, "--appendonly", "yes");
        expect_flag(&argv, &name, "--appendfsync", "everysec");
        expect_flag(&argv, &name, "--save", "900 1 300 10 60 10000");

        // One password, required from the environment; replicas use it on their masters.
        let password =
            flag(&argv, "--requirepass").unwrap_or_else(|| panic!("{name}: requirepass"));
        assert!(
            password.starts_with(password_ref),
            "{name}: requirepass {password}"
        );
        expect_flag(&argv, &name, "--masterauth", password);
        assert_eq!(
            scalar(get(svc, &["environment", "REDISCLI_AUTH"])),
            password,
            "{name}"
        );

        // TLS only, everywhere: clients, replication, the bus.
        expect_flag(&argv, &name, "--port", "0");
        expect_flag(&argv, &name, "--tls-port", "6380");
        expect_flag(&argv, &name, "--cluster-announce-tls-port", "6380");
        expect_flag(&argv, &name, "--tls-cluster", "yes");
        expect_flag(&argv, &name, "--tls-replication", "yes");
        for file_flag in ["--tls-cert-file", "--tls-key-file", "--tls-ca-cert-file"] {
            let path = flag(&argv, file_flag).unwrap_or_else(|| panic!("{name}: {file_flag}"));
            assert!(path.starts_with(TLS_DIR), "{name}: {file_flag} {path}");
        }
        let test = strings(get(svc, &["healthcheck", "test"])).join(" ");
        assert!(
            test.contains("--tls") && test.contains("-p 6380"),
            "{name}: health check {test}"
        );

        check_tls_mounts(svc, &name, &script);
        assert_eq!(
            resources(svc),
            expected_resources(("1", "1G"), ("0.5", "512M")),
            "{name}"
        );
    }

    let init = service(&config, "redis-cluster-init");
    let opts = scalar(get(init, &["environment", "REDIS_CLI_OPTS"]));
    assert!(opts.contains("--tls"), "init: REDIS_CLI_OPTS {opts}");
    assert!(scalar(get(init, &["environment", "REDISCLI_AUTH"])).starts_with(password_ref));
    check_tls_mounts(init, "redis-cluster-init", &script);
}

/// Every `/etc/redis/tls/...` path a service mentions (flags, health check, environment)
/// is mounted read-only from `docker/tls/` under the same file name, that name is one
/// gen-certs.sh writes, and the CA's key is never mounted.
fn check_tls_mounts(svc: &Value, name: &str, script: &str) {
    let mut texts = Vec::new();
    all_strings(svc, &mut texts);
    let referenced: BTreeSet<String> = texts
        .iter()
        .flat_map(|t| t.split(|c: char| c.is_whitespace() || c == '"' || c == '\''))
        .filter(|w| w.starts_with(TLS_DIR))
        .map(str::to_string)
        .collect();
    assert!(!referenced.is_empty(), "{name}: references no TLS file");

    let mounts: BTreeMap<String, &Mapping> = get(svc, &["volumes"])
        .as_sequence()
        .expect("volumes")
        .iter()
        .filter_map(Value::as_mapping)
        .map(|m| (scalar(m.get("target").expect("target")), m))
        .collect();
    for path in &referenced {
        let file = path.trim_start_matches(TLS_DIR);
        let mount = mounts
            .get(path)
            .unwrap_or_else(|| panic!("{name}: {path} is not mounted"));
        assert_eq!(
            scalar(mount.get("type").expect("type")),
            "bind",
            "{name}: {path}"
        );
        assert_eq!(
            scalar(mount.get("source").expect("source")),
            format!("./tls/{file}"),
            "{name}: {path}"
        );
        assert_eq!(
            mount.get("read_only"),
            Some(&Value::Bool(true)),
            "{name}: {path} read-only"
        );
        assert!(
            script.contains(file),
            "{name}: gen-certs.sh does not make {file}"
        );
    }
    for mount in mounts.values() {
        let source = scalar(mount.get("source").expect("source"));
        assert!(!source.ends_with("ca.key"), "{name}: mounts the CA key");
    }
}

/// Runs gen-certs.sh into a scratch folder and checks it makes every file the production
/// file mounts, with the SANs clients dial. Needs openssl (`scripts/test.sh` installs it
/// where missing).
#[test]
fn gen_certs_makes_what_prod_mounts() {
    assert!(
        Command::new("openssl").arg("version").output().is_ok(),
        "openssl not found: gen-certs.sh cannot run (apt-get install openssl)"
    );
    let config = effective(&["docker-compose.prod.yml"]);
    let mut wanted = BTreeSet::new();
    for name in (0..NODES)
        .map(node_name)
        .chain(["redis-cluster-init".to_string()])
    {
        for volume in get(service(&config, &name), &["volumes"])
            .as_sequence()
            .unwrap()
        {
            if let Some(source) = volume.get("source") {
                wanted.insert(scalar(source).trim_start_matches("./tls/").to_string());
            }
        }
    }
    assert_eq!(wanted.len(), 5, "{wanted:?}");

    let scratch =
        Scratch(std::env::temp_dir().join(format!("redcluster-gen-certs-{}", std::process::id())));
    let out = &scratch.0;
    let _ = std::fs::remove_dir_all(out);
    let run = Command::new("sh")
        .arg(docker_dir().join("gen-certs.sh"))
        .env("GEN_CERTS_DIR", out)
        .output()
        .expect("run gen-certs.sh");
    assert!(
        run.status.success(),
        "gen-certs.sh: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    for file in &wanted {
        assert!(out.join(file).is_file(), "gen-certs.sh did not make {file}");
    }
    let text = Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(out.join("redis.crt"))
        .output()
        .expect("openssl x509");
    let text = String::from_utf8_lossy(&text.stdout);
    for n in 0..NODES {
        assert!(
            text.contains(&format!("DNS:{}", node_name(n))),
            "redis.crt lacks {}",
            node_name(n)
        );
    }
    assert!(
        text.contains("DNS:localhost") && text.contains("IP Address:127.0.0.1"),
        "{text}"
    );
    // Nodes present this certificate to each other as clients (tls-cluster, tls-replication).
    assert!(
        text.contains("TLS Web Server Authentication, TLS Web Client Authentication"),
        "{text}"
    );
}

/// A scratch folder, removed when dropped, also when an assertion fails.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The merge itself, on the cases the files depend on: without `!override` the prod ports
/// would be added to the base ones, and `command` replaces rather than appends.
#[test]
fn merge_follows_compose_rules() {
    let base: Value = serde_norway::from_str(
        "services: {a: {command: [x], ports: ['1:1'], volumes: [{target: /t, source: a}], healthcheck: {test: [t], interval: 1s}}}",
    )
    .unwrap();
    let over: Value = serde_norway::from_str(
        "services: {a: {command: [y], ports: ['2:1'], volumes: [{target: /t, source: b}], healthcheck: {test: [u]}}}",
    )
    .unwrap();
    let mut merged = base.clone();
    merge(&mut merged, &over, &[]);
    let a = service(&merged, "a");
    assert_eq!(strings(get(a, &["command"])), ["y"]);
    assert_eq!(strings(get(a, &["ports"])), ["1:1", "2:1"]);
    assert_eq!(get(a, &["volumes"]).as_sequence().unwrap().len(), 1);
    assert_eq!(scalar(get(a, &["volumes"])[0].get("source").unwrap()), "b");
    assert_eq!(strings(get(a, &["healthcheck", "test"])), ["u"]);
    assert_eq!(scalar(get(a, &["healthcheck", "interval"])), "1s");

    let over: Value = serde_norway::from_str("services: {a: {ports: !override ['2:1']}}").unwrap();
    let mut merged = base;
    merge(&mut merged, &over, &[]);
    assert_eq!(strings(get(service(&merged, "a"), &["ports"])), ["2:1"]);
}
