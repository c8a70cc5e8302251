//! bertctl's command line on its own (no server): help, and refusals that name the problem with
//! the documented exit statuses. (The jobs themselves are tested against real servers in the
//! workspace's tests/bertctl.rs; this test target also makes `cargo test --workspace` build the
//! binary that those tests run.)
use std::process::{Command, Output};

/// The exit status for a command line that does not parse.
const EXIT_USAGE: i32 = 102;
/// The exit status when a job cannot run.
const EXIT_FATAL: i32 = 101;

fn bertctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bertctl"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn help_lists_every_command_and_the_exit_statuses() {
    let out = bertctl(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    for command in [
        "encode",
        "classify",
        "tokenize",
        "info",
        "health",
        "Exit status",
    ] {
        assert!(help.contains(command), "help mentions {command}: {help}");
    }
}

#[test]
fn a_command_line_that_does_not_parse_exits_with_the_usage_status() {
    let cases: [&[&str]; 4] = [
        &["frobnicate"],
        &["encode", "-o", "out.jsonl"],
        &[
            "encode",
            "-i",
            "in.txt",
            "-o",
            "out.jsonl",
            "--streams",
            "0",
        ],
        &[
            "encode",
            "-i",
            "in.txt",
            "-o",
            "out.jsonl",
            "--resume",
            "--overwrite",
        ],
    ];
    for args in cases {
        let out = bertctl(args);
        assert_eq!(out.status.code(), Some(EXIT_USAGE), "{args:?}");
        assert!(!out.stderr.is_empty(), "{args:?} says why");
    }
}

#[test]
fn a_job_that_cannot_run_says_why_before_contacting_a_server() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.txt");
    std::fs::write(&input, "hello\n").unwrap();
    let input = input.to_str().unwrap();
    let cases: [(&[&str], &str); 3] = [
        (
            &["encode", "-i", input, "-o", "-", "--resume"],
            "--resume needs an output file",
        ),
        (
            &["encode", "-i", "/nonexistent/in.txt", "-o", "-"],
            "/nonexistent/in.txt",
        ),
        (
            &[
                "encode",
                "-i",
                input,
                "-o",
                "-",
                "--server",
                "localhost:50051",
            ],
            "scheme",
        ),
    ];
    for (args, message) in cases {
        let out = bertctl(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(EXIT_FATAL), "{args:?}: {stderr}");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
    }
}
