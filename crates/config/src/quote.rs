//! Go's `%#q` and `%q` string quoting, so error messages and sudoers comments are byte-identical
//! to Lima's.

/// Formats `s` the way Go's `fmt.Sprintf("%#q", s)` does: between backquotes when
/// `strconv.CanBackquote(s)` holds, otherwise as a double-quoted Go string (`%q`).
pub fn go_quote_backtick(s: &str) -> String {
    if can_backquote(s) {
        format!("`{s}`")
    } else {
        go_quote(s)
    }
}

/// Go's `strconv.CanBackquote`: no backquote, no control character other than tab, no U+FEFF.
/// (Rust strings are always valid UTF-8, so Go's invalid-UTF-8 case cannot occur.)
pub fn can_backquote(s: &str) -> bool {
    s.chars()
        .all(|c| c != '`' && c != '\u{feff}' && c != '\u{7f}' && (c >= ' ' || c == '\t'))
}

/// Formats `s` the way Go's `strconv.Quote` (`%q`) does.
pub fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if go_is_print(c) => out.push(c),
            c if (c as u32) < 0x80 => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if (c as u32) < 0x10000 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push_str(&format!("\\U{:08x}", c as u32)),
        }
    }
    out.push('"');
    out
}

/// Approximates Go's `strconv.IsPrint`: letters, marks, numbers, punctuation, symbols and the
/// ASCII space. Rust has no Unicode category tables in std, so other spaces and format
/// characters are treated as non-printable, which matches Go for all common cases.
fn go_is_print(c: char) -> bool {
    if c == ' ' {
        return true;
    }
    !(c.is_control()
        || c.is_whitespace()
        || matches!(c, '\u{ad}' | '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2060}'..='\u{206f}' | '\u{feff}' | '\u{fff9}'..='\u{fffb}'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backquotes_when_possible() {
        assert_eq!(go_quote_backtick("shared"), "`shared`");
        assert_eq!(go_quote_backtick("a\tb"), "`a\tb`");
        assert_eq!(go_quote_backtick("héllo"), "`héllo`");
    }

    #[test]
    fn falls_back_to_double_quotes() {
        assert_eq!(
            go_quote_backtick("evil\n%staff ALL=(root) NOPASSWD: ALL"),
            "\"evil\\n%staff ALL=(root) NOPASSWD: ALL\""
        );
        assert_eq!(go_quote_backtick("a`b"), "\"a`b\"");
        assert_eq!(go_quote_backtick("x\u{1}\u{7f}"), "\"x\\x01\\x7f\"");
        assert_eq!(go_quote_backtick("\u{feff}"), "\"\\ufeff\"");
        assert_eq!(go_quote("say \"hi\" \\"), "\"say \\\"hi\\\" \\\\\"");
    }
}
