//! TLS, mTLS, certificate rotation, API keys, their reloads and per-key limits, against the real
//! server on a tiny model. Certificates are made here (rcgen); secrets rotate the way Kubernetes
//! rotates a mounted secret (a new directory, then one atomic symlink swap).
mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::grpc::*;
use common::scrape::Metrics;
use common::tls::{Ca, SecretDir};
use common::*;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic::{Code, Request, Status};

use bertd::api::auth::UNAUTHENTICATED;
use bertd::api::proto::bert::v1 as pb;
use bertd::api::proto::bert::v1::encoder_client::EncoderClient;
use bertd::config::{KeyLimits, ReflectionAccess, Settings};

/// How often the server reads its certificate and key files in these tests.
const RELOAD_MS: u64 = 50;
/// How long a reload, a connection or a stream's message may take.
const PATIENCE: Duration = Duration::from_secs(30);

const KEY_A: &str = "team-a-key-3f9d0c2b71e84a56";
const KEY_B: &str = "team-b-key-8e1a4d7c02f9b635";
const KEY_C: &str = "team-c-key-5b2e9f1a7d3c0864";

/// The server's certificate files, issued by `ca`.
fn server_secret(ca: &Ca) -> SecretDir {
    let (cert, key) = ca.server_cert();
    SecretDir::new(&[("tls.crt", &cert), ("tls.key", &key)])
}

fn tls_settings(secret: &SecretDir) -> Settings {
    let mut s = settings(&model_dir("bert_tiny"));
    s.server.tls.cert = Some(secret.path("tls.crt"));
    s.server.tls.key = Some(secret.path("tls.key"));
    s.server.tls.reload_interval_ms = RELOAD_MS;
    s.auth.reload_interval_ms = RELOAD_MS;
    s.telemetry.metrics_addr = Some("127.0.0.1:0".parse().unwrap());
    s
}

/// A TLS channel to `addr` trusting `ca_pem`, presenting `identity` (certificate, key) if any.
async fn tls_channel(
    addr: SocketAddr,
    ca_pem: &str,
    identity: Option<&(String, String)>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Channel::from_shared(format!("https://127.0.0.1:{}", addr.port()))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await
}

fn request_with_key(inputs: usize, key: Option<&str>) -> Request<pb::EncodeRequest> {
    let inputs = (0..inputs).map(|i| input(&format!("input {i}"))).collect();
    let mut request = Request::new(encode_request("r", inputs, pb::Pooling::Mean));
    if let Some(key) = key {
        let value = format!("Bearer {key}").parse().unwrap();
        request.metadata_mut().insert("authorization", value);
    }
    request
}

/// One Encode of `inputs` inputs, with `key` if any; its number of results.
async fn encode(channel: &Channel, inputs: usize, key: Option<&str>) -> Result<usize, Status> {
    let response = EncoderClient::new(channel.clone())
        .encode(request_with_key(inputs, key))
        .await?;
    Ok(response.into_inner().results.len())
}

/// Whether a TLS client trusting `ca_pem` (presenting `identity`) gets an answer: the handshake
/// may fail at connect or, under TLS 1.3, at the first call.
async fn answered(addr: SocketAddr, ca_pem: &str, identity: Option<&(String, String)>) -> bool {
    match tls_channel(addr, ca_pem, identity).await {
        Ok(channel) => encode(&channel, 1, None).await.is_ok(),
        Err(_) => false,
    }
}

