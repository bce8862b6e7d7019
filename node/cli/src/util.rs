//! Small helpers for the CLI: durations, dates, reading a token argument.

use std::io::Read;

use convoke_node::token::limits;

/// Parses `30d`, `12h`, `90m`, `45s`, `2w` or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num.parse().map_err(|_| format!("`{s}` is not a duration like 30d, 12h, 90m or 45s"))?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => {
            return Err(format!("`{s}`: unknown unit `{unit}` (use s, m, h, d or w)"));
        }
    };
    match n.checked_mul(mult) {
        Some(0) => Err("a duration must be more than zero".into()),
        Some(v) => Ok(v),
        None => Err(format!("`{s}` is too long")),
    }
}

/// `2026-11-22 04:30:00 UTC` for unix seconds.
pub fn format_time(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC", secs / 3600, secs / 60 % 60, secs % 60)
}

/// `3d 4h`, `5m 10s`: a rough human span.
pub fn format_span(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

/// Text from a token, a peer or the network made safe to show a person:
/// control characters (C0, DEL and C1: ESC, BEL, CR, the 8-bit CSI...) and
/// the marks that reorder text (bidirectional overrides and isolates) are
/// written as escapes, so nobody can drive a terminal, rewrite a line or
/// fake one "from" someone else. (JSON output escapes C0 controls but not
/// C1 ones: it is for programs, which must treat it as data.)
pub fn printable(s: &str) -> std::borrow::Cow<'_, str> {
    fn unsafe_char(c: char) -> bool {
        c.is_control()
            || matches!(
                c,
                '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
            )
    }
    if !s.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if unsafe_char(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// The token text from an argument, or from standard input for `-`. Reads
/// at most a little more than any valid token, so a huge input is refused
/// without being held in memory.
pub fn read_token_arg(arg: &str) -> Result<String, String> {
    if arg != "-" {
        return Ok(arg.to_owned());
    }
    let cap = (limits::MAX_INPUT * 2 + 1) as u64;
    let mut buf = String::new();
    std::io::stdin()
        .take(cap)
        .read_to_string(&mut buf)
        .map_err(|e| format!("reading the token from standard input: {e}"))?;
    if buf.trim().is_empty() {
        return Err("no token on standard input".into());
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    #[test]
    fn printable_escapes_what_drives_a_terminal() {
        use super::printable;
        assert_eq!(printable("plain text, ünïcode ✓"), "plain text, ünïcode ✓");
        assert_eq!(printable("a\x1b[2Jb\x07\rc\nd"), "a\\u{1b}[2Jb\\u{7}\\rc\\nd");
        assert_eq!(printable("\u{9b}31m"), "\\u{9b}31m", "the 8-bit CSI");
        assert_eq!(printable("user\u{202e}gpj.exe"), "user\\u{202e}gpj.exe");
        assert_eq!(printable("a\u{2028}b"), "a\\u{2028}b", "a line separator");
    }

    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30d"), Ok(30 * 86_400));
        assert_eq!(parse_duration("90"), Ok(90));
        assert_eq!(parse_duration("2w"), Ok(14 * 86_400));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5y").is_err());
        assert!(parse_duration("d").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
    }

    #[test]
    fn dates() {
        assert_eq!(format_time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_time(1_800_000_000), "2027-01-15 08:00:00 UTC");
        assert_eq!(format_time(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(format_span(90_061), "1d 1h");
    }
}
