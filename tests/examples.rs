//! Runs every example in `examples/` (found by listing the directory, so new examples are
//! covered without touching this file), each against the local cluster it spawns itself
//! (`REDIS_CLUSTER_NODES` unset), and checks that it exits with status 0 and prints
//! something. An example still running after [`TIMEOUT`] is killed, with the
//! `redis-server` processes it started, and fails the test.
//!
//! The examples are built first with `cargo build --examples`, with the features and
//! profile this test was built with, into the same target directory (a no-op when
//! `cargo test` already built them). `REDCLUSTER_EXAMPLES=a,b` runs only those.

mod support;

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use redcluster::testkit::{LocalCluster, LocalClusterBuilder};

/// Longest time one example may run.
const TIMEOUT: Duration = Duration::from_secs(120);

/// The names of the examples: `examples/NAME.rs` and `examples/NAME/main.rs`.
fn example_names() -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            if path.is_dir() {
                path.join("main.rs").is_file().then_some(())?;
                return Some(path.file_name()?.to_str()?.to_string());
            }
            (path.extension()? == "rs").then_some(())?;
            Some(path.file_stem()?.to_str()?.to_string())
        })
        .collect();
    names.sort();
    if let Ok(only) = std::env::var("REDCLUSTER_EXAMPLES") {
        let only: Vec<&str> = only.split(',').map(str::trim).collect();
        names.retain(|n| only.contains(&n.as_str()));
    }
    names
}

/// The target directory and profile directory (`target/debug`) this test binary was
/// built into: it lives in `<target>/<profile>/deps/`.
fn target_dirs() -> (PathBuf, PathBuf) {
    let exe = std::env::current_exe().expect("the test binary's path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test binary is in <target>/<profile>/deps")
        .to_path_buf();
    let target_dir = profile_dir
        .parent()
        .expect("the profile directory is in the target directory")
        .to_path_buf();
    (target_dir, profile_dir)
}

/// `cargo build --examples` with this test's features and profile.
fn build_examples(target_dir: &Path, profile_dir: &Path) {
    let mut features = Vec::new();
    if cfg!(feature = "testkit") {
        features.push("testkit");
    }
    if cfg!(feature = "native-roots") {
        features.push("native-roots");
    }
    let mut build = Command::new(env!("CARGO"));
    build
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["build", "--examples", "--quiet"])
        .env("CARGO_TARGET_DIR", target_dir);
    if !features.is_empty() {
        build.args(["--features", &features.join(",")]);
    }
    match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => {}
        Some("release") => {
            build.arg("--release");
        }
        Some(other) => {
            build.args(["--profile", other]);
        }
    }
    let status = build.status().expect("running cargo build --examples");
    assert!(status.success(), "cargo build --examples failed: {status}");
}

/// Reads a pipe to the end on its own thread, so a chatty child never blocks.
fn drain(pipe: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut out = Vec::new();
        let mut pipe = pipe;
        let _ = pipe.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    })
}

/// Kills the example and everything it started (its `redis-server` nodes share its
/// process group), so a hung example leaves nothing running.
fn kill_group(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", child.id())])
        .status();
    let _ = child.kill();
    let _ = child.wait();
}

/// Runs one example with `env` set (and nothing else of the `REDIS_*` variables the
/// examples read); `Err` says why it failed.
fn run_example(binary: &Path, env: &[(&str, String)]) -> Result<(Duration, String), String> {
    let started = Instant::now();
    let mut command = Command::new(binary);
    for var in [
        "REDIS_CLUSTER_NODES",
        "REDIS_ADDRESS_REMAP",
        "REDIS_PASSWORD",
        "REDIS_USERNAME",
        "REDIS_TLS",
        "REDIS_TLS_CA",
        "REDIS_TLS_CERT",
        "REDIS_TLS_KEY",
        "REDIS_TLS_SERVER_NAME",
        "REDIS_RENAMED_COMMANDS",
    ] {
        command.env_remove(var);
    }
    let mut child = command
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
    let stdout = drain(child.stdout.take().expect("piped stdout"));
    let stderr = drain(child.stderr.take().expect("piped stderr"));
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if started.elapsed() > TIMEOUT => {
                kill_group(&mut child);
                break None;
            }
            Ok(None) => thread::sleep(Duration::from_millis(50)),
            Err(e) => return Err(format!("waiting for the example: {e}")),
        }
    };
    let elapsed = started.elapsed();
    let (stdout, stderr) = (
        stdout.join().unwrap_or_default(),
        stderr.join().unwrap_or_default(),
    );
    let tail = |s: &str| {
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    };
    match status {
        None => Err(format!(
            "killed after {TIMEOUT:?}\n--- stdout (end)\n{}\n--- stderr (end)\n{}",
            tail(&stdout),
            tail(&stderr)
        )),
        Some(status) if !status.success() => Err(format!(
            "exited with {status}\n--- stdout (end)\n{}\n--- stderr (end)\n{}",
            tail(&stdout),
            tail(&stderr)
        )),
        Some(_) if stdout.trim().is_empty() => Err(format!(
            "printed nothing on stdout\n--- stderr (end)\n{}",
            tail(&stderr)
        )),
        Some(_) => Ok((elapsed, stdout)),
    }
}

