//! Text that reaches an operator's terminal: the one rule for what a
//! workload-supplied string may not carry there raw ("Trojan Source").

/// Whether `c` must not reach a terminal raw: control characters (C0, DEL,
/// C1) but newline and tab, the Unicode format characters (general category
/// Cf: the bidirectional embeddings, overrides and isolates of "Trojan
/// Source", zero-width spaces and joiners, the BOM, tag characters, …), and
/// the line and paragraph separators. A workload chooses its task, its
/// `authorization_details`, often its subject: any of these would let it
/// reorder or hide what an approver reads.
pub fn is_terminal_unsafe(c: char) -> bool {
    if c == '\n' || c == '\t' {
        return false;
    }
    c.is_control()
        || matches!(
            c as u32,
            0x00AD
                | 0x0600..=0x0605
                | 0x061C
                | 0x06DD
                | 0x070F
                | 0x0890..=0x0891
                | 0x08E2
                | 0x180E
                | 0x200B..=0x200F
                | 0x2028..=0x202E
                | 0x2060..=0x2064
                | 0x2066..=0x206F
                | 0xFEFF
                | 0xFFF9..=0xFFFB
                | 0x110BD
                | 0x110CD
                | 0x13430..=0x1343F
                | 0x1BCA0..=0x1BCA3
                | 0x1D173..=0x1D17A
                | 0xE0001
                | 0xE0020..=0xE007F
        )
}

/// `s` with every [`is_terminal_unsafe`] character written as a visible
/// `\u202e` escape (UTF-16, a surrogate pair above the BMP): readable in a
/// table, and inside a JSON string (`--json`) the same escape JSON itself
/// uses, so the document keeps its meaning and stays valid. The one
/// function every CLI printer goes through (`out_line`, `err_line` in the CLI).
pub fn terminal_safe(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(is_terminal_unsafe) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        if is_terminal_unsafe(c) {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{u:04x}"));
            }
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// `s` as HTML text (element content or a double- or single-quoted
/// attribute value): `& < > " '` become character references, and every
/// [`is_terminal_unsafe`] character is shown as its `\u…` escape (a
/// workload must not reorder or hide what an approver reads on a page
/// either). The one escaping function of the approval pages: every value
/// that came from a workload or an IdP goes through it.
pub fn html(s: &str) -> String {
    let s = terminal_safe(s);
    let mut out = String::with_capacity(s.len() + 16);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_escapes_markup_and_hidden_characters() {
        assert_eq!(
            html("<script>alert('x')</script>&\"\u{202e}"),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;\\u202e"
        );
        assert_eq!(html("plain text"), "plain text");
    }

    #[test]
    fn bidi_zero_width_and_controls_are_escaped() {
        assert_eq!(
            terminal_safe("plain text, tabs\tand\nlines"),
            "plain text, tabs\tand\nlines"
        );
        assert_eq!(
            terminal_safe("delete \u{202e}txt.exe\u{202c}"),
            "delete \\u202etxt.exe\\u202c"
        );
        for c in [
            '\u{1b}',
            '\r',
            '\u{7f}',
            '\u{9b}',
            '\u{200b}',
            '\u{200d}',
            '\u{200e}',
            '\u{061c}',
            '\u{2028}',
            '\u{2029}',
            '\u{202a}',
            '\u{202e}',
            '\u{2066}',
            '\u{2069}',
            '\u{2060}',
            '\u{feff}',
            '\u{00ad}',
            '\u{e0041}',
        ] {
            let out = terminal_safe(&format!("a{c}b")).into_owned();
            assert!(!out.contains(c), "{c:?} passed through: {out:?}");
            assert!(out.starts_with("a\\u") && out.ends_with('b'), "{out:?}");
        }
        // above the BMP: a UTF-16 surrogate pair, as JSON writes it
        assert_eq!(terminal_safe("\u{e0041}"), "\\udb40\\udc41");
        // ordinary non-ASCII text is left alone
        assert_eq!(terminal_safe("Zoë → 東京 🚀"), "Zoë → 東京 🚀");
    }

    #[test]
    fn escaped_json_is_still_the_same_json() {
        let v = serde_json::json!({"task": "x\u{202e}y\u{7f}\u{e0041}", "n": 1});
        let text = v.to_string();
        let safe = terminal_safe(&text).into_owned();
        assert!(safe.chars().all(|c| !is_terminal_unsafe(c)));
        let back: serde_json::Value = serde_json::from_str(&safe).unwrap();
        assert_eq!(back, v);
    }
}
