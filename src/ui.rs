//! How simat talks to the terminal: decided once, from whether stderr is a terminal, `NO_COLOR`,
//! `TERM=dumb` and `--quiet`. Status lines and progress go to stderr; data goes to stdout.

use std::io::IsTerminal;
use std::time::Duration;

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

    /// A progress bar over `len` units (hidden unless on a terminal); finish it with
    /// `finish_and_clear`.
    pub fn progress(&self, len: u64, unit: &str, message: &str) -> ProgressBar {
        let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
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
            _ => bar.set_draw_target(ProgressDrawTarget::hidden()),
        }
        bar
    }
}