#[test]
fn every_example_runs_against_a_local_cluster() {
    let names = example_names();
    assert!(!names.is_empty(), "no examples found");
    let (target_dir, profile_dir) = target_dirs();
    build_examples(&target_dir, &profile_dir);

    let mut failures = Vec::new();
    for name in &names {
        let binary = profile_dir.join("examples").join(name);
        match run_example(&binary, &[]) {
            Ok((elapsed, stdout)) => eprintln!(
                "example {name}: ok in {:.1} s, {} lines of output",
                elapsed.as_secs_f64(),
                stdout.lines().count()
            ),
            Err(why) => {
                eprintln!("example {name}: FAILED: {why}");
                failures.push(format!("{name}: {why}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} examples failed:\n\n{}",
        failures.len(),
        names.len(),
        failures.join("\n\n")
    );
}

/// The examples built, and a 3-master cluster started with `configure`: the quickstart
/// binary, the runtime the cluster lives on, and the cluster.
fn quickstart_and_cluster(
    configure: impl FnOnce(LocalClusterBuilder) -> LocalClusterBuilder,
) -> (PathBuf, tokio::runtime::Runtime, LocalCluster) {
    let (target_dir, profile_dir) = target_dirs();
    build_examples(&target_dir, &profile_dir);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let builder = LocalCluster::builder().masters(3).replicas_per_master(0);
    let local = runtime.block_on(configure(builder).start()).unwrap();
    let binary = profile_dir.join("examples").join("quickstart");
    (binary, runtime, local)
}

/// The examples reach a cluster whose nodes announce host names the machine cannot
/// reach (as the `docker/` nodes do, `redis-cluster-N:6379`) through
/// `REDIS_CLUSTER_NODES` and `REDIS_ADDRESS_REMAP`, the way `docker/README.md` tells
/// users to run them from the host. The names are loopback addresses nothing listens on
/// (the nodes listen on 127.0.0.1 only): names for a resolver would send DNS queries
/// off the machine when dialled without the remap.
#[test]
fn an_example_reaches_announced_host_names_through_the_environment_remap() {
    let (binary, runtime, local) = quickstart_and_cluster(|b| b);
    let remap = runtime.block_on(support::announce_hostnames(&local, 3, |i| {
        format!("127.0.0.{}", i + 2)
    }));
    let pairs: Vec<String> = remap
        .iter()
        .map(|(from, to)| format!("{from}={to}"))
        .collect();
    let env = [
        ("REDIS_CLUSTER_NODES", local.seeds().join(",")),
        ("REDIS_ADDRESS_REMAP", pairs.join(",")),
        // Set but empty, as a deployment's template may leave them: unset, as in a URL
        // (the cluster has no password).
        ("REDIS_USERNAME", String::new()),
        ("REDIS_PASSWORD", String::new()),
    ];
    let (elapsed, stdout) = run_example(&binary, &env).unwrap_or_else(|why| panic!("{why}"));
    eprintln!(
        "quickstart through the remap: {:.1} s",
        elapsed.as_secs_f64()
    );
    assert!(
        stdout.contains("using the cluster in REDIS_CLUSTER_NODES"),
        "{stdout}"
    );
    // Without the remap the client learns names it cannot reach, and says so.
    let started = Instant::now();
    let err = run_example(&binary, &env[..1]).unwrap_err();
    eprintln!(
        "without the remap: failed in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(err.contains("exited with"), "{err}");
    // The example prints the nodes it knows on stdout: the error itself is on stderr.
    let (_, stderr) = err.split_once("--- stderr").expect("the example's stderr");
    assert!(
        remap
            .keys()
            .any(|announced| stderr.contains(announced.as_str())),
        "the error names none of {:?}: {err}",
        remap.keys()
    );
}

/// The examples reach a mutual-TLS cluster that wants a password, configured by the
/// environment alone (`REDIS_TLS*`, `REDIS_USERNAME`, `REDIS_PASSWORD`), as a deployment
/// would configure a service.
#[test]
fn an_example_reaches_a_tls_cluster_with_a_password_through_the_environment() {
    let (binary, _runtime, local) =
        quickstart_and_cluster(|b| b.tls(true).config("requirepass", "env-secret"));
    let path = |p: Option<&Path>| p.unwrap().to_string_lossy().into_owned();
    let env = [
        ("REDIS_CLUSTER_NODES", local.seeds().join(",")),
        ("REDIS_TLS", "true".to_owned()),
        ("REDIS_TLS_CA", path(local.ca_cert_path())),
        ("REDIS_TLS_CERT", path(local.client_cert_path())),
        ("REDIS_TLS_KEY", path(local.client_key_path())),
        ("REDIS_USERNAME", "default".to_owned()),
        ("REDIS_PASSWORD", "env-secret".to_owned()),
    ];
    let (elapsed, stdout) = run_example(&binary, &env).unwrap_or_else(|why| panic!("{why}"));
    eprintln!("quickstart over TLS: {:.1} s", elapsed.as_secs_f64());
    assert!(
        stdout.contains("using the cluster in REDIS_CLUSTER_NODES"),
        "{stdout}"
    );
    // Each variable counts: without the password, or without the client certificate
    // the nodes require, the example fails.
    for (missing, why) in [
        ("REDIS_PASSWORD", "Auth("),
        ("REDIS_TLS_CERT", "no client certificate"),
    ] {
        let fewer: Vec<(&str, String)> = env
            .iter()
            .filter(|(k, _)| {
                *k != missing && (missing != "REDIS_TLS_CERT" || *k != "REDIS_TLS_KEY")
            })
            .cloned()
            .collect();
        let err = run_example(&binary, &fewer).unwrap_err();
        assert!(
            err.contains("exited with") && err.contains(why),
            "without {missing}: {err}"
        );
        assert!(!err.contains("env-secret"), "the password leaked: {err}");
    }
}
