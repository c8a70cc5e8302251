//! `bertctl` (the workspace's client binary) against real `bertd serve` processes on loopback:
//! every input and output format, order across streams and servers, resuming a killed job,
//! losing a server mid-job, per-item errors, bad input files, TLS and API keys, and its linking.
//!
//! `cargo test --workspace` (what `make test` runs) builds `bertctl` next to this test.
mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use arrow_array::{Array, FixedSizeListArray, Float32Array, StringArray};
use bertd::api::proto::bert::v1 as pb;
use common::grpc::{input, stats};
use common::process::{self, Running, wait_serving};
use common::tls::Ca;
use common::*;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use pb::encoder_client::EncoderClient;
use serde_json::Value;

/// How long a job may take before the test gives up on it (the tests share 2 cores).
const JOB_TIMEOUT: Duration = Duration::from_secs(300);
/// How often a test looks at a job's output while waiting for it to grow.
const POLL: Duration = Duration::from_millis(5);
/// The tiny fixture model's maximum input length: longer inputs fail with `--truncate false`.
const MAX_TOKENS: usize = 48;
/// Tolerance between vectors computed in different batches (padding changes the sums' order).
const TOLERANCE: f32 = 1e-5;

/// The `bertctl` built beside this test, refused when older than its sources: `cargo test
/// --test bertctl` alone does not rebuild another package's binary.
/// Held by the tests that kill a process mid-job, so that they do not also compete with each
/// other for the cores while they watch a job's progress.
static MID_JOB_KILLS: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn bertctl_path() -> PathBuf {
    let dir = std::env::current_exe().unwrap();
    let path = dir.parent().unwrap().parent().unwrap().join("bertctl");
    let build =
        "build it with `cargo test --workspace` (as `make test` does) or `cargo build -p bertctl`";
    let built = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .unwrap_or_else(|e| panic!("{}: {e}: {build}", path.display()));
    let sources = Path::new(env!("CARGO_MANIFEST_DIR")).join("bertctl/src");
    let newest = newest_file(&sources);
    assert!(
        built >= newest,
        "{} is older than {}: {build}",
        path.display(),
        sources.display()
    );
    path
}

fn newest_file(dir: &Path) -> std::time::SystemTime {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_dir() {
                newest_file(&entry.path())
            } else {
                entry.metadata().unwrap().modified().unwrap()
            }
        })
        .max()
        .unwrap_or(std::time::UNIX_EPOCH)
}

fn bertctl() -> Command {
    let mut command = Command::new(bertctl_path());
    command.env_remove("BERTD_API_KEY");
    command
}

/// `bertctl encode` of `input` into `output` through every server of `urls`; more flags may follow.
fn encode(urls: &[&str], input: &Path, output: &Path) -> Command {
    let mut command = bertctl();
    command.arg("encode");
    for url in urls {
        command.args(["--server", url]);
    }
    command.arg("-i").arg(input).arg("-o").arg(output);
    command
}

/// Runs a command to its end, within `JOB_TIMEOUT`.
fn run(command: &mut Command) -> Output {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    finish(child)
}

/// Waits for a child and collects what it printed, within `JOB_TIMEOUT`: a job that hangs
/// fails the test instead of stopping the suite.
fn finish(mut child: std::process::Child) -> Output {
    fn drain(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                pipe.read_to_end(&mut bytes).unwrap();
            }
            bytes
        })
    }
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > JOB_TIMEOUT {
            child.kill().unwrap();
            panic!("the job did not end within {JOB_TIMEOUT:?}");
        }
        std::thread::sleep(POLL);
    };
    Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A `bertd serve` child on a free loopback port.
struct Server {
    process: Running,
    addr: String,
}

