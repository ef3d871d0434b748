//! Text from strangers shown to users (client names on the consent screen).

/// Unicode format characters (general category Cf) and other invisible code points that change
/// how neighbouring text renders without being seen: bidirectional overrides (U+202E turns
/// `moc.elgoog` into `google.com`), zero-width joiners and spaces, the BOM, tag characters.
fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{115F}' | '\u{1160}' | '\u{17B4}' | '\u{17B5}'
        | '\u{180B}'..='\u{180F}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{206F}' | '\u{3164}' | '\u{FE00}'..='\u{FE0F}' | '\u{FEFF}'
        | '\u{FFA0}' | '\u{FFF0}'..='\u{FFFB}' | '\u{0600}'..='\u{0605}' | '\u{06DD}'
        | '\u{070F}' | '\u{08E2}' | '\u{110BD}' | '\u{110CD}' | '\u{13430}'..='\u{1343F}'
        | '\u{1BCA0}'..='\u{1BCA3}' | '\u{1D173}'..='\u{1D17A}' | '\u{E0000}'..='\u{E0FFF}')
}

/// A name fit to show: control and invisible format characters removed, runs of white space
/// folded to one space, trimmed, at most `max` characters. `None` when nothing visible is left.
pub fn display_name(raw: &str, max: usize) -> Option<String> {
    let mut out = String::new();
    let mut space = false;
    for c in raw.chars() {
        if c.is_control() || is_invisible(c) {
            continue;
        }
        if c.is_whitespace() {
            space = !out.is_empty();
            continue;
        }
        if space {
            out.push(' ');
            space = false;
        }
        out.push(c);
    }
    let out: String = out.chars().take(max).collect();
    let out = out.trim_end().to_owned();
    (!out.is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invisible_and_bidi_characters_are_removed() {
        assert_eq!(
            display_name("Good\u{202E}moc.live\u{202C} App", 100).as_deref(),
            Some("Goodmoc.live App")
        );
        assert_eq!(
            display_name("G\u{200B}oogle", 100).as_deref(),
            Some("Google")
        );
        assert_eq!(display_name("  a \t\n b  ", 100).as_deref(), Some("a b"));
        assert_eq!(display_name("\u{200B}\u{FEFF}", 100), None);
        assert_eq!(display_name("abcdef", 3).as_deref(), Some("abc"));
        assert_eq!(display_name("tag\u{E0041}s", 100).as_deref(), Some("tags"));
    }
}
