//! Standard output that never panics: a reader that went away (`ocs … |
//! head`) silences the rest, so the command's exit code still tells its
//! result; a write that fails otherwise (a full disk, `/dev/full`) is an error.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

/// Standard output could not be written. A closed pipe is not this.
#[derive(Debug, thiserror::Error)]
#[error("cannot write to standard output: {0}")]
pub struct StdoutError(std::io::Error);

/// Set once a reader closed standard output.
static STDOUT_CLOSED: AtomicBool = AtomicBool::new(false);

/// Whether the reader of standard output went away.
pub fn closed() -> bool {
    STDOUT_CLOSED.load(Ordering::Relaxed)
}

/// Writes `text` as it is.
pub fn write_text(text: &str) -> Result<(), StdoutError> {
    if closed() {
        return Ok(());
    }
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => {
            STDOUT_CLOSED.store(true, Ordering::Relaxed);
            Ok(())
        }
        Err(err) => Err(StdoutError(err)),
    }
}

/// Writes one line.
pub fn write_line(line: std::fmt::Arguments) -> Result<(), StdoutError> {
    write_text(&format!("{line}\n"))
}
