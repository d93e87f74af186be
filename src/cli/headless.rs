//! What the headless exploration commands share: opening a session on the journal's cache,
//! driving its requests to the end with a progress bar on a terminal (a line every 10 s
//! when stderr is not a terminal; nothing with `--quiet`), and the output formats.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::explore::SessionArgs;
use crate::explore::jobs::{Executor, Runner, WorkerMsg, drive};
use crate::explore::journal::JournalWriter;
use crate::explore::session::{Notice, Request, Session, SessionOptions};
use crate::explore::setup::Setup;

/// How a command prints its result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum TableFormat {
    #[default]
    Text,
    Json,
    Csv,
}

/// Options every headless exploration command takes.
#[derive(Debug, Clone, clap::Args)]
pub struct Quiet {
    /// No progress bar and no notes on stderr (errors still).
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

/// A session opened for a headless command.
pub struct Headless {
    pub setup: Setup,
    pub session: Session,
    runner: Runner,
    journal: Option<JournalWriter>,
    quiet: bool,
}

impl Headless {
    pub fn open(args: &SessionArgs, options: SessionOptions, quiet: bool) -> anyhow::Result<Self> {
        let setup = Setup::open(&args.setup_options())?;
        if !quiet {
            for n in &setup.notes {
                eprintln!("{n}");
            }
        }
        let session = setup.session(options);
        let runner = Runner::new(setup.evaluator.clone(), args.threads)?;
        let journal = setup.journal_writer(runner.sender())?;
        Ok(Headless {
            setup,
            session,
            runner,
            journal,
            quiet,
        })
    }

    /// Carries out `requests` and what follows from them until the session is idle, with a
    /// progress bar labelled `what`. Errors the session reports are printed (they are
    /// recorded as failed points); other notices only without `--quiet`.
    pub fn run(&mut self, what: &str, requests: Vec<Request>) {
        let terminal = std::io::stderr().is_terminal();
        // Off a terminal (a log, CI): a compact line at most every 10 s and at the end.
        let lines = !self.quiet && !terminal && !requests.is_empty();
        let start = Instant::now();
        let mut shown: Option<(Instant, usize)> = None;
        let bar = if self.quiet || !terminal || requests.is_empty() {
            ProgressBar::hidden()
        } else {
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template(
                "{msg} [{bar:30}] {pos}/{len} {elapsed_precise} (eta {eta})",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            bar.set_style(style);
            bar.set_message(what.to_string());
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        };
        let mut exec = Executor {
            runner: &mut self.runner,
            journal: self.journal.as_ref(),
            plot: None,
        };
        let quiet = self.quiet;
        let mut watch = |session: &Session, msg: &WorkerMsg| {
            if let WorkerMsg::Progress { done, total, .. } = msg {
                bar.set_length(*total as u64);
                bar.set_position(*done as u64);
                let due = match shown {
                    None => true,
                    Some((at, last)) => {
                        *done != last && (done == total || at.elapsed() >= Duration::from_secs(10))
                    }
                };
                if lines && due {
                    eprintln!(
                        "{what}: {done}/{total} points, {:.1} s",
                        start.elapsed().as_secs_f64()
                    );
                    shown = Some((Instant::now(), *done));
                }
            }
            let _ = session;
        };
        drive(&mut self.session, &mut exec, requests, &mut watch, &|| {
            false
        });
        bar.finish_and_clear();
        for n in self.session.take_notices() {
            match n {
                Notice::Error(e) => eprintln!("error: {e}"),
                Notice::Info(i) if !quiet => eprintln!("{i}"),
                Notice::Info(_) => {}
            }
        }
    }
}

/// `60s`, `2m`, `90` (seconds) → a duration.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| c.is_alphabetic()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("\"{s}\" is not a duration; write e.g. 60s or 2m"))?;
    let mult = match unit.trim() {
        "" | "s" => 1.0,
        "ms" => 1e-3,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        other => return Err(format!("unknown time unit \"{other}\"; use ms, s, m or h")),
    };
    if !(v > 0.0 && v.is_finite()) {
        return Err(format!("\"{s}\": a duration must be positive"));
    }
    Ok(Duration::from_secs_f64(v * mult))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("0s").is_err());
    }
}
