//! Secrets stay secret: passwords, private keys and credentials providers never show in
//! `Debug` output, error messages or `tracing` output (captured at TRACE level), whatever
//! fails. Runs against a real TLS cluster with `requirepass` (the testkit), on 127.0.0.1.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use redcluster::testkit::LocalCluster;
use redcluster::{
    cmd, ClusterClient, ConnectOptions, CredentialsProvider, Error, NodeConnection, Secret,
    TlsConfig, Value,
};

const PASSWORD: &str = "Pa55-cluster-Zq81xv";
const WRONG_PASSWORD: &str = "Wr0ng-guess-Kd72mp";
const APP_PASSWORD: &str = "App-pa55-Hs93nt";
const PROVIDER_PASSWORD: &str = "Pr0vider-pa55-Lw45cj";

/// Everything `tracing` printed in this test binary, at every level.
fn captured() -> &'static Arc<Mutex<Vec<u8>>> {
    static BUFFER: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    BUFFER.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let writer = Arc::clone(&buffer);
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || SharedWriter(Arc::clone(&writer)))
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("one subscriber");
        buffer
    })
}

struct SharedWriter(Arc<Mutex<Vec<u8>>>);

impl Write for SharedWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn captured_text() -> String {
    String::from_utf8_lossy(&captured().lock().unwrap()).into_owned()
}

/// The base64 lines of a PEM private key: none of them may show anywhere.
fn key_material(pem: &str) -> Vec<String> {
    let lines: Vec<String> = pem
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 16)
        .map(str::to_owned)
        .collect();
    assert!(!lines.is_empty(), "the key file has a body");
    lines
}

fn assert_clean(what: &str, text: &str, secrets: &[String]) {
    for secret in secrets {
        assert!(
            !text.contains(secret.as_str()),
            "{what} shows a secret ({} chars): {text}",
            secret.len()
        );
    }
    assert!(
        !text.contains("PRIVATE KEY"),
        "{what} shows a private key: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_show_in_debug_errors_or_traces() {
    captured();
    let local = LocalCluster::builder()
        .masters(3)
        .replicas_per_master(0)
        .tls(true)
        .config("requirepass", PASSWORD)
        .start()
        .await
        .unwrap();
    let key_pem = std::fs::read_to_string(local.client_key_path().unwrap()).unwrap();
    let cert_pem = std::fs::read_to_string(local.client_cert_path().unwrap()).unwrap();
    let mut secrets: Vec<String> = [PASSWORD, WRONG_PASSWORD, APP_PASSWORD, PROVIDER_PASSWORD]
        .map(str::to_owned)
        .to_vec();
    secrets.extend(key_material(&key_pem));

    // An ACL user, for a NOPERM error.
    for node in local.nodes() {
        let conn = local.connect_node(node.index).await.unwrap();
        let reply = conn
            .send(
                cmd("ACL")
                    .arg("SETUSER")
                    .arg("app")
                    .arg("on")
                    .arg(format!(">{APP_PASSWORD}"))
                    .arg("~app:*")
                    .arg("+@read")
                    .arg("+@write")
                    .arg("+cluster|shards"),
            )
            .await
            .unwrap();
        assert_eq!(reply, Value::Simple("OK".into()));
    }

    let tls = TlsConfig::new()
        .ca_cert_file(local.ca_cert_path().unwrap())
        .unwrap()
        .client_cert_pem(&cert_pem, &key_pem)
        .unwrap();
    let provider = CredentialsProvider::new(|| async {
        Ok((Some("default".to_owned()), Secret::new(PROVIDER_PASSWORD)))
    });
    let mut rendered: Vec<(String, String)> = Vec::new();
    let mut show = |what: &str, text: String| rendered.push((what.to_owned(), text));

    // Configuration objects.
    show("TlsConfig", format!("{tls:?}"));
    let builder = ClusterClient::builder()
        .nodes(local.seeds())
        .username("default")
        .password(WRONG_PASSWORD)
        .tls(tls.clone())
        .connect_timeout(Duration::from_secs(3))
        .response_timeout(Duration::from_secs(3));
    show("builder", format!("{builder:?}"));
    show(
        "builder with a provider",
        format!(
            "{:?}",
            builder.clone().credentials_provider(provider.clone())
        ),
    );
    show("CredentialsProvider", format!("{provider:?}"));
    let options = ConnectOptions::default()
        .password(PASSWORD)
        .tls(tls.clone())
        .credentials_provider(provider.clone());
    show("ConnectOptions", format!("{options:?}"));
    show(
        "Secret",
        format!("{:?} {}", Secret::new(PASSWORD), Secret::new(PASSWORD)),
    );
    show(
        "LocalClusterBuilder",
        format!(
            "{:?}",
            LocalCluster::builder()
                .tls(true)
                .config("requirepass", PASSWORD)
        ),
    );
    show("LocalCluster", format!("{local:?}"));

    // A session with the wrong password, then the right one.
    let err = builder.clone().build().await.unwrap_err();
    assert!(matches!(err, Error::Auth(_)), "{err:?}");
    show("wrong password error", format!("{err} {err:?}"));
    let client = builder.clone().password(PASSWORD).build().await.unwrap();
    client.set("k:1", "v").await.unwrap();
    let v: Option<String> = client.get("k:1").await.unwrap();
    assert_eq!(v.as_deref(), Some("v"));
    show("client", format!("{client:?}"));
    // A command the server does not know: its reply quotes the arguments (here as if
    // `CONFIG` were renamed and the client not told).
    let err = client
        .query::<Value>(
            cmd("CONFIG-UNKNOWN")
                .arg("SET")
                .arg("requirepass")
                .arg(PASSWORD),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Server(e) if e.message().contains("unknown command")),
        "{err:?}"
    );
    show("unknown command error", format!("{err} {err:?}"));
    // The provider's credentials.
    let via_provider = builder
        .clone()
        .credentials_provider(provider.clone())
        .build()
        .await;
    let err = via_provider.unwrap_err();
    assert!(matches!(err, Error::Auth(_)), "{err:?}");
    show("provider's wrong password error", format!("{err} {err:?}"));

    // NOPERM for an ACL user.
    let app = ClusterClient::builder()
        .nodes(local.seeds())
        .username("app")
        .password(APP_PASSWORD)
        .tls(tls.clone())
        .build()
        .await
        .unwrap();
    let err = app.set("other:1", "x").await.unwrap_err();
    assert_eq!(err.server_code(), Some("NOPERM"));
    show("NOPERM error", format!("{err} {err:?}"));

    // TLS failures: no client certificate, a name the certificate does not carry.
    let err = NodeConnection::connect(
        &local.node_addr(0),
        &ConnectOptions::default().password(PASSWORD).tls(
            TlsConfig::new()
                .ca_cert_file(local.ca_cert_path().unwrap())
                .unwrap(),
        ),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::Tls(_)), "{err:?}");
    show("TLS error (no client cert)", format!("{err} {err:?}"));
    let err = builder
        .clone()
        .password(PASSWORD)
        .tls(tls.clone().server_name("wrong.invalid"))
        .build()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Tls(_)), "{err:?}");
    show("TLS error (bad name)", format!("{err} {err:?}"));

    // Configuration errors around secrets.
    let err = ClusterClient::builder()
        .nodes([format!("redis://app:{PASSWORD}@host:notaport")])
        .build()
        .await
        .unwrap_err();
    show("seed URL error", format!("{err} {err:?}"));
    let truncated = &key_pem[..key_pem.len() / 2];
    let err = TlsConfig::new()
        .client_cert_pem(&cert_pem, truncated)
        .unwrap_err();
    show("truncated key error", format!("{err} {err:?}"));
    let other_key = rcgen::KeyPair::generate().unwrap().serialize_pem();
    secrets.extend(key_material(&other_key));
    let err = TlsConfig::new()
        .ca_cert_file(local.ca_cert_path().unwrap())
        .unwrap()
        .client_cert_pem(&cert_pem, &other_key)
        .unwrap()
        .server_name("localhost");
    let err = ClusterClient::builder()
        .nodes(local.seeds())
        .tls(err)
        .build()
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Config(m) if m.contains("does not belong")),
        "{err:?}"
    );
    show("mismatched key error", format!("{err} {err:?}"));

    // Dropped, the two clients' connections log their closing, error included: the
    // check below waits until a closing was logged for every node they were connected
    // to.
    let closings = || captured_text().matches("connection closed").count();
    let connected = |c: &ClusterClient| c.health().nodes.iter().filter(|n| n.connected).count();
    let open = connected(&client) + connected(&app);
    assert!(
        open >= 6,
        "both clients reach all three nodes: {open} connected"
    );
    let closed_before = closings();
    drop(client);
    drop(app);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while closings() - closed_before < open {
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {open} connections logged their closing",
            closings() - closed_before
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    for (what, text) in &rendered {
        assert_clean(what, text, &secrets);
    }
    let trace = captured_text();
    // The capture works and saw the session's failures, at debug and trace level.
    assert!(trace.contains("WRONGPASS"), "{trace}");
    assert!(trace.contains("TRACE"), "no trace-level events captured");
    assert_clean("tracing output", &trace, &secrets);
}