impl Server {
    fn start(model: &str, args: &[&str]) -> Server {
        let addr = free_addr();
        let process = Running::spawn(process::serve(&addr, &model_dir(model)).args(args));
        let server = Server { process, addr };
        runtime().block_on(wait_serving(&server.addr));
        server
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Words of at most 5 tokens each in the tiny model's vocabulary, so a line of up to 8 words is
/// never longer than `MAX_TOKENS` (the tests that fail long inputs on purpose rely on it).
const WORDS: [&str; 16] = [
    "the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "seven",
    "wizards", "quietly", "hex", "every", "judge",
];

/// Mixed-length lines, deterministic: 1 to `max_words` words each.
fn corpus(lines: usize, max_words: usize) -> Vec<String> {
    common::sentences::sentences(lines, 1..=max_words, &WORDS)
}

fn write_lines(path: &Path, lines: &[String]) {
    let mut file = std::fs::File::create(path).unwrap();
    for line in lines {
        writeln!(file, "{line}").unwrap();
    }
}

/// The server's own unary answers for `texts`: what every output must hold.
fn reference(server: &Server, texts: &[String]) -> Vec<Vec<f32>> {
    runtime().block_on(async {
        let channel = wait_serving(&server.addr).await;
        let mut client = EncoderClient::new(channel);
        let mut vectors = Vec::new();
        for chunk in texts.chunks(64) {
            let request = pb::EncodeRequest {
                id: String::new(),
                inputs: chunk
                    .iter()
                    .map(|t| pb::TextInput {
                        text: t.clone(),
                        text_pair: None,
                    })
                    .collect(),
                options: None,
            };
            let response = client.encode(request).await.unwrap().into_inner();
            vectors.extend(response.results.into_iter().map(|r| r.embedding));
        }
        vectors
    })
}

/// (id, vector or None for an error row) of a JSON lines output.
fn read_jsonl(path: &Path) -> Vec<(String, Option<Vec<f32>>)> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|line| {
            let row: Value = serde_json::from_str(line).unwrap();
            let id = row["id"].as_str().unwrap().to_string();
            let vector = row.get("embedding").map(floats);
            (id, vector)
        })
        .collect()
}

/// The rows of an `.npy` float32 matrix, as numpy's format defines it.
fn read_npy(path: &Path) -> Vec<Vec<f32>> {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00", "an .npy v1.0 file");
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = std::str::from_utf8(&bytes[10..10 + header_len]).unwrap();
    assert!(header.contains("'descr': '<f4'"), "{header}");
    let shape = header.split("'shape': (").nth(1).unwrap();
    let (rows, rest) = shape.split_once(", ").unwrap();
    let rows: usize = rows.parse().unwrap();
    let dims: usize = rest.split(')').next().unwrap().parse().unwrap();
    let data = &bytes[10 + header_len..];
    assert_eq!(
        data.len(),
        rows * dims * 4,
        "the data is the declared shape"
    );
    data.chunks(dims * 4)
        .map(|row| {
            row.chunks(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect()
        })
        .collect()
}

fn read_parquet(path: &Path) -> Vec<(String, Option<Vec<f32>>)> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(path).unwrap())
        .unwrap()
        .build()
        .unwrap();
    let mut rows = Vec::new();
    for batch in reader {
        let batch = batch.unwrap();
        let ids = batch
            .column_by_name("id")
            .unwrap()
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        let vectors = batch
            .column_by_name("embedding")
            .unwrap()
            .as_any()
            .downcast_ref::<FixedSizeListArray>()
            .unwrap();
        for i in 0..batch.num_rows() {
            let vector = vectors.is_valid(i).then(|| {
                let values = vectors.value(i);
                let values = values.as_any().downcast_ref::<Float32Array>().unwrap();
                values.values().to_vec()
            });
            rows.push((ids.value(i).to_string(), vector));
        }
    }
    rows
}

fn assert_vectors(what: &str, actual: &[Vec<f32>], expected: &[Vec<f32>]) {
    assert_eq!(actual.len(), expected.len(), "{what}: rows");
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        let diff = max_abs_diff(a, e);
        assert!(diff <= TOLERANCE, "{what}: row {i} differs by {diff}");
    }
}

fn line_ids(count: usize) -> Vec<String> {
    (1..=count).map(|n| n.to_string()).collect()
}

fn ids_and_vectors(rows: Vec<(String, Option<Vec<f32>>)>) -> (Vec<String>, Vec<Vec<f32>>) {
    rows.into_iter()
        .map(|(id, v)| (id, v.expect("no error rows")))
        .unzip()
}

fn assert_success(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what}: {:?}\n{}",
        out.status,
        stderr(out)
    );
}

#[test]
fn bertctl_links_no_libtorch() {
    let out = run(Command::new("ldd").arg(bertctl_path()));
    assert_success("ldd", &out);
    let listing = String::from_utf8_lossy(&out.stdout);
    // Only the libraries' names: ldd also prints load addresses, and one such as 0x7f2a043c1000
    // holds "c10".
    let names: Vec<&str> = listing
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .collect();
    assert!(names.iter().any(|n| n.starts_with("libc.so")), "{listing}");
    for forbidden in ["torch", "c10", "cuda", "python"] {
        assert!(
            !names.iter().any(|n| n.contains(forbidden)),
            "bertctl needs no {forbidden}:\n{listing}"
        );
    }
}