/// Waits, within `PATIENCE`, until the server has counted `count` reloads of `what` with
/// `outcome`.
async fn reloaded(metrics: SocketAddr, what: &str, outcome: &str, count: f64) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let m = Metrics::scrape(metrics).await;
        if m.value(
            "bertd_reloads_total",
            &[("what", what), ("outcome", outcome)],
        ) >= count
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what} reloaded ({outcome}) within {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(RELOAD_MS)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_answers_clients_that_trust_its_ca_and_no_one_else() {
    let ca = Ca::new("bertd test CA");
    let secret = server_secret(&ca);
    let server = serve(tls_settings(&secret)).await;
    let channel = tls_channel(server.addr, &ca.pem, None).await.unwrap();
    assert_eq!(encode(&channel, 2, None).await.unwrap(), 2);

    assert!(!answered(server.addr, &Ca::new("another CA").pem, None).await);
    let plaintext = Channel::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await;
    let answered_plaintext = match plaintext {
        Ok(channel) => encode(&channel, 1, None).await.is_ok(),
        Err(_) => false,
    };
    assert!(!answered_plaintext, "a plaintext client is not answered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_admits_client_certificates_of_its_ca_only() {
    let ca = Ca::new("bertd test CA");
    let clients = Ca::new("clients CA");
    let (cert, key) = ca.server_cert();
    let secret = SecretDir::new(&[
        ("tls.crt", &cert),
        ("tls.key", &key),
        ("ca.crt", &clients.pem),
    ]);
    let mut s = tls_settings(&secret);
    s.server.tls.client_ca = Some(secret.path("ca.crt"));
    let server = serve(s).await;

    let member = clients.client_cert("batch-jobs");
    assert!(answered(server.addr, &ca.pem, Some(&member)).await);
    let stranger = Ca::new("another CA").client_cert("batch-jobs");
    assert!(!answered(server.addr, &ca.pem, Some(&stranger)).await);
    assert!(!answered(server.addr, &ca.pem, None).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_serves_new_connections_while_a_running_stream_completes() {
    let (old_ca, new_ca) = (Ca::new("old CA"), Ca::new("new CA"));
    let mut secret = server_secret(&old_ca);
    let server = serve(tls_settings(&secret)).await;
    let metrics = server.metrics_addr.unwrap();

    // A stream on a connection made with the old certificate.
    let channel = tls_channel(server.addr, &old_ca.pem, None).await.unwrap();
    let (send, outbound) = mpsc::channel(4);
    let mut responses = EncoderClient::new(channel)
        .encode_stream(ReceiverStream::new(outbound))
        .await
        .unwrap()
        .into_inner();
    let message = |id: &str| encode_request(id, vec![input("a text")], pb::Pooling::Mean);
    send.send(message("before")).await.unwrap();
    assert_eq!(responses.message().await.unwrap().unwrap().id, "before");

    let (cert, key) = new_ca.server_cert();
    secret.update(&[("tls.crt", &cert), ("tls.key", &key)]);
    reloaded(metrics, "server.tls", "ok", 1.0).await;
    assert!(answered(server.addr, &new_ca.pem, None).await);
    assert!(!answered(server.addr, &old_ca.pem, None).await);

    send.send(message("after")).await.unwrap();
    assert_eq!(responses.message().await.unwrap().unwrap().id, "after");
    drop(send);
    assert!(
        responses.message().await.unwrap().is_none(),
        "the stream ends well"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_certificate_that_does_not_load_is_refused_and_the_old_one_kept() {
    let ca = Ca::new("bertd test CA");
    let mut secret = server_secret(&ca);
    let server = serve(tls_settings(&secret)).await;
    let (_, other_key) = ca.server_cert();
    let cert = std::fs::read_to_string(secret.path("tls.crt")).unwrap();
    // The certificate with another certificate's key: both files parse, the pair does not.
    secret.update(&[("tls.crt", &cert), ("tls.key", &other_key)]);
    reloaded(server.metrics_addr.unwrap(), "server.tls", "failed", 1.0).await;
    assert!(answered(server.addr, &ca.pem, None).await);
}

/// A key file in a secret directory, and settings that use it.
fn keyed_settings(keys: &str) -> (SecretDir, Settings) {
    let secret = SecretDir::new(&[("keys", keys)]);
    let mut s = settings(&model_dir("bert_tiny"));
    s.auth.api_keys_file = Some(secret.path("keys"));
    s.auth.reload_interval_ms = RELOAD_MS;
    s.telemetry.metrics_addr = Some("127.0.0.1:0".parse().unwrap());
    (secret, s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_admit_their_holders_and_a_missing_or_wrong_key_gets_one_answer() {
    let (_secret, mut s) = keyed_settings(&format!("# tenants\nteam-a {KEY_A}\nteam-b {KEY_B}\n"));
    s.auth.reflection = Some(ReflectionAccess::Keyed);
    let server = serve(s).await;
    let channel = channel(&server).await;
    assert_eq!(encode(&channel, 1, Some(KEY_A)).await.unwrap(), 1);
    assert_eq!(encode(&channel, 1, Some(KEY_B)).await.unwrap(), 1);
    let missing = encode(&channel, 1, None).await.unwrap_err();
    let wrong = encode(&channel, 1, Some("team-a-key-3f9d0c2b71e84a57"))
        .await
        .unwrap_err();
    for refused in [&missing, &wrong] {
        assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
        assert_eq!(refused.message(), UNAUTHENTICATED);
    }

    // Health stays open for probes; keyed reflection is not.
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    HealthClient::new(channel.clone())
        .check(HealthCheckRequest::default())
        .await
        .expect("health needs no key");
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    let list = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let refused = ServerReflectionClient::new(channel.clone())
        .server_reflection_info(tokio_stream::iter(vec![list]))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);

    let m = Metrics::scrape(server.metrics_addr.unwrap()).await;
    assert_eq!(m.value("bertd_unauthenticated_calls_total", &[]), 3.0);
    assert_eq!(
        m.value("bertd_api_key_inputs_total", &[("key", "team-a")]),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_file_is_read_again_when_it_changes() {
    let (mut secret, s) = keyed_settings(&format!("team-a {KEY_A}\n"));
    let server = serve(s).await;
    let channel = channel(&server).await;
    assert!(encode(&channel, 1, Some(KEY_A)).await.is_ok());
    assert!(encode(&channel, 1, Some(KEY_C)).await.is_err());

    secret.update(&[("keys", &format!("team-c {KEY_C}\n"))]);
    reloaded(
        server.metrics_addr.unwrap(),
        "auth.api_keys_file",
        "ok",
        1.0,
    )
    .await;
    assert_eq!(
        encode(&channel, 1, Some(KEY_A)).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    assert!(encode(&channel, 1, Some(KEY_C)).await.is_ok());

    // A file that does not parse leaves the keys as they were.
    secret.update(&[("keys", "team-d too-short\n")]);
    reloaded(
        server.metrics_addr.unwrap(),
        "auth.api_keys_file",
        "failed",
        1.0,
    )
    .await;
    assert!(encode(&channel, 1, Some(KEY_C)).await.is_ok());
}

/// team-a's limits: at most this many inputs in flight, and a rate so slow that its burst is
/// all it gets during the test.
const A_INFLIGHT: usize = 4;
const A_BURST: usize = 4;
/// Calls team-b makes meanwhile, and inputs in each (more than team-a may ever send at once).
const B_CALLS: usize = 5;
const B_INPUTS: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_over_its_limits_is_refused_by_name_while_another_key_is_unaffected() {
    let (_secret, mut s) = keyed_settings(&format!("team-a {KEY_A}\nteam-b {KEY_B}\n"));
    let limits = KeyLimits {
        max_inflight_inputs: A_INFLIGHT,
        inputs_per_second: 0.001,
        burst_inputs: A_BURST,
    };
    s.auth.limits.insert("team-a".into(), limits);
    let server = serve(s).await;
    let channel = channel(&server).await;

    let too_large = encode(&channel, A_INFLIGHT + 1, Some(KEY_A))
        .await
        .unwrap_err();
    assert_eq!(too_large.code(), Code::ResourceExhausted);
    assert!(
        too_large.message().starts_with(
            "API key team-a: 5 inputs in one request exceed the 4 it may have in flight (auth.limits.team-a.max_inflight_inputs)"
        ),
        "{too_large:?}"
    );
    assert_eq!(
        encode(&channel, A_BURST, Some(KEY_A)).await.unwrap(),
        A_BURST
    );
    let over_rate = encode(&channel, 1, Some(KEY_A)).await.unwrap_err();
    assert_eq!(over_rate.code(), Code::ResourceExhausted);
    assert!(
        over_rate.message().starts_with(
            "API key team-a: 0.001 inputs per second at most (auth.limits.team-a.inputs_per_second)"
        ),
        "{over_rate:?}"
    );
    for refused in [&too_large, &over_rate] {
        assert!(!refused.message().contains(KEY_A), "{refused:?}");
    }
    for _ in 0..B_CALLS {
        assert_eq!(
            encode(&channel, B_INPUTS, Some(KEY_B)).await.unwrap(),
            B_INPUTS
        );
    }

    let m = Metrics::scrape(server.metrics_addr.unwrap()).await;
    let refusals = |limit| {
        m.value(
            "bertd_api_key_refusals_total",
            &[("key", "team-a"), ("limit", limit)],
        )
    };
    assert_eq!((refusals("too_large"), refusals("rate")), (1.0, 1.0));
    assert_eq!(
        m.value("bertd_api_key_inputs_total", &[("key", "team-b")]),
        (B_CALLS * B_INPUTS) as f64
    );
}

/// team-c streams at this rate, with this burst: a stream is slowed to its key's rate.
const C_RATE: f64 = 50.0;
const C_BURST: usize = 5;
const C_MESSAGES: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_over_its_keys_rate_is_slowed_to_it_not_refused() {
    let (_secret, mut s) = keyed_settings(&format!("team-c {KEY_C}\n"));
    s.auth.key_limits = KeyLimits {
        max_inflight_inputs: 0,
        inputs_per_second: C_RATE,
        burst_inputs: C_BURST,
    };
    let server = serve(s).await;
    let messages: Vec<pb::EncodeRequest> = (0..C_MESSAGES)
        .map(|i| {
            let inputs = (0..C_BURST).map(|_| input("a text")).collect();
            encode_request(i.to_string(), inputs, pb::Pooling::Mean)
        })
        .collect();
    let mut request = Request::new(tokio_stream::iter(messages));
    let value = format!("Bearer {KEY_C}").parse().unwrap();
    request.metadata_mut().insert("authorization", value);
    let start = Instant::now();
    let mut responses = EncoderClient::new(channel(&server).await)
        .encode_stream(request)
        .await
        .unwrap()
        .into_inner();
    let mut answered = 0;
    while let Some(response) = responses.message().await.unwrap() {
        assert!(response.error.is_none(), "{response:?}");
        answered += response.results.len();
    }
    assert_eq!(answered, C_MESSAGES * C_BURST);
    // The first message spends the burst; each later one waits for its inputs at the rate.
    let least = Duration::from_secs_f64(((C_MESSAGES - 1) * C_BURST) as f64 / C_RATE);
    assert!(
        start.elapsed() >= least,
        "{:?} < {least:?}",
        start.elapsed()
    );
}

#[test]
fn security_settings_that_cannot_work_are_named() {
    let mut s = Settings::default();
    s.server.tls.cert = Some("cert.pem".into());
    assert!(
        s.validate()
            .unwrap_err()
            .to_string()
            .starts_with("server.tls.key: server.tls.cert needs its key")
    );
    let mut s = Settings::default();
    s.server.tls.client_ca = Some("ca.pem".into());
    assert!(
        s.validate()
            .unwrap_err()
            .to_string()
            .starts_with("server.tls.client_ca:")
    );
    let mut s = Settings::default();
    s.auth.key_limits.inputs_per_second = -1.0;
    assert!(
        s.validate()
            .unwrap_err()
            .to_string()
            .starts_with("auth.key_limits.inputs_per_second:")
    );
}

/// Kubernetes gives a pod `BERTD_PORT`, `BERTD_SERVICE_HOST`, ... for a Service named bertd:
/// they are not settings and must not stop the server from starting.
#[test]
fn service_link_variables_are_not_read_as_settings() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bertd"))
        .args(["config"])
        .env("BERTD_PORT", "tcp://10.0.0.1:50051")
        .env("BERTD_SERVICE_HOST", "10.0.0.1")
        .env("BERTD_BATCHING__MAX_BATCH_SIZE", "7")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("max_batch_size = 7"));
}

const KEY_ENV: &str = "env-team-key-71c4e09a2b5d38f6";
/// What a client presents that is almost team-a's key.
const NEAR_MISS: &str = "team-a-key-3f9d0c2b71e84a5X";

/// A line from inside a PEM block (its base64 body), which no output may contain.
fn pem_body_line(pem: &str) -> String {
    pem.lines()
        .find(|l| !l.starts_with("-----") && l.len() >= 40)
        .expect("a PEM body line")
        .to_string()
}

/// The real binary, run with TLS, mTLS and keys from a file and from the environment, logging
/// everything (trace level, JSON) and exporting its spans: nothing it writes, exports or answers,
/// nor `bertd config`, contains a key or a private key; the key's name and the client's subject
/// are on the call's span.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_appears_in_logs_spans_errors_or_the_printed_configuration() {
    let (ca, clients) = (Ca::new("bertd test CA"), Ca::new("clients CA"));
    let (cert, key) = ca.server_cert();
    let client = clients.client_cert("batch-jobs");
    let keys = format!("team-a {KEY_A}\nteam-b {KEY_B}\n");
    let secret = SecretDir::new(&[
        ("tls.crt", &cert),
        ("tls.key", &key),
        ("ca.crt", &clients.pem),
        ("keys", &keys),
    ]);
    let (receiver, otlp) = common::otlp::Receiver::start().await;
    let logs = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let flags = |command: &str| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_bertd"));
        c.arg(command)
            .args([
                "--addr",
                &addr,
                "--log-level",
                "trace",
                "--log-format",
                "json",
            ])
            .arg("--model")
            .arg(model_dir("bert_tiny"))
            .arg("--tls-cert")
            .arg(secret.path("tls.crt"))
            .arg("--tls-key")
            .arg(secret.path("tls.key"))
            .arg("--tls-client-ca")
            .arg(secret.path("ca.crt"))
            .arg("--api-keys-file")
            .arg(secret.path("keys"))
            .env("BERTD_AUTH__API_KEYS_ENV", "BERTD_API_KEYS")
            .env("BERTD_API_KEYS", format!("env-team {KEY_ENV}"))
            .env("BERTD_TELEMETRY__OTLP_ENDPOINT", format!("http://{otlp}"))
            .env("OTEL_BSP_SCHEDULE_DELAY", "100");
        c
    };
    let out = |name: &str| std::fs::File::create(logs.path().join(name)).unwrap();
    let mut server = flags("serve")
        .stdout(out("stdout"))
        .stderr(out("stderr"))
        .spawn()
        .unwrap();
    let addr: SocketAddr = addr.parse().unwrap();
    let deadline = Instant::now() + common::process::START_TIMEOUT;
    let channel = loop {
        if let Ok(channel) = tls_channel(addr, &ca.pem, Some(&client)).await
            && encode(&channel, 1, Some(KEY_A)).await.is_ok()
        {
            break channel;
        }
        assert!(
            Instant::now() < deadline,
            "serving within the start timeout"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut answers = Vec::new();
    assert!(encode(&channel, 2, Some(KEY_ENV)).await.is_ok());
    let refused = encode(&channel, 1, Some(NEAR_MISS)).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    answers.push(format!("{refused:?}"));
    let mut stream = Request::new(tokio_stream::iter(vec![encode_request(
        "s",
        vec![input("streamed")],
        pb::Pooling::Mean,
    )]));
    let value = format!("Bearer {KEY_B}").parse().unwrap();
    stream.metadata_mut().insert("authorization", value);
    let mut responses = EncoderClient::new(channel.clone())
        .encode_stream(stream)
        .await
        .unwrap()
        .into_inner();
    while let Some(response) = responses.message().await.unwrap() {
        answers.push(format!("{response:?}"));
    }
    let config = flags("config").output().unwrap();
    assert!(
        config.status.success(),
        "{}",
        String::from_utf8_lossy(&config.stderr)
    );
    assert!(common::process::terminate(&mut server).success());

    let named_span = |name: &str| {
        receiver.spans().into_iter().any(|r| {
            let attributes = common::otlp::attributes(&r.span.attributes);
            attributes.get("bertd.api_key").map(String::as_str) == Some(name)
                && attributes
                    .get("bertd.client_subject")
                    .is_some_and(|s| s.contains("CN=batch-jobs"))
        })
    };
    // The server flushes its spans before it exits; the receiver may still be storing them.
    let deadline = Instant::now() + PATIENCE;
    while !(named_span("team-a") && named_span("env-team") && named_span("team-b")) {
        assert!(
            Instant::now() < deadline,
            "spans name each key and the client"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let read = |name: &str| std::fs::read_to_string(logs.path().join(name)).unwrap();
    let written = [
        read("stdout"),
        read("stderr"),
        String::from_utf8_lossy(&config.stdout).into_owned(),
        String::from_utf8_lossy(&config.stderr).into_owned(),
        format!("{:?}", receiver.spans()),
        answers.join("\n"),
    ]
    .join("\n");
    // The haystack is real: trace-level logs of the calls, naming the keys' owners.
    assert!(
        written.lines().count() > 100,
        "{} lines",
        written.lines().count()
    );
    assert!(written.contains("team-a") && written.contains(UNAUTHENTICATED));
    let secrets = [
        KEY_A.to_string(),
        KEY_B.to_string(),
        KEY_ENV.to_string(),
        NEAR_MISS.to_string(),
        pem_body_line(&key),
        pem_body_line(&client.1),
    ];
    for secret in &secrets {
        assert!(!written.contains(secret.as_str()), "{secret} was written");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_can_be_put_behind_the_keys_too() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let (_secret, mut s) = keyed_settings(&format!("team-a {KEY_A}\n"));
    s.auth.health_open = false;
    let server = serve(s).await;
    let mut health = HealthClient::new(channel(&server).await);
    let refused = health
        .check(HealthCheckRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    let mut keyed = Request::new(HealthCheckRequest::default());
    let value = format!("Bearer {KEY_A}").parse().unwrap();
    keyed.metadata_mut().insert("authorization", value);
    assert!(health.check(keyed).await.is_ok());
}
