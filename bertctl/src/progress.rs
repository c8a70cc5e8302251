//! What a job tells its user: a progress bar on a terminal (items/s, tokens/s, ETA from the
//! input's size), warnings above it, and one summary line at the end. When stderr is not a
//! terminal there is no bar and the summary is one JSON object, for scripts.
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::job::Totals;
use crate::outcome::Done;

#[derive(Clone)]
pub struct Progress {
    bar: ProgressBar,
    terminal: bool,
    verb: &'static str,
    state: Arc<Mutex<State>>,
}

struct State {
    started: Instant,
    last_message: Instant,
    resumed_from: u64,
    errors: Option<(u64, PathBuf)>,
}

/// How often the bar's rates are recomputed.
const MESSAGE_EVERY: Duration = Duration::from_millis(200);

impl Progress {
    /// `size`: the input's bytes, when known (a file), for the ETA.
    pub fn new(
        verb: &'static str,
        size: Option<u64>,
        resumed_from: u64,
        enabled: bool,
    ) -> Progress {
        let terminal = enabled && std::io::stderr().is_terminal();
        let bar = if !terminal {
            ProgressBar::hidden()
        } else if let Some(size) = size {
            let bar = ProgressBar::with_draw_target(Some(size), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {wide_bar} {percent:>3}% ETA {eta} {msg}",
                )
                .expect("a valid template"),
            );
            bar
        } else {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}")
                    .expect("a valid template"),
            );
            bar
        };
        bar.enable_steady_tick(Duration::from_millis(250));
        let now = Instant::now();
        Progress {
            bar,
            terminal,
            verb,
            state: Arc::new(Mutex::new(State {
                started: now,
                last_message: now,
                resumed_from,
                errors: None,
            })),
        }
    }

    /// One more item written.
    pub fn advance(&self, done: &Done, totals: &Totals) {
        if !self.terminal {
            return;
        }
        self.bar.set_position(done.end);
        let mut state = self.state.lock().expect("progress state");
        if state.last_message.elapsed() < MESSAGE_EVERY {
            return;
        }
        state.last_message = Instant::now();
        let seconds = state.started.elapsed().as_secs_f64().max(1e-9);
        self.bar.set_message(format!(
            "{} items · {:.0} items/s · {:.0} tokens/s · {} failed",
            totals.items,
            totals.items as f64 / seconds,
            totals.tokens as f64 / seconds,
            totals.failed
        ));
    }

    pub fn set_errors(&self, count: u64, path: &Path) {
        if count > 0 {
            self.state.lock().expect("progress state").errors = Some((count, path.to_path_buf()));
        }
    }

    /// A line above the bar (or on stderr).
    pub fn warn(&self, message: &str) {
        if self.terminal {
            self.bar.println(format!("warning: {message}"));
        } else {
            eprintln!("warning: {message}");
        }
    }

    /// The summary line: human on a terminal, JSON otherwise.
    pub fn finish(&self, totals: &Totals, elapsed: Duration) {
        self.bar.finish_and_clear();
        let state = self.state.lock().expect("progress state");
        let seconds = elapsed.as_secs_f64().max(1e-9);
        let (errors, errors_file) = match &state.errors {
            Some((count, path)) => (*count, Some(path.display().to_string())),
            None => (0, None),
        };
        if self.terminal {
            let mut line = format!(
                "{} {} items ({} failed) · {} tokens · {:.1} s · {:.0} items/s · {:.0} tokens/s",
                self.verb,
                totals.items,
                totals.failed,
                totals.tokens,
                seconds,
                totals.items as f64 / seconds,
                totals.tokens as f64 / seconds
            );
            if state.resumed_from > 0 {
                line.push_str(&format!(" · resumed after {}", state.resumed_from));
            }
            if let Some(file) = &errors_file {
                line.push_str(&format!(" · {errors} errors in {file}"));
            }
            eprintln!("{line}");
        } else {
            let summary = serde_json::json!({
                "items": totals.items,
                "failed": totals.failed,
                "tokens": totals.tokens,
                "seconds": seconds,
                "items_per_second": totals.items as f64 / seconds,
                "tokens_per_second": totals.tokens as f64 / seconds,
                "resumed_from": state.resumed_from,
                "errors": errors,
                "errors_file": errors_file,
            });
            eprintln!("{summary}");
        }
    }
}