#[test]
fn every_input_format_round_trips_with_its_ids_and_the_servers_vectors() {
    let server = Server::start("bert_tiny", &[]);
    // Commas, quotes and tabs inside texts: CSV and TSV must carry them.
    let mut texts = corpus(200, 30);
    texts[3] = "a text, with a comma".into();
    texts[7] = "a \"quoted\" text".into();
    let expected = reference(&server, &texts);
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name);

    write_lines(&path("in.txt"), &texts);
    let jsonl: Vec<String> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| serde_json::json!({"body": t, "key": format!("doc-{i}")}).to_string())
        .collect();
    write_lines(&path("in.jsonl"), &jsonl);
    let mut csv = csv_writer(&path("in.csv"), b',');
    let mut tsv = csv_writer(&path("in.tsv"), b'\t');
    for writer in [&mut csv, &mut tsv] {
        writer.write_record(["key", "body"]).unwrap();
        for (i, t) in texts.iter().enumerate() {
            writer
                .write_record([format!("doc-{i}").as_str(), t])
                .unwrap();
        }
        writer.flush().unwrap();
    }
    let doc_ids: Vec<String> = (0..texts.len()).map(|i| format!("doc-{i}")).collect();

    let cases: [(&str, &[&str], &Vec<String>); 4] = [
        ("in.txt", &[], &line_ids(texts.len())),
        (
            "in.jsonl",
            &["--text-field", "body", "--id-field", "key"],
            &doc_ids,
        ),
        (
            "in.csv",
            &["--text-field", "body", "--id-field", "key"],
            &doc_ids,
        ),
        (
            "in.tsv",
            &["--text-field", "body", "--id-field", "key"],
            &doc_ids,
        ),
    ];
    for (input, args, ids) in cases {
        let output = path(&format!("{input}.out.jsonl"));
        let out = run(encode(&[&server.url()], &path(input), &output).args(args));
        assert_success(input, &out);
        let (got_ids, vectors) = ids_and_vectors(read_jsonl(&output));
        assert_eq!(&got_ids, ids, "{input}: ids in input order");
        assert_vectors(input, &vectors, &expected);
    }

    // stdin in, stdout out.
    let mut child = encode(&[&server.url()], Path::new("-"), Path::new("-"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = texts.join("\n") + "\n";
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()).unwrap());
    let out = finish(child);
    writer.join().unwrap();
    assert_success("stdin to stdout", &out);
    std::fs::write(path("stdout.jsonl"), &out.stdout).unwrap();
    let (got_ids, vectors) = ids_and_vectors(read_jsonl(&path("stdout.jsonl")));
    assert_eq!(got_ids, line_ids(texts.len()));
    assert_vectors("stdin to stdout", &vectors, &expected);
}

fn csv_writer(path: &Path, delimiter: u8) -> csv::Writer<std::fs::File> {
    csv::WriterBuilder::new()
        .delimiter(delimiter)
        .from_path(path)
        .unwrap()
}

#[test]
fn every_output_format_holds_the_servers_vectors_in_input_order() {
    let server = Server::start("bert_tiny", &[]);
    let texts = corpus(500, 40);
    let expected = reference(&server, &texts);
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.txt");
    write_lines(&input, &texts);
    for name in ["out.jsonl", "out.npy", "out.parquet"] {
        let output = dir.path().join(name);
        let out = run(encode(&[&server.url()], &input, &output).args(["--batch", "7"]));
        assert_success(name, &out);
        let vectors = match name {
            "out.npy" => read_npy(&output),
            "out.parquet" => {
                let (ids, vectors) = ids_and_vectors(read_parquet(&output));
                assert_eq!(ids, line_ids(texts.len()));
                vectors
            }
            _ => {
                let (ids, vectors) = ids_and_vectors(read_jsonl(&output));
                assert_eq!(ids, line_ids(texts.len()));
                vectors
            }
        };
        assert_vectors(name, &vectors, &expected);
        assert!(
            !dir.path().join(format!("{name}.errors.jsonl")).exists(),
            "no errors file when nothing failed"
        );
    }
    // An existing output is not replaced by accident.
    let out = run(&mut encode(
        &[&server.url()],
        &input,
        &dir.path().join("out.npy"),
    ));
    assert_eq!(out.status.code(), Some(101));
    assert!(stderr(&out).contains("--resume"), "{}", stderr(&out));
}

