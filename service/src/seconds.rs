//! Durations as operators write them: a number of seconds. One rule for the
//! command line, the environment and the site file alike.

use std::time::Duration;

/// The longest duration any setting takes (about 31 years): far past any
/// sensible timeout, and a float that converts exactly enough.
pub const MAX: f64 = 1e9;

/// A positive, finite number of seconds, at most [`MAX`].
pub fn positive(seconds: f64) -> Result<Duration, String> {
    if seconds > 0.0 && seconds <= MAX {
        Ok(Duration::from_secs_f64(seconds))
    } else {
        Err(format!("{seconds} is not a positive number of seconds"))
    }
}

/// [`positive`] of a text; a clap value parser.
pub fn parse(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    positive(seconds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positive_finite_seconds_only() {
        assert_eq!(parse("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse(" 2 "), Ok(Duration::from_secs(2)));
        for bad in ["0", "-1", "NaN", "inf", "1e10", "abc", ""] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            positive(-1.0),
            Err("-1 is not a positive number of seconds".to_owned())
        );
        assert_eq!(
            parse("abc"),
            Err("\"abc\" is not a number of seconds".to_owned())
        );
    }
}
