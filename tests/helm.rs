//! The Helm chart (helm/bertd): it lints strictly; each values file in helm/bertd/ci renders
//! objects that Kubernetes 1.33's own schemas accept (kubernetes-validate, offline) and a
//! configuration that bertd accepts; a bertd started from that configuration answers the health
//! probe; older clusters get the API versions and probes they serve; bad values are refused by
//! the schema, naming the value. Helm and kubectl come from helm/tools.sh (cached outside the
//! repository).
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::process::{terminate, wait_serving};
use common::scrape::get;
use common::*;

use bertd::config::Settings;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Where helm/tools.sh installed helm and kubectl (it runs once per test process).
fn tools() -> &'static Path {
    static TOOLS: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    TOOLS.get_or_init(|| {
        let out = succeed(&mut Command::new(root().join("helm/tools.sh")));
        PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
    })
}

/// `helm`, run from the repository's root.
fn helm() -> Command {
    let mut helm = Command::new(tools().join("helm"));
    helm.current_dir(root());
    helm
}

/// The values files the chart is tested with.
fn values_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("helm/bertd/ci"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 4, "{files:?}");
    files
}

/// The chart rendered with `values` for a cluster of `kube_version`.
fn render(values: &Path, kube_version: &str) -> String {
    render_with(values, kube_version, &[])
}

/// `render`, with `--set` for each of `sets`.
fn render_with(values: &Path, kube_version: &str, sets: &[&str]) -> String {
    let mut helm = helm();
    helm.args([
        "template",
        "bertd",
        "helm/bertd",
        "--kube-version",
        kube_version,
    ])
    .arg("-f")
    .arg(values);
    for set in sets {
        helm.args(["--set", set]);
    }
    String::from_utf8(succeed(&mut helm).stdout).unwrap()
}

/// The configuration file the chart renders into its ConfigMap.
fn rendered_config(values: &Path, dir: &Path) -> PathBuf {
    rendered_config_with(values, &[], dir)
}

/// The same, with `--set` values on top.
fn rendered_config_with(values: &Path, sets: &[String], dir: &Path) -> PathBuf {
    let out = succeed(
        helm()
            .args(["template", "bertd", "helm/bertd"])
            .args(["--show-only", "templates/configmap.yaml"])
            .arg("-f")
            .arg(values)
            .args(sets.iter().flat_map(|s| ["--set", s.as_str()])),
    );
    let manifest = dir.join("configmap.yaml");
    std::fs::write(&manifest, &out.stdout).unwrap();
    let config = dir.join("bertd.yaml");
    succeed(
        Command::new(root().join(".venv/bin/python"))
            .args([
                "-c",
                "import sys, yaml; open(sys.argv[2], 'w').write(yaml.safe_load(open(sys.argv[1]))['data']['bertd.yaml'])",
            ])
            .arg(&manifest)
            .arg(&config),
    );
    config
}

#[test]
fn the_chart_lints_strictly() {
    succeed(helm().args(["lint", "--strict", "helm/bertd"]));
}

#[test]
fn every_values_file_renders_objects_that_kubernetes_accepts() {
    let dir = tempfile::tempdir().unwrap();
    for values in values_files() {
        let rendered = dir.path().join("rendered.yaml");
        std::fs::write(&rendered, render(&values, "1.33.0")).unwrap();
        let out = succeed(
            Command::new(root().join(".venv/bin/kubernetes-validate"))
                .args(["--strict", "-k", "1.33.0"])
                .arg(&rendered),
        );
        let report = String::from_utf8_lossy(&out.stdout);
        assert!(
            report.contains("passed for resource deployment/"),
            "{values:?}: {report}"
        );
        assert!(!report.contains("ERROR"), "{values:?}: {report}");
    }
}

#[test]
fn older_clusters_get_the_api_versions_and_probes_they_serve() {
    let security = root().join("helm/bertd/ci/security-values.yaml");
    let autoscaling = root().join("helm/bertd/ci/autoscaling-values.yaml");
    let cpu = root().join("helm/bertd/ci/cpu-values.yaml");
    let old = render(&autoscaling, "1.20.0");
    assert!(old.contains("apiVersion: policy/v1beta1"), "{old}");
    assert!(old.contains("apiVersion: autoscaling/v2beta2"), "{old}");
    assert!(
        old.contains("command: [\"sleep\", \"5\"]"),
        "a preStop exec before 1.30"
    );
    let new = render(&autoscaling, "1.33.0");
    assert!(
        new.contains("apiVersion: policy/v1\n") && new.contains("apiVersion: autoscaling/v2\n")
    );
    assert!(new.contains("sleep:\n                seconds: 5"), "{new}");
    // Native gRPC probes from 1.24; before, and under TLS (which native probes cannot speak),
    // the metrics port's /health, which answers from the same health; TCP without that port.
    const HTTP_HEALTH: &str = "httpGet:\n              path: /health\n              port: metrics";
    assert!(render(&cpu, "1.33.0").contains("grpc:\n              port: 50051"));
    assert!(render(&cpu, "1.23.0").contains(HTTP_HEALTH));
    assert!(render(&security, "1.33.0").contains(HTTP_HEALTH));
    let no_metrics = render_with(&security, "1.33.0", &["metrics.enabled=false"]);
    assert!(no_metrics.contains("tcpSocket:"), "{no_metrics}");
}