#[test]
fn order_is_kept_across_four_streams_to_each_of_two_servers() {
    let servers = [
        Server::start("bert_tiny", &[]),
        Server::start("bert_tiny", &[]),
    ];
    let texts = corpus(3000, 40);
    let expected = reference(&servers[0], &texts);
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.txt");
    let output = dir.path().join("out.jsonl");
    write_lines(&input, &texts);
    let out = run(
        encode(&[&servers[0].url(), &servers[1].url()], &input, &output).args([
            "--streams",
            "4",
            "--batch",
            "3",
            "--window",
            "2",
        ]),
    );
    assert_success("encode", &out);
    let (ids, vectors) = ids_and_vectors(read_jsonl(&output));
    assert_eq!(ids, line_ids(texts.len()));
    assert_vectors("two servers", &vectors, &expected);
    for server in &servers {
        let computed = computed_inputs(server);
        assert!(computed > 0, "{} took part: {computed} inputs", server.addr);
    }
}

fn computed_inputs(server: &Server) -> u64 {
    runtime().block_on(async {
        let channel = wait_serving(&server.addr).await;
        stats(&channel).await.inputs_computed
    })
}

/// Waits (within `JOB_TIMEOUT`) until `ready` holds, then SIGKILLs the job, which must not have
/// finished by then.
fn kill_when(job: &mut std::process::Child, what: &str, ready: impl Fn() -> bool) {
    let started = Instant::now();
    while !ready() {
        assert!(
            job.try_wait().unwrap().is_none(),
            "the job was still running when {what}"
        );
        assert!(
            started.elapsed() < JOB_TIMEOUT,
            "{what} within {JOB_TIMEOUT:?}"
        );
        std::thread::sleep(POLL);
    }
    job.kill().unwrap();
    let status = job.wait().unwrap();
    assert!(!status.success(), "killed before it finished: {status:?}");
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

#[test]
fn a_killed_job_resumed_writes_the_bytes_of_an_uninterrupted_one() {
    // One input per forward pass: each vector is then the same bytes whatever the batching
    // (batches of different shapes round differently in the last bits), so any difference is
    // the client's. Some inputs are too long and fail, to cover the errors file too.
    let _alone = MID_JOB_KILLS.lock().unwrap_or_else(|e| e.into_inner());
    let server = Server::start("bert_tiny", &["--max-batch-size", "1"]);
    let mut texts = corpus(10_000, 8);
    const FAILING: i32 = 11;
    for i in (0..texts.len()).step_by(997) {
        texts[i] = "word ".repeat(MAX_TOKENS * 2);
    }
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.txt");
    write_lines(&input, &texts);
    let job = |output: &Path| {
        let mut command = encode(&[&server.url()], &input, output);
        command
            .args(["--truncate", "false", "--batch", "4", "--streams", "2"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        command
    };
    for name in ["whole.jsonl", "whole.npy", "whole.parquet"] {
        let whole = dir.path().join(name);
        let out = run(&mut job(&whole));
        assert_eq!(
            out.status.code(),
            Some(FAILING),
            "{name}: {FAILING} inputs failed"
        );

        let resumed = dir.path().join(name.replace("whole", "resumed"));
        let mut first = job(&resumed).spawn().unwrap();
        let parts = dir.path().join(format!("{}.parts", resumed.display()));
        kill_when(&mut first, "part of the output was written", || {
            if name.ends_with(".parquet") {
                // A whole part file (written under a temporary name, then renamed).
                std::fs::read_dir(&parts).is_ok_and(|mut d| {
                    d.any(|e| {
                        e.unwrap()
                            .file_name()
                            .to_string_lossy()
                            .ends_with(".parquet")
                    })
                })
            } else {
                file_len(&resumed) > file_len(&whole) / 3
            }
        });
        let out = run(job(&resumed).arg("--resume"));
        assert_eq!(out.status.code(), Some(FAILING), "{name} resumed");
        assert!(
            std::fs::read(&whole).unwrap() == std::fs::read(&resumed).unwrap(),
            "{name}: the resumed output is the uninterrupted one, byte for byte"
        );
        let errors = |p: &Path| std::fs::read(format!("{}.errors.jsonl", p.display())).unwrap();
        assert_eq!(
            errors(&whole),
            errors(&resumed),
            "{name}: the same errors file"
        );
        assert!(
            !parts.exists(),
            "the part files are gone once the output is whole"
        );
    }
    // Resuming against an input shorter than the output is refused, not left waiting.
    let short = dir.path().join("short.txt");
    write_lines(&short, &texts[..10]);
    let out =
        run(encode(&[&server.url()], &short, &dir.path().join("whole.jsonl")).arg("--resume"));
    assert_eq!(out.status.code(), Some(101));
    assert!(stderr(&out).contains("only 10 items"), "{}", stderr(&out));
}

#[test]
fn with_two_servers_killing_one_mid_job_still_answers_every_item_once() {
    let _alone = MID_JOB_KILLS.lock().unwrap_or_else(|e| e.into_inner());
    let mut doomed = Server::start("bert_tiny", &[]);
    let survivor = Server::start("bert_tiny", &[]);
    let texts = corpus(30_000, 30);
    let expected = reference(&survivor, &texts);
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.txt");
    let output = dir.path().join("out.jsonl");
    write_lines(&input, &texts);
    let mut job = encode(&[&doomed.url(), &survivor.url()], &input, &output)
        .args(["--batch", "8", "--retry-delay", "0.05"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while file_len(&output) < 200_000 {
        assert!(
            job.try_wait().unwrap().is_none(),
            "the job is still running"
        );
        assert!(started.elapsed() < JOB_TIMEOUT, "the job makes progress");
        std::thread::sleep(POLL);
    }
    doomed.process.kill();
    let out = finish(job);
    assert_success("the job", &out);
    assert!(
        stderr(&out).contains(&doomed.addr),
        "the lost server is reported: {}",
        stderr(&out)
    );
    let (ids, vectors) = ids_and_vectors(read_jsonl(&output));
    assert_eq!(ids, line_ids(texts.len()), "every item once, in order");
    assert_vectors("after losing a server", &vectors, &expected);
}

/// A host name whose addresses the test sets, as a headless Service's change when pods come and
/// go. Every lookup is counted, so a test can wait until the job has seen a change.
struct ScriptedDns {
    state: Mutex<(Vec<SocketAddr>, u64)>,
    looked_up: Condvar,
}

impl ScriptedDns {
    fn new(addrs: Vec<SocketAddr>) -> Arc<ScriptedDns> {
        Arc::new(ScriptedDns {
            state: Mutex::new((addrs, 0)),
            looked_up: Condvar::new(),
        })
    }

    /// Answers `addrs` from now on, and returns once the job has looked the name up twice
    /// more: its first lookup sees the change, and before asking again it has acted on it.
    fn change_to(&self, addrs: Vec<SocketAddr>) {
        let mut state = self.state.lock().unwrap();
        state.0 = addrs;
        let seen = state.1 + 2;
        let (_state, waited) = self
            .looked_up
            .wait_timeout_while(state, JOB_TIMEOUT, |state| state.1 < seen)
            .unwrap();
        assert!(!waited.timed_out(), "the job looks the name up again");
    }
}

impl bertctl::connect::Resolve for ScriptedDns {
    fn lookup<'a>(
        &'a self,
        _host: &'a str,
        _port: u16,
    ) -> futures_util::future::BoxFuture<'a, std::io::Result<Vec<SocketAddr>>> {
        let mut state = self.state.lock().unwrap();
        state.1 += 1;
        self.looked_up.notify_all();
        let addrs = state.0.clone();
        Box::pin(async move { Ok(addrs) })
    }
}

/// Feeds a job's input, a named pipe, one round of lines at a time, and waits for each round to
/// be computed by the servers.
struct Feed<'a> {
    pipe: std::fs::File,
    texts: &'a [String],
    written: usize,
    servers: &'a [&'a Server],
    computed_before: u64,
}

impl Feed<'_> {
    /// Inputs per round: whole messages of the job's `--batch`, so none waits for more lines.
    const ROUND: usize = 64;

    fn round(&mut self) {
        let lines = &self.texts[self.written..self.written + Self::ROUND];
        for line in lines {
            writeln!(self.pipe, "{line}").unwrap();
        }
        self.written += Self::ROUND;
        let started = Instant::now();
        while self.computed() < self.written as u64 {
            assert!(
                started.elapsed() < JOB_TIMEOUT,
                "{} inputs computed within {JOB_TIMEOUT:?}",
                self.written
            );
            std::thread::sleep(POLL);
        }
    }

    fn computed(&self) -> u64 {
        self.servers.iter().map(|s| computed_inputs(s)).sum::<u64>() - self.computed_before
    }
}

