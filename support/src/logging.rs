//! Log hygiene for both binaries: [`clip`] makes strings from outside safe
//! to log. (The subscriber itself, log lines and trace export, is set up by
//! [`crate::telemetry::init`].)

/// At most this many characters of a string from outside go into a log line.
pub const CLIP_CHARS: usize = 64;
/// The same for an error message that may quote what was received.
pub const CLIP_ERROR_CHARS: usize = 200;

/// A string that came from outside (a username, a topic, an envelope's
/// sender, a request field), fit for a log line: control characters and
/// quotes escaped, cut to [`CLIP_CHARS`] characters with the original
/// length noted, so nobody can forge log lines or fill the disk through them.
pub fn clip(s: &str) -> String {
    clip_to(s, CLIP_CHARS)
}

/// [`clip`] to `max` characters (use [`CLIP_ERROR_CHARS`] for errors).
pub fn clip_to(s: &str, max: usize) -> String {
    let mut out = String::new();
    for c in s.chars().take(max) {
        out.extend(c.escape_debug());
    }
    let n = s.chars().count();
    if n > max {
        out.push_str(&format!("…({n} chars)"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_escapes_and_caps() {
        assert_eq!(clip("branch-1"), "branch-1");
        assert_eq!(clip("a\nFAKE LINE"), "a\\nFAKE LINE");
        assert_eq!(clip("\u{1b}[31m"), "\\u{1b}[31m");
        let long = "x".repeat(10_000);
        let c = clip(&long);
        assert!(c.len() < 100 && c.ends_with("…(10000 chars)"), "{c}");
        assert_eq!(clip("中文"), "中文");
    }
}
