//! The end of a child's stderr, kept for its crash report: the last lines,
//! bounded in lines and in bytes. The manager keeps one for every instance
//! that has crashed, for as long as it runs, so what a child prints (a long
//! log line, a flood) must not decide how much memory that takes.

use std::collections::VecDeque;

/// Lines of stderr kept from a crashed process.
pub const LINES: usize = 20;
/// Bytes of stderr kept from a crashed process: some ten lines of a log, or
/// the end of a traceback.
pub const BYTES: usize = 2048;

/// The last lines a process wrote to stderr, within [`LINES`] and [`BYTES`].
#[derive(Debug, Default)]
pub struct StderrTail {
    lines: VecDeque<String>,
    bytes: usize,
}

impl StderrTail {
    /// Keeps `line` (cut to [`BYTES`]), dropping the oldest lines beyond the bounds.
    pub fn push(&mut self, line: &str) {
        let line = cut(line, BYTES);
        self.bytes += line.len();
        self.lines.push_back(line);
        while self.lines.len() > LINES || self.bytes > BYTES {
            match self.lines.pop_front() {
                Some(oldest) => self.bytes -= oldest.len(),
                None => break,
            }
        }
    }

    /// The lines, oldest first.
    pub fn take(&mut self) -> Vec<String> {
        self.bytes = 0;
        let mut lines: Vec<String> = std::mem::take(&mut self.lines).into();
        lines.shrink_to_fit();
        lines
    }
}

/// `line` cut to at most `max` bytes on a character boundary, marked with an
/// ellipsis where it was cut.
fn cut(line: &str, max: usize) -> String {
    if line.len() <= max {
        return line.to_owned();
    }
    let mut end = max - '…'.len_utf8();
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &line[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_lines_are_kept_oldest_first() {
        let mut tail = StderrTail::default();
        for n in 0..LINES + 5 {
            tail.push(&format!("line {n}"));
        }
        let lines = tail.take();
        assert_eq!(lines.len(), LINES);
        assert_eq!(lines[0], "line 5");
        assert_eq!(lines[LINES - 1], format!("line {}", LINES + 4));
        assert!(tail.take().is_empty());
    }

    #[test]
    fn long_lines_are_cut_and_the_tail_stays_within_its_bytes() {
        let mut tail = StderrTail::default();
        tail.push("short");
        tail.push(&"é".repeat(BYTES));
        let lines = tail.take();
        assert_eq!(lines.len(), 1, "the long line pushed the short one out");
        assert!(lines[0].len() <= BYTES && lines[0].ends_with('…'));
        for _ in 0..LINES {
            tail.push(&"x".repeat(BYTES / 4));
        }
        let lines = tail.take();
        assert!(lines.iter().map(String::len).sum::<usize>() <= BYTES);
        assert_eq!(lines.len(), 4);
    }
}