#[test]
fn a_name_whose_addresses_change_mid_job_moves_the_work_to_the_new_ones() {
    const BATCH: &str = "8";
    const ROUNDS_TO_REACH_A_NEW_ADDRESS: usize = 20;
    const ROUNDS_AFTER_RETIRING: usize = 3;
    let old = Server::start("bert_tiny", &[]);
    let new = Server::start("bert_tiny", &[]);
    let address = |server: &Server| server.addr.parse::<SocketAddr>().unwrap();
    let texts = corpus(
        (2 + ROUNDS_TO_REACH_A_NEW_ADDRESS + ROUNDS_AFTER_RETIRING) * Feed::ROUND,
        30,
    );
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.txt");
    let output = dir.path().join("out.jsonl");
    assert_success("mkfifo", &run(Command::new("mkfifo").arg(&input)));
    // Open for reading too, so that neither this open nor the job's waits for the other; the
    // job's input ends when this is closed.
    let pipe = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&input)
        .unwrap();

    let dns = ScriptedDns::new(vec![address(&old)]);
    let args: Vec<std::ffi::OsString> = vec![
        "bertctl".into(),
        "encode".into(),
        "--server".into(),
        "http://bertd.headless.test:50051".into(),
        "--batch".into(),
        BATCH.into(),
        "--resolve-every".into(),
        "0.05".into(),
        "--no-progress".into(),
        "-i".into(),
        input.clone().into(),
        "-o".into(),
        output.clone().into(),
    ];
    let (exit_tx, exit_rx) = std::sync::mpsc::channel();
    let job = {
        let dns = dns.clone();
        std::thread::spawn(move || {
            let _ = exit_tx.send(bertctl::run(args, dns));
        })
    };

    let servers = [&old, &new];
    let mut feed = Feed {
        pipe,
        texts: &texts,
        written: 0,
        computed_before: servers.iter().map(|s| computed_inputs(s)).sum(),
        servers: &servers,
    };
    let new_before = computed_inputs(&new);
    feed.round();
    assert_eq!(
        computed_inputs(&new),
        new_before,
        "not yet in DNS, not used"
    );

    dns.change_to(vec![address(&old), address(&new)]);
    let mut rounds = 0;
    while computed_inputs(&new) == new_before {
        assert!(
            rounds < ROUNDS_TO_REACH_A_NEW_ADDRESS,
            "an address new in DNS gets work within {ROUNDS_TO_REACH_A_NEW_ADDRESS} rounds"
        );
        feed.round();
        rounds += 1;
    }

    dns.change_to(vec![address(&new)]);
    let old_after = computed_inputs(&old);
    for _ in 0..ROUNDS_AFTER_RETIRING {
        feed.round();
    }
    assert_eq!(
        computed_inputs(&old),
        old_after,
        "an address gone from DNS gets no more work"
    );

    let written = feed.written;
    drop(feed);
    let exit = exit_rx
        .recv_timeout(JOB_TIMEOUT)
        .expect("the job ends when its input does");
    job.join().unwrap();
    assert_eq!(exit, bertctl::EXIT_OK);
    let (ids, vectors) = ids_and_vectors(read_jsonl(&output));
    assert_eq!(ids, line_ids(written), "every item once, in order");
    assert_vectors(
        "across changing addresses",
        &vectors,
        &reference(&new, &texts[..written]),
    );
}

