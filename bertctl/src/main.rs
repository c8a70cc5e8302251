//! The `bertctl` binary: the library's command line, with the system's resolver.
use std::process::ExitCode;
use std::sync::Arc;

fn main() -> ExitCode {
    ExitCode::from(bertctl::run(
        std::env::args_os(),
        Arc::new(bertctl::connect::SystemResolver),
    ))
}