/// Keys and values Redis quotes back in its refusals stay out of the error's `Display`
/// and `Debug` (keys are personal data in many services): a stream's missing consumer
/// group (`NOGROUP No such key '<key>' or consumer group '<group>'`) and refused
/// coordinates; the code still says what happened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_and_values_a_refusal_quotes_stay_out_of_errors() {
    let local = LocalCluster::builder()
        .masters(3)
        .replicas_per_master(0)
        .start()
        .await
        .unwrap();
    let client = ClusterClient::connect(local.seeds()).await.unwrap();
    let key = "user:alice@example.com:events";
    // The code, and neither the key nor the group.
    let says_nogroup_without_names = |err: &Error| {
        assert_eq!(err.server_code(), Some("NOGROUP"), "{err:?}");
        let shown = format!("{err} {err:?}");
        assert!(
            !shown.contains("alice") && !shown.contains("billing"),
            "{shown}"
        );
    };
    let _: String = client
        .query(cmd("XADD").arg(key).arg("*").arg("f").arg("v"))
        .await
        .unwrap();
    let err = client
        .xreadgroup("billing-group", "c1", key, 1, None)
        .await
        .unwrap_err();
    says_nogroup_without_names(&err);
    let err = client
        .query::<Value>(cmd("XPENDING").arg(key).arg("billing-group"))
        .await
        .unwrap_err();
    says_nogroup_without_names(&err);
    let err = client
        .query::<i64>(
            cmd("GEOADD")
                .arg("places")
                .arg("213.404954")
                .arg("52.520008")
                .arg("home"),
        )
        .await
        .unwrap_err();
    let shown = format!("{err} {err:?}");
    assert!(
        !shown.contains("213.40") && !shown.contains("52.52"),
        "{shown}"
    );
    assert!(shown.contains("longitude,latitude"), "{shown}");
}
