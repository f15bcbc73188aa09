//! Progress reporting on stderr: a line redrawn in place on a terminal, a
//! plain line every few seconds otherwise (logs, CI), so long warms show
//! life without flooding a log file.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// How often the caller should offer a new line (and a terminal redraws).
pub(crate) const REDRAW_INTERVAL: Duration = Duration::from_millis(200);
/// How often a line is printed when stderr is not a terminal.
const LOG_LINE_INTERVAL: Duration = Duration::from_secs(5);
/// Width of the bar drawn on a terminal.
const BAR_CELLS: usize = 24;

pub(crate) struct Progress {
    tty: bool,
    last_line: Option<Instant>,
    drawn: bool,
}

impl Progress {
    pub fn new() -> Progress {
        Progress {
            tty: std::io::stderr().is_terminal(),
            last_line: None,
            drawn: false,
        }
    }

    /// Offer a new status; printed if it is due. `fraction` (0..=1), when
    /// known, draws a bar on a terminal.
    pub fn update(&mut self, fraction: Option<f64>, line: impl FnOnce() -> String) {
        let now = Instant::now();
        let interval = if self.tty {
            REDRAW_INTERVAL
        } else {
            LOG_LINE_INTERVAL
        };
        if self
            .last_line
            .is_some_and(|t| now.duration_since(t) < interval)
        {
            return;
        }
        self.last_line = Some(now);
        let mut err = std::io::stderr().lock();
        if self.tty {
            let bar = fraction.map(bar).unwrap_or_default();
            let _ = write!(err, "\r\x1b[2K{bar}{}", line());
            let _ = err.flush();
            self.drawn = true;
        } else {
            let _ = writeln!(err, "{}", line());
        }
    }

    /// Print `line` now, whatever the interval (phase changes).
    pub fn force(&mut self, fraction: Option<f64>, line: impl FnOnce() -> String) {
        self.last_line = None;
        self.update(fraction, line);
    }

    /// Clear the in-place line so the summary starts on a clean one.
    pub fn finish(&mut self) {
        if self.tty && self.drawn {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
            self.drawn = false;
        }
    }
}

/// `[#########...............] ` for a fraction in 0..=1.
fn bar(fraction: f64) -> String {
    let filled = ((fraction.clamp(0.0, 1.0) * BAR_CELLS as f64).round() as usize).min(BAR_CELLS);
    format!(
        "[{}{}] ",
        "#".repeat(filled),
        ".".repeat(BAR_CELLS - filled)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars() {
        assert_eq!(bar(0.0), format!("[{}] ", ".".repeat(BAR_CELLS)));
        assert_eq!(bar(1.0), format!("[{}] ", "#".repeat(BAR_CELLS)));
        assert_eq!(bar(2.0), bar(1.0));
        assert_eq!(bar(0.5).matches('#').count(), BAR_CELLS / 2);
    }
}