#[test]
fn failed_inputs_are_listed_with_their_lines_and_counted_in_the_exit_status() {
    let server = Server::start("bert_tiny", &[]);
    let mut texts = corpus(100, 8);
    let too_long = [4, 40, 77];
    for i in too_long {
        texts[i] = "word ".repeat(MAX_TOKENS * 2);
    }
    let expected = reference(&server, &texts);
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.txt");
    let output = dir.path().join("out.jsonl");
    write_lines(&input, &texts);
    let out = run(encode(&[&server.url()], &input, &output).args(["--truncate", "false"]));
    assert_eq!(
        out.status.code(),
        Some(too_long.len() as i32),
        "{}",
        stderr(&out)
    );

    let errors = std::fs::read_to_string(dir.path().join("out.jsonl.errors.jsonl")).unwrap();
    let errors: Vec<Value> = errors
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(errors.len(), too_long.len());
    for (error, index) in errors.iter().zip(too_long) {
        assert_eq!(error["index"], index);
        assert_eq!(error["line"], index + 1);
        assert_eq!(error["id"], (index + 1).to_string());
        assert_eq!(error["code"], "INVALID_ARGUMENT");
        assert!(
            error["message"]
                .as_str()
                .unwrap()
                .contains("truncate is false")
        );
    }
    // Their rows hold the error; every other input, batched with them, has its vector.
    let rows = read_jsonl(&output);
    assert_eq!(rows.len(), texts.len());
    for (i, (row, expected)) in rows.iter().zip(&expected).enumerate() {
        match &row.1 {
            None => assert!(too_long.contains(&i), "row {i} failed"),
            Some(v) => assert!(max_abs_diff(v, expected) <= TOLERANCE, "row {i}"),
        }
    }
}

