//! Writing to stdout, and numbers as a person reads them.

use anyhow::Result;
use std::io::Write;

/// Writes `text` to stdout; a closed pipe surfaces as an io error that `main` treats as done.
pub fn print(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

/// `value` as one line of JSON on stdout (what `--json` prints).
pub fn print_json(value: &impl serde::Serialize) -> Result<()> {
    print(&(serde_json::to_string(value)? + "\n"))
}

/// `1234567` → `1,234,567`.
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Bytes in decimal units, as the corpus manifest writes them (`1.531 MB`).
pub fn human_bytes(n: u64) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.3} GB", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.3} MB", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.1} kB", n as f64 / 1e3),
        n => format!("{n} B"),
    }
}

/// `s` when `n` is not 1.
pub fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn number_formatting() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(17_241_984), "17,241,984");
        assert_eq!(human_bytes(1_530_828), "1.531 MB");
        assert_eq!(human_bytes(512), "512 B");
    }
}
