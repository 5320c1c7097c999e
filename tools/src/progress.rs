//! A progress line on stderr: count, rate and time left. Redrawn in place on a terminal; on a pipe or
//! a log file, one line every 10% (so CI logs stay readable).

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

pub struct Progress {
    label: String,
    unit: String,
    total: usize,
    done: usize,
    start: Instant,
    last_draw: Instant,
    last_decile: usize,
    tty: bool,
}

fn hms(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, s / 60 % 60)
    } else {
        format!("{}m{:02}s", s / 60, s % 60)
    }
}

impl Progress {
    pub fn new(label: &str, unit: &str, total: usize) -> Progress {
        let now = Instant::now();
        Progress {
            label: label.to_string(),
            unit: unit.to_string(),
            total,
            done: 0,
            start: now,
            last_draw: now - Duration::from_secs(1),
            last_decile: 0,
            tty: std::io::stderr().is_terminal(),
        }
    }

    /// Records `n` more units done.
    pub fn add(&mut self, n: usize) {
        self.done += n;
        let decile = (self.done * 10).checked_div(self.total).unwrap_or(10);
        if self.tty && self.last_draw.elapsed() >= Duration::from_millis(200) {
            self.draw(false);
        } else if !self.tty && decile > self.last_decile {
            self.last_decile = decile;
            self.draw(true);
        }
    }

    /// Prints `message` on its own line: on a terminal over the progress line (which is redrawn below
    /// it by the next `add`), elsewhere as a plain line.
    pub fn message(&self, message: &str) {
        if self.tty {
            eprintln!("\r\x1b[K{message}");
        } else {
            eprintln!("{message}");
        }
    }

    fn line(&self) -> String {
        let secs = self.start.elapsed().as_secs_f64();
        let rate = self.done as f64 / secs.max(1e-9);
        let left = if rate > 0.0 {
            (self.total.saturating_sub(self.done)) as f64 / rate
        } else {
            0.0
        };
        let width = 24;
        let filled = (self.done * width).checked_div(self.total).unwrap_or(width).min(width);
        format!(
            "{} [{}{}] {}/{} {} {:.2} {}/s, {} elapsed, {} left",
            self.label,
            "#".repeat(filled),
            " ".repeat(width - filled),
            self.done,
            self.total,
            self.unit,
            rate,
            self.unit,
            hms(secs),
            hms(left)
        )
    }

    fn draw(&mut self, newline: bool) {
        let mut e = std::io::stderr();
        let _ = if newline {
            writeln!(e, "{}", self.line())
        } else {
            write!(e, "\r{}", self.line())
        };
        let _ = e.flush();
        self.last_draw = Instant::now();
    }

    /// Final line.
    pub fn finish(mut self) {
        if self.tty {
            self.draw(false);
            eprintln!();
        } else if self.last_decile < 10 {
            self.draw(true);
        }
    }
}