#[test]
fn bad_input_files_are_refused_naming_the_file_and_line() {
    let server = Server::start("bert_tiny", &[]);
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, &[u8], &[&str], &str); 5] = [
        (
            "json.jsonl",
            b"{\"text\": \"a\"}\n\n{\"text\": \"b\"\n",
            &[],
            ":3: not a JSON value",
        ),
        (
            "field.jsonl",
            b"{\"text\": \"a\"}\n{\"body\": \"b\"}\n",
            &[],
            ":2: no string field `text`",
        ),
        ("column.csv", b"id,body\n1,a\n", &[], ":1: no column `text`"),
        (
            "ragged.csv",
            b"id,text\n1,a\n2,b\n3,c,d\n",
            &["--id-field", "id"],
            ":4: not a valid record",
        ),
        ("bytes.txt", b"fine\n\xff\xfe\n", &[], ":2: not valid UTF-8"),
    ];
    for (name, content, args, message) in cases {
        let input = dir.path().join(name);
        std::fs::write(&input, content).unwrap();
        let output = dir.path().join(format!("{name}.out.jsonl"));
        let out = run(encode(&[&server.url()], &input, &output).args(args));
        assert_eq!(out.status.code(), Some(101), "{name}: {}", stderr(&out));
        let expected = format!("{}{message}", input.display());
        assert!(
            stderr(&out).contains(&expected),
            "{name}: {} lacks {expected}",
            stderr(&out)
        );
    }
}

#[test]
fn classify_writes_each_inputs_labels_in_input_order() {
    let server = Server::start("classifier_single", &[]);
    let texts = corpus(120, 30);
    let expected: Vec<Vec<(String, f32)>> = runtime().block_on(async {
        let channel = wait_serving(&server.addr).await;
        let mut client = pb::classifier_client::ClassifierClient::new(channel);
        let request = pb::ClassifyRequest {
            id: String::new(),
            inputs: texts.iter().map(|t| input(t)).collect(),
            options: None,
        };
        let response = client.classify(request).await.unwrap().into_inner();
        response
            .results
            .into_iter()
            .map(|r| r.labels.into_iter().map(|l| (l.label, l.score)).collect())
            .collect()
    });
    let dir = tempfile::tempdir().unwrap();
    let input_path = dir.path().join("in.txt");
    let output = dir.path().join("labels.jsonl");
    write_lines(&input_path, &texts);
    let out = run(bertctl()
        .args([
            "classify",
            "--server",
            &server.url(),
            "--streams",
            "3",
            "--batch",
            "5",
            "-i",
        ])
        .arg(&input_path)
        .arg("-o")
        .arg(&output));
    assert_success("classify", &out);
    let rows: Vec<Value> = std::fs::read_to_string(&output)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), texts.len());
    for (i, (row, expected)) in rows.iter().zip(&expected).enumerate() {
        assert_eq!(row["id"], (i + 1).to_string());
        let labels = row["labels"].as_array().unwrap();
        assert_eq!(labels.len(), expected.len());
        for (label, (name, score)) in labels.iter().zip(expected) {
            assert_eq!(label["label"].as_str().unwrap(), name);
            let diff = (label["score"].as_f64().unwrap() as f32 - score).abs();
            assert!(diff <= TOLERANCE, "row {i}: score differs by {diff}");
        }
    }
    // Labels do not fit a matrix: asked for one, bertctl says what to use.
    let out = run(bertctl()
        .args(["classify", "--server", &server.url(), "-i"])
        .arg(&input_path)
        .arg("-o")
        .arg(dir.path().join("labels.npy")));
    assert_eq!(out.status.code(), Some(102));
    assert!(stderr(&out).contains("JSON lines"), "{}", stderr(&out));
}

