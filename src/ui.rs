//! How simat talks to the terminal: decided once, from whether stderr is a terminal, `NO_COLOR`,
//! `TERM=dumb` and `--quiet`. Status lines and progress go to stderr; data goes to stdout.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The output style of one invocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputStyle {
    /// A terminal: progress bars and colour.
    Terminal,
    /// A terminal without colour (`NO_COLOR` or `TERM=dumb`): progress bars, no colour.
    TerminalNoColor,
    /// A pipe or a file: plain status lines, no progress bars.
    Plain,
    /// Nothing but errors.
    Quiet,
}

/// Terminal manners for one invocation.
#[derive(Debug, Clone)]
pub struct Ui {
    /// The chosen style.
    pub style: OutputStyle,
    /// Show stale reasons and per-stage details.
    pub verbose: bool,
}

impl Ui {
    /// Decide the style from the environment.
    pub fn detect(quiet: bool, verbose: bool) -> Ui {
        let style = if quiet {
            OutputStyle::Quiet
        } else if !std::io::stderr().is_terminal() {
            OutputStyle::Plain
        } else if std::env::var_os("NO_COLOR").is_some()
            || std::env::var("TERM").map(|t| t == "dumb").unwrap_or(false)
        {
            OutputStyle::TerminalNoColor
        } else {
            OutputStyle::Terminal
        };
        Ui { style, verbose }
    }

    /// A UI that prints nothing (library use, tests).
    pub fn quiet() -> Ui {
        Ui {
            style: OutputStyle::Quiet,
            verbose: false,
        }
    }

    /// A status line with a right-aligned verb, cargo style: `     Running ingest`.
    pub fn status(&self, verb: &str, message: impl std::fmt::Display) {
        match self.style {
            OutputStyle::Quiet => {}
            OutputStyle::Terminal => eprintln!("\x1b[1;32m{verb:>12}\x1b[0m {message}"),
            _ => eprintln!("{verb:>12} {message}"),
        }
    }

    /// A warning line.
    pub fn warn(&self, message: impl std::fmt::Display) {
        match self.style {
            OutputStyle::Quiet => {}
            OutputStyle::Terminal => eprintln!("\x1b[1;33mwarning\x1b[0m: {message}"),
            _ => eprintln!("warning: {message}"),
        }
    }

    /// Progress over `len` units: a bar on a terminal; elsewhere (a pipe, a log file, a job
    /// under a scheduler) an `info` event of the `simat::progress` target at each tenth, so the
    /// log shows the job is alive. Finish it with `finish_and_clear`.
    pub fn progress(&self, len: u64, unit: &str, message: &str) -> Progress {
        let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
        let mut log = None;
        match self.style {
            OutputStyle::Terminal | OutputStyle::TerminalNoColor => {
                let template = format!(
                    "{{prefix:>12}} [{{bar:30}}] {{human_pos}}/{{human_len}} {unit} ({{per_sec}}, {{eta}}) {{msg}}"
                );
                if let Ok(style) = ProgressStyle::with_template(&template) {
                    bar.set_style(style.progress_chars("=> "));
                }
                bar.set_prefix(message.to_string());
                bar.enable_steady_tick(Duration::from_millis(200));
            }
            OutputStyle::Plain => {
                bar.set_draw_target(ProgressDrawTarget::hidden());
                log = Some(ProgressLog {
                    what: message.to_string(),
                    unit: unit.to_string(),
                    len,
                    done: AtomicU64::new(0),
                    next_tenth: AtomicU64::new(1),
                    start: Instant::now(),
                });
            }
            OutputStyle::Quiet => bar.set_draw_target(ProgressDrawTarget::hidden()),
        }
        Progress { bar, log }
    }
}

impl Ui {
    /// A state that changes, such as the jobs a follower watches: one line redrawn in place on
    /// a terminal; elsewhere each new state is a status line of its own, so a log reads as a
    /// line per change.
    pub fn ticker(&self, verb: &str) -> Ticker {
        let bar = match self.style {
            OutputStyle::Terminal | OutputStyle::TerminalNoColor => {
                let bar = ProgressBar::new_spinner();
                if let Ok(style) = ProgressStyle::with_template("{prefix:>12} {msg}") {
                    bar.set_style(style);
                }
                bar.set_prefix(verb.to_string());
                Some(bar)
            }
            _ => None,
        };
        Ticker {
            ui: self.clone(),
            verb: verb.to_string(),
            bar,
            last: std::cell::RefCell::new(String::new()),
        }
    }
}

/// See [`Ui::ticker`].
#[derive(Debug)]
pub struct Ticker {
    ui: Ui,
    verb: String,
    bar: Option<ProgressBar>,
    last: std::cell::RefCell<String>,
}

impl Ticker {
    /// The new state; nothing happens when it is the last one. Says whether it changed.
    pub fn set(&self, state: &str) -> bool {
        let mut last = self.last.borrow_mut();
        if *last == state {
            return false;
        }
        *last = state.to_string();
        match &self.bar {
            Some(bar) => bar.set_message(state.to_string()),
            None => self.ui.status(&self.verb, state),
        }
        true
    }

    /// Done: clear the line.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Progress of a long stage: see [`Ui::progress`].
#[derive(Debug)]
pub struct Progress {
    bar: ProgressBar,
    log: Option<ProgressLog>,
}

#[derive(Debug)]
struct ProgressLog {
    what: String,
    unit: String,
    len: u64,
    done: AtomicU64,
    next_tenth: AtomicU64,
    start: Instant,
}

impl Progress {
    /// `n` more units done.
    pub fn inc(&self, n: u64) {
        self.bar.inc(n);
        let Some(l) = &self.log else { return };
        let done = l.done.fetch_add(n, Ordering::Relaxed) + n;
        let tenth = (done * 10).checked_div(l.len).unwrap_or(10);
        let next = l.next_tenth.load(Ordering::Relaxed);
        if tenth >= next
            && l.next_tenth
                .compare_exchange(next, tenth + 1, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::info!(
                target: "simat::progress",
                "{}: {done}/{} {} ({}%) in {:.1}s",
                l.what,
                l.len,
                l.unit,
                (done * 100).checked_div(l.len).unwrap_or(100),
                l.start.elapsed().as_secs_f64()
            );
        }
    }

    /// `pos` units done in all.
    pub fn set_position(&self, pos: u64) {
        let done = self
            .log
            .as_ref()
            .map_or(self.bar.position(), |l| l.done.load(Ordering::Relaxed));
        if pos > done {
            self.inc(pos - done);
        }
    }

    /// Done: clear the bar.
    pub fn finish_and_clear(&self) {
        self.bar.finish_and_clear();
    }
}
