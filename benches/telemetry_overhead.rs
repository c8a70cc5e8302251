//! What observability costs: the real `bertd serve` (release build, default model, default
//! settings) with telemetry off, with every call traced (OTLP to a real receiver in this process,
//! sampling ratio 1.0), with the metrics endpoint on, and with traces sent to a collector that
//! does not exist. For each: a bulk stream's inputs/s and one client's unary latency. The
//! configurations take turns, round after round, so drift on the machine hits them alike. Run with
//! `make bench` or `cargo bench --bench telemetry_overhead`.
//!
//! Options: `--inputs N` (default 2048), `--latency-calls N` (default 200), `--rounds N`
//! (default 3).
use std::process::Stdio;
use std::time::Duration;

mod common;
#[path = "../tests/common/otlp.rs"]
#[allow(dead_code)]
mod otlp;
#[path = "../tests/common/process.rs"]
mod process;
use common::{arg, corpus, latency, stream_rate};
use process::{Running, wait_serving};

const INPUTS_PER_MESSAGE: usize = 16;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Row {
    name: &'static str,
    rates: Vec<f64>,
    p50: Vec<Duration>,
    p99: Vec<Duration>,
}

fn median<T: Copy + PartialOrd>(values: &[T]) -> T {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let inputs: usize = arg("--inputs").unwrap_or(2048);
    let calls: usize = arg("--latency-calls").unwrap_or(200);
    let rounds: usize = arg("--rounds").unwrap_or(3);
    let texts = corpus(inputs);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (receiver, collector) = runtime.block_on(otlp::Receiver::start());
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    let configs: Vec<(&'static str, Vec<(&str, String)>)> = vec![
        ("telemetry off", vec![]),
        (
            "traces on, ratio 1.0",
            vec![
                (
                    "BERTD_TELEMETRY__OTLP_ENDPOINT",
                    format!("http://{collector}"),
                ),
                ("BERTD_TELEMETRY__SAMPLING_RATIO", "1.0".into()),
            ],
        ),
        (
            "metrics on",
            vec![(
                "BERTD_TELEMETRY__METRICS_ADDR",
                format!("127.0.0.1:{}", free_port()),
            )],
        ),
        (
            "traces to an unreachable collector",
            vec![("BERTD_TELEMETRY__OTLP_ENDPOINT", nowhere)],
        ),
    ];
    let mut rows: Vec<Row> = configs
        .iter()
        .map(|(name, _)| Row {
            name,
            rates: Vec::new(),
            p50: Vec::new(),
            p99: Vec::new(),
        })
        .collect();
    for round in 0..rounds {
        for ((name, env), row) in configs.iter().zip(&mut rows) {
            let addr = format!("127.0.0.1:{}", free_port());
            let server = Running::spawn(
                process::serve(&addr, &bertd::config::default_model_dir())
                    .args(["--log-level", "warn"])
                    .envs(env.iter().map(|(k, v)| (k, v)))
                    .stdin(Stdio::null()),
            );
            let (rate, (p50, p99)) = runtime.block_on(async {
                let channel = wait_serving(&addr).await;
                let rate = stream_rate(channel.clone(), &texts, INPUTS_PER_MESSAGE).await;
                (rate, latency(channel, calls).await)
            });
            server.stop();
            eprintln!("round {round}: {name}: {rate:.1} inputs/s, p50 {p50:?}, p99 {p99:?}");
            row.rates.push(rate);
            row.p50.push(p50);
            row.p99.push(p99);
        }
    }
    let base = median(&rows[0].rates);
    println!(
        "\n{inputs} inputs streamed ({INPUTS_PER_MESSAGE} a message), then {calls} unary calls; medians of {rounds} rounds\n"
    );
    println!("| configuration | stream inputs/s | vs off | unary p50 | unary p99 |");
    println!("|---|---|---|---|---|");
    for row in &rows {
        let rate = median(&row.rates);
        println!(
            "| {} | {rate:.1} | {:.3} | {:.2} ms | {:.2} ms |",
            row.name,
            rate / base,
            median(&row.p50).as_secs_f64() * 1e3,
            median(&row.p99).as_secs_f64() * 1e3
        );
    }
    println!("\nspans received while tracing: {}", receiver.spans().len());
}