#[test]
fn a_job_reports_one_json_summary_when_stderr_is_not_a_terminal() {
    let server = Server::start("bert_tiny", &[]);
    let texts = corpus(50, 10);
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.txt");
    write_lines(&input, &texts);
    let out = run(&mut encode(
        &[&server.url()],
        &input,
        &dir.path().join("out.jsonl"),
    ));
    assert_success("encode", &out);
    let text = stderr(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {text}");
    let summary: Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(summary["items"], texts.len());
    assert_eq!(summary["failed"], 0);
    assert!(summary["tokens"].as_u64().unwrap() > texts.len() as u64);
}

#[test]
fn a_job_on_a_terminal_draws_a_progress_bar_and_ends_with_a_readable_summary() {
    let server = Server::start("bert_tiny", &[]);
    // Long enough for the bar to be drawn with its rates (it refreshes every few hundred ms).
    let texts = corpus(20_000, 10);
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.txt");
    write_lines(&input, &texts);
    let command = format!(
        "{} encode --server {} -i {} -o {}",
        bertctl_path().display(),
        server.url(),
        input.display(),
        dir.path().join("out.npy").display()
    );
    // util-linux `script` runs the job on a pseudo-terminal, as a user's shell would.
    let out = run(Command::new("script").args(["-qec", &command, "/dev/null"]));
    assert_success("on a terminal", &out);
    let screen = String::from_utf8_lossy(&out.stdout);
    assert!(
        screen.contains("items/s") && screen.contains("ETA"),
        "a bar: {screen}"
    );
    assert!(
        screen.contains(&format!("encoded {} items (0 failed)", texts.len())),
        "a summary for people: {screen}"
    );
    assert!(
        !screen.contains("\"items_per_second\""),
        "no JSON on a terminal: {screen}"
    );
}

#[test]
fn tokenize_info_and_health_make_one_call_each() {
    let mut server = Server::start("bert_tiny", &[]);
    let url = server.url();
    let out = run(bertctl().args(["info", "--server", &url]));
    assert_success("info", &out);
    let info: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["hidden_size"], 32);
    assert_eq!(info["limits"]["max_input_tokens"], MAX_TOKENS);

    let out = run(bertctl().args(["tokenize", "--server", &url, "hello world", "a"]));
    assert_success("tokenize", &out);
    let results: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(results.len(), 2);
    assert_eq!(results[0]["tokens"][0]["text"], "[CLS]");
    assert_eq!(results[0]["tokens"][1]["text"], "hello");

    let out = run(bertctl().args(["health", "--server", &url]));
    assert_success("health", &out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("SERVING"));
    server.process.kill();
    let out = run(bertctl().args(["health", "--server", &url, "--connect-timeout", "2"]));
    assert_eq!(out.status.code(), Some(1), "a dead server is not healthy");
    assert!(String::from_utf8_lossy(&out.stdout).contains("UNREACHABLE"));
}

#[test]
fn over_tls_with_an_api_key_jobs_run_and_a_refused_key_stops_the_job_at_once() {
    const KEY: &str = "bertctl-test-key-5d1c9a7e";
    let ca = Ca::new("bertctl test CA");
    let (cert, key) = ca.server_cert();
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name);
    std::fs::write(path("tls.crt"), cert).unwrap();
    std::fs::write(path("tls.key"), key).unwrap();
    std::fs::write(path("ca.crt"), &ca.pem).unwrap();
    std::fs::write(path("keys"), format!("jobs {KEY}\n")).unwrap();
    let addr = free_addr();
    let _server = Running::spawn(process::secured(
        &mut process::serve(&addr, &model_dir("bert_tiny")),
        &path("tls.crt"),
        &path("tls.key"),
        &path("keys"),
    ));
    let port = addr.rsplit_once(':').unwrap().1;
    // The certificate names localhost; the health check is open, so it shows readiness.
    let url = format!("https://localhost:{port}");
    let started = Instant::now();
    while !run(bertctl()
        .args(["health", "--server", &url, "--ca"])
        .arg(path("ca.crt")))
    .status
    .success()
    {
        assert!(
            started.elapsed() < process::START_TIMEOUT,
            "the server starts"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let texts = corpus(40, 10);
    write_lines(&path("in.txt"), &texts);
    let job = |key: Option<&str>, output: &str| {
        let mut command = encode(&[&url], &path("in.txt"), &path(output));
        command.arg("--ca").arg(path("ca.crt"));
        if let Some(key) = key {
            command.env("BERTD_API_KEY", key);
        }
        run(&mut command)
    };
    let out = job(Some(KEY), "keyed.jsonl");
    assert_success("with the key", &out);
    assert_eq!(read_jsonl(&path("keyed.jsonl")).len(), texts.len());

    std::fs::write(path("key.txt"), format!("{KEY}\n")).unwrap();
    let out = run(bertctl()
        .args(["info", "--server", &url, "--ca"])
        .arg(path("ca.crt"))
        .arg("--api-key-file")
        .arg(path("key.txt")));
    assert_success("info with a key file", &out);

    for (key, output) in [
        (None, "keyless.jsonl"),
        (Some("wrong-key-0123456789"), "wrong.jsonl"),
    ] {
        let started = Instant::now();
        let out = job(key, output);
        assert_eq!(out.status.code(), Some(101), "{}", stderr(&out));
        assert!(stderr(&out).contains("UNAUTHENTICATED"), "{}", stderr(&out));
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "a refused key stops the job instead of retrying: {:?}",
            started.elapsed()
        );
    }
    // A client that does not trust the server's CA does not send it anything.
    let out = run(bertctl()
        .args(["info", "--server", &url])
        .env("BERTD_API_KEY", KEY));
    assert_eq!(out.status.code(), Some(101));
}
