//! Reading a container's CRI-format log (`<RFC3339Nano> <stream> <F|P> <text>`) the way
//! `kubectl logs` asks for it: whole lines (partial records joined), the last N lines,
//! lines since a time, one stream or both, optional timestamps, a byte limit.
//! Every runtime writes this format (the OCI runtime through its supervisor; a VM runtime
//! will write its console the same way), so this reader serves them all.

use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("reading log {path}: {source}")]
    Io { path: std::path::PathBuf, source: std::io::Error },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogOptions {
    /// Only the last N lines.
    pub tail: Option<usize>,
    /// Only lines whose timestamp is at or after this RFC 3339 time; compared as text,
    /// which is exact for the fixed-width UTC times our writer produces.
    pub since: Option<String>,
    /// Only this stream; `None` means both, interleaved as written.
    pub stream: Option<Stream>,
    /// Prefix each line with its timestamp and a space (`kubectl logs --timestamps`).
    pub timestamps: bool,
    /// Stop after this many bytes of output.
    pub limit_bytes: Option<usize>,
}

/// One logical line: records joined until an `F`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogLine {
    pub time: String,
    pub stream: Stream,
    pub text: Vec<u8>,
}

/// Parse a CRI log. Malformed records (a torn last write, foreign text) are skipped, never
/// fatal: a log must stay readable whatever the container printed.
pub fn parse(bytes: &[u8]) -> Vec<LogLine> {
    let mut out = Vec::new();
    // Partial text per stream, waiting for its F record.
    let mut pending: [Option<LogLine>; 2] = [None, None];
    for record in bytes.split(|&b| b == b'\n') {
        let mut parts = record.splitn(4, |&b| b == b' ');
        let (Some(time), Some(stream), Some(tag)) = (parts.next(), parts.next(), parts.next()) else { continue };
        let text = parts.next().unwrap_or_default();
        let (stream, slot) = match stream {
            b"stdout" => (Stream::Stdout, 0),
            b"stderr" => (Stream::Stderr, 1),
            _ => continue,
        };
        let Ok(time) = std::str::from_utf8(time) else { continue };
        let line = pending[slot].get_or_insert_with(|| LogLine { time: time.to_owned(), stream, text: Vec::new() });
        line.text.extend_from_slice(text);
        match tag {
            b"F" => out.extend(pending[slot].take()),
            b"P" => {}
            _ => pending[slot] = None,
        }
    }
    // A line still partial at the end is shown as it is (the container may be writing it).
    out.extend(pending.into_iter().flatten());
    out
}

/// Render a log for a reader, applying the options.
pub fn render(lines: &[LogLine], opts: &LogOptions) -> Vec<u8> {
    let selected: Vec<&LogLine> = lines
        .iter()
        .filter(|l| opts.stream.is_none_or(|s| s == l.stream))
        .filter(|l| opts.since.as_deref().is_none_or(|since| l.time.as_str() >= since))
        .collect();
    let skip = opts.tail.map_or(0, |n| selected.len().saturating_sub(n));
    let mut out = Vec::new();
    for l in &selected[skip..] {
        if opts.timestamps {
            out.extend_from_slice(l.time.as_bytes());
            out.push(b' ');
        }
        out.extend_from_slice(&l.text);
        out.push(b'\n');
        if let Some(limit) = opts.limit_bytes
            && out.len() >= limit
        {
            out.truncate(limit);
            break;
        }
    }
    out
}

/// Read and render a log file; a missing file is an empty log (nothing written yet).
pub fn read(path: &Path, opts: &LogOptions) -> Result<Vec<u8>, LogError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(render(&parse(&bytes), opts)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(LogError::Io { path: path.to_owned(), source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "\
2026-01-01T00:00:01.000000000Z stdout F one
2026-01-01T00:00:02.000000000Z stderr P tw
2026-01-01T00:00:02.500000000Z stdout F three
2026-01-01T00:00:03.000000000Z stderr F o
garbage without fields
2026-01-01T00:00:04.000000000Z stdout F four
2026-01-01T00:00:05.000000000Z stdout P unfinished";

    fn show(opts: LogOptions) -> String {
        String::from_utf8(render(&parse(LOG.as_bytes()), &opts)).unwrap()
    }

    #[test]
    fn joins_partials_and_applies_options() {
        assert_eq!(show(LogOptions::default()), "one\nthree\ntwo\nfour\nunfinished\n");
        assert_eq!(show(LogOptions { tail: Some(2), ..LogOptions::default() }), "four\nunfinished\n");
        assert_eq!(show(LogOptions { tail: Some(0), ..LogOptions::default() }), "");
        assert_eq!(show(LogOptions { stream: Some(Stream::Stderr), ..LogOptions::default() }), "two\n");
        assert_eq!(
            show(LogOptions { since: Some("2026-01-01T00:00:02.500000000Z".into()), ..LogOptions::default() }),
            "three\nfour\nunfinished\n"
        );
        assert_eq!(
            show(LogOptions { timestamps: true, tail: Some(1), stream: Some(Stream::Stderr), ..LogOptions::default() }),
            "2026-01-01T00:00:02.000000000Z two\n"
        );
        assert_eq!(show(LogOptions { limit_bytes: Some(6), ..LogOptions::default() }), "one\nth");
    }
}
