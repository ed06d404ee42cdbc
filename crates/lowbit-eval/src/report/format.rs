//! Text for the report: HTML escaping, names that wrap, and numbers (dB, fixed, significant
//! digits, counts, bytes) printed with real minus signs and `∞`/`–` for non-finite values.

use std::fmt::Write;

pub(super) fn w(h: &mut String, args: std::fmt::Arguments<'_>) {
    // Writing to a String cannot fail.
    let _ = h.write_fmt(args);
}

/// `s` with `& < > " '` escaped, safe in HTML text, attributes and inline SVG.
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

pub(super) fn esc(s: &str) -> String {
    escape_html(s)
}

/// A tensor or node name for HTML text: escaped, with line-break opportunities after each '/'
/// so long paths wrap between their parts (not for SVG, which has no `<wbr>`).
pub(super) fn name(s: &str) -> String {
    escape_html(s).replace('/', "/<wbr>")
}

/// At most `max` characters: the start and the end of a long name (the end of a tensor name
/// says the most), joined by `…`.
pub(super) fn shorten(s: &str, max: usize) -> String {
    let n = s.chars().count();
    if n <= max {
        return s.to_string();
    }
    let head = max / 3;
    let tail = max - head - 1;
    let start: String = s.chars().take(head).collect();
    let end: String = s.chars().skip(n - tail).collect();
    format!("{start}…{end}")
}

pub(super) fn fmt_db(v: f64) -> String {
    if v.is_nan() {
        "–".into()
    } else if v == f64::INFINITY {
        "∞".into()
    } else if v == f64::NEG_INFINITY {
        "−∞".into()
    } else {
        fmt_fixed(v, 1)
    }
}

pub(super) fn fmt_fixed(v: f64, decimals: usize) -> String {
    if v.is_nan() {
        return "–".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "∞".into() } else { "−∞".into() };
    }
    let s = format!("{v:.decimals$}");
    // A rounded negative zero prints as "-0.0"; a minus sign reads better than a hyphen.
    match s.strip_prefix('-') {
        Some(rest) if rest.chars().all(|c| c == '0' || c == '.') => rest.to_string(),
        Some(rest) => format!("−{rest}"),
        None => s,
    }
}

pub(super) fn signed(v: f64, decimals: usize) -> String {
    let s = fmt_fixed(v, decimals);
    if v.is_finite() && !s.starts_with('−') && s.chars().any(|c| c.is_ascii_digit() && c != '0') {
        format!("+{s}")
    } else {
        s
    }
}

/// Four significant digits, scientific outside 1e-3..1e5.
pub(super) fn fmt_sig(v: f64) -> String {
    if !v.is_finite() {
        return fmt_fixed(v, 0);
    }
    if v == 0.0 {
        return "0".into();
    }
    let mag = v.abs().log10().floor() as i32;
    if !(-3..5).contains(&mag) {
        let s = format!("{v:.3e}");
        return s.replace('-', "−");
    }
    fmt_fixed(v, (3 - mag).clamp(0, 6) as usize)
}

pub(super) fn fmt_count(v: f64) -> String {
    match v {
        v if v >= 1e9 => format!("{}G", v / 1e9),
        v if v >= 1e6 => format!("{}M", v / 1e6),
        v if v >= 1e3 => format!("{}k", v / 1e3),
        v => format!("{v}"),
    }
}

pub(super) fn fmt_bytes(b: u64) -> String {
    let v = b as f64;
    if v >= 1e9 {
        format!("{:.2} GB", v / 1e9)
    } else if v >= 1e6 {
        format!("{:.2} MB", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1} kB", v / 1e3)
    } else {
        format!("{b} B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn number_formatting() {
        assert_eq!(fmt_db(f64::INFINITY), "∞");
        assert_eq!(fmt_db(f64::NAN), "–");
        assert_eq!(fmt_db(-3.04), "−3.0");
        assert_eq!(fmt_fixed(-0.0001, 2), "0.00");
        assert_eq!(signed(1.5, 1), "+1.5");
        assert_eq!(fmt_sig(0.00001234), "1.234e−5");
        assert_eq!(fmt_sig(12.3456), "12.35");
        assert_eq!(shorten("abcdefghij", 7), "ab…ghij");
    }
}