#[test]
fn queue_depth_autoscaling_counts_waiting_calls_and_streams_only_when_told() {
    // A stream keeps its whole window queued however fast its pod computes, so by default the
    // HPA's queue metric selects the unary lane (bertd_queued_inputs{lane="unary"}).
    const UNARY_ONLY: &str = "name: bertd_queued_inputs\n          selector:\n            matchLabels:\n              lane: unary\n";
    let autoscaling = root().join("helm/bertd/ci/autoscaling-values.yaml");
    for kube_version in ["1.33.0", "1.20.0"] {
        let hpa = render(&autoscaling, kube_version);
        assert!(hpa.contains(UNARY_ONLY), "{kube_version}: {hpa}");
    }
    let all = render_with(&autoscaling, "1.33.0", &["autoscaling.queueDepth.lane=all"]);
    assert!(all.contains("name: bertd_queued_inputs\n"), "{all}");
    assert!(!all.contains("lane: unary"), "{all}");
}

#[test]
fn the_rendered_configuration_is_one_bertd_accepts() {
    let dir = tempfile::tempdir().unwrap();
    for values in values_files() {
        let config = rendered_config(&values, dir.path());
        let out = succeed(
            Command::new(env!("CARGO_BIN_EXE_bertd"))
                .args(["config", "--config"])
                .arg(&config),
        );
        let printed = String::from_utf8(out.stdout).unwrap();
        assert!(
            printed.contains("addr = \"0.0.0.0:50051\""),
            "{values:?}: {printed}"
        );
    }
    let gpu = rendered_config(&root().join("helm/bertd/ci/gpu-values.yaml"), dir.path());
    let out = succeed(
        Command::new(env!("CARGO_BIN_EXE_bertd"))
            .args(["config", "--config"])
            .arg(&gpu),
    );
    let printed: Settings = toml::from_str(&String::from_utf8(out.stdout).unwrap()).unwrap();
    let devices: Vec<String> = printed
        .engine
        .devices
        .iter()
        .map(|d| d.to_string())
        .collect();
    assert_eq!(devices, ["cuda:0", "cuda:1"]);
    assert_eq!(printed.engine.workers_per_device, Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bertd_started_from_the_rendered_configuration_answers_the_health_probe() {
    let dir = tempfile::tempdir().unwrap();
    // The chart's port (a free one here), on loopback rather than the chart's 0.0.0.0, and a
    // test model: the rest is as the chart renders it.
    let addr = free_addr();
    let metrics = free_addr();
    let port = addr.rsplit(':').next().unwrap();
    let config = rendered_config_with(
        &root().join("helm/bertd/ci/cpu-values.yaml"),
        &[format!("service.port={port}")],
        dir.path(),
    );
    let rendered = std::fs::read_to_string(&config).unwrap();
    assert!(
        rendered.contains(&format!("addr: 0.0.0.0:{port}")),
        "{rendered}"
    );
    let mut server = Command::new(env!("CARGO_BIN_EXE_bertd"))
        .args(["serve", "--config"])
        .arg(&config)
        .args(["--addr", &addr])
        .arg("--model")
        .arg(model_dir("bert_tiny"))
        .env("BERTD_TELEMETRY__METRICS_ADDR", &metrics)
        .spawn()
        .unwrap();
    wait_serving(&addr).await;
    // The probe under TLS or before Kubernetes 1.24.
    let (status, _, body) = get(metrics.parse().unwrap(), "/health").await;
    assert_eq!((status, body.as_str()), (200, "SERVING\n"));
    assert!(terminate(&mut server).success());
}

#[test]
fn bad_values_are_refused_naming_them() {
    let cases = [
        (
            "replicaCount=-1",
            "replicaCount: Must be greater than or equal to 0",
        ),
        (
            "gpu.dtype=fp8",
            "gpu.dtype: gpu.dtype must be one of the following",
        ),
        (
            "model.source=s3",
            "model.source: model.source must be one of the following",
        ),
        (
            "telemetry.otlpEndpoint=collector:4317",
            "telemetry.otlpEndpoint: Does not match pattern",
        ),
        (
            "autoscaling.queueDepth.lane=stream",
            "autoscaling.queueDepth.lane: autoscaling.queueDepth.lane must be one of the following",
        ),
        ("replicas=3", "Additional property replicas is not allowed"),
    ];
    for (set, expected) in cases {
        let out = helm()
            .args(["template", "bertd", "helm/bertd", "--set", set])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{set} was accepted");
        let error = String::from_utf8_lossy(&out.stderr);
        assert!(error.contains(expected), "{set}: {error}");
    }
    // What the schema cannot say, the templates do.
    let out = helm()
        .args([
            "template",
            "bertd",
            "helm/bertd",
            "--set",
            "model.source=pvc",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("model.pvc.claimName is required"));
}

/// A control plane from helm/apiserver.sh, stopped when dropped.
struct Cluster {
    dir: tempfile::TempDir,
}

impl Cluster {
    fn up() -> Cluster {
        // Cached after the first build (~6 minutes on 2 cores).
        succeed(Command::new(root().join("helm/apiserver.sh")).arg("build"));
        let dir = tempfile::tempdir().unwrap();
        let cluster = Cluster { dir };
        succeed(
            Command::new(root().join("helm/apiserver.sh"))
                .arg("up")
                .arg(cluster.dir.path()),
        );
        cluster
    }

    fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    /// `helm ARGS` against this cluster.
    fn helm(&self, args: &[&str]) -> Output {
        succeed(helm().args(args).arg("--kubeconfig").arg(self.kubeconfig()))
    }

    /// `kubectl ARGS` against this cluster: its standard output.
    fn kubectl(&self, args: &[&str]) -> String {
        let out = succeed(&mut self.kubectl_command(args));
        String::from_utf8(out.stdout).unwrap()
    }

    fn kubectl_command(&self, args: &[&str]) -> Command {
        let mut kubectl = Command::new(tools().join("kubectl"));
        kubectl
            .arg("--kubeconfig")
            .arg(self.kubeconfig())
            .args(args);
        kubectl
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(root().join("helm/apiserver.sh"))
            .arg("down")
            .arg(self.dir.path())
            .status();
    }
}

/// How long helm waits for the pods the stand-in kubelet marks ready.
const HELM_WAIT: &str = "120s";
/// How long the HPA controller may take to act (it syncs every 15 s).
const HPA_PATIENCE: std::time::Duration = std::time::Duration::from_secs(90);

/// The chart installed for real on a Kubernetes 1.20 API server with its controllers: the objects
/// it makes (with the API versions 1.20 serves), the Deployment's pods ready, an upgrade that
/// scales it, an uninstall that removes everything.
#[test]
fn the_chart_installs_upgrades_and_uninstalls_on_a_real_api_server() {
    let cluster = Cluster::up();
    let security = root().join("helm/bertd/ci/security-values.yaml");
    let security = security.to_str().unwrap();
    cluster.helm(&[
        "install",
        "bertd",
        "helm/bertd",
        "-f",
        security,
        "--set",
        "autoscaling.enabled=true",
        // The queue-depth metric (with its lane selector) must be one the API server accepts;
        // the HPA controller raises the replicas to the minimum before it reads any metric.
        "--set",
        "autoscaling.queueDepth.enabled=true",
        "--wait",
        "--timeout",
        HELM_WAIT,
    ]);
    let objects = cluster.kubectl(&[
        "get",
        "deployment,service,configmap,serviceaccount,poddisruptionbudget,horizontalpodautoscaler",
        "-o",
        "name",
    ]);
    for object in [
        "deployment.apps/bertd",
        "service/bertd",
        "service/bertd-headless",
        "configmap/bertd",
        "serviceaccount/bertd",
        "poddisruptionbudget.policy/bertd",
        "horizontalpodautoscaler.autoscaling/bertd",
    ] {
        assert!(
            objects.lines().any(|l| l == object),
            "{object} in {objects}"
        );
    }
    let ready = |cluster: &Cluster| {
        cluster.kubectl(&[
            "get",
            "deployment",
            "bertd",
            "-o",
            "jsonpath={.status.readyReplicas}",
        ])
    };
    let counted = cluster.kubectl(&[
        "get",
        "horizontalpodautoscalers.v2beta2.autoscaling",
        "bertd",
        "-o",
        "jsonpath={.spec.metrics[?(@.type==\"Pods\")].pods.metric.selector.matchLabels.lane}",
    ]);
    assert_eq!(counted, "unary", "the queue depth counts the unary lane");
    // The Deployment leaves its replicas to the HPA, whose controller raises them to its minimum.
    let deadline = std::time::Instant::now() + HPA_PATIENCE;
    while ready(&cluster) != "2" {
        assert!(
            std::time::Instant::now() < deadline,
            "the HPA brought the Deployment to its 2 minimum replicas within {HPA_PATIENCE:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    // The configuration bertd reads is the one the chart renders.
    let config = cluster.kubectl(&[
        "get",
        "configmap",
        "bertd",
        "-o",
        "jsonpath={.data.bertd\\.yaml}",
    ]);
    assert!(config.contains("cert: /etc/bertd/tls/tls.crt"), "{config}");

    cluster.helm(&[
        "upgrade",
        "bertd",
        "helm/bertd",
        "-f",
        security,
        "--set",
        "replicaCount=3",
        "--wait",
        "--timeout",
        HELM_WAIT,
    ]);
    assert_eq!(ready(&cluster), "3");
    assert!(
        cluster
            .kubectl(&["get", "horizontalpodautoscaler", "-o", "name"])
            .trim()
            .is_empty(),
        "autoscaling off removes the HPA"
    );

    cluster.helm(&["uninstall", "bertd", "--wait", "--timeout", HELM_WAIT]);
    let left = cluster.kubectl(&[
        "get",
        "deployment,service,configmap",
        "-l",
        "app.kubernetes.io/instance=bertd",
        "-o",
        "name",
    ]);
    assert!(left.trim().is_empty(), "{left}");
}
