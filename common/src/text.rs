//! Checks on free text shared by the validators of names, addresses and email addresses.

/// Characters that show as nothing or reorder what follows them: the format characters people
/// paste by accident or on purpose (soft hyphen, zero-width space, bidirectional marks and
/// overrides, word joiner and invisible operators, byte-order mark, interlinear annotation, tag
/// characters), the Hangul fillers (letters drawn as nothing) and the line and paragraph
/// separators. They make two values that look the same differ, and garble mail headers, exports
/// and screens. The zero-width non-joiner and joiner are NOT among them: Persian, Sinhala and
/// Indic names are spelt with them.
pub fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{061C}'
            | '\u{115F}'
            | '\u{1160}'
            | '\u{200B}'
            | '\u{200E}'
            | '\u{200F}'
            | '\u{2028}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{206F}'
            | '\u{3164}'
            | '\u{FEFF}'
            | '\u{FFA0}'
            | '\u{FFF9}'..='\u{FFFB}'
            | '\u{E0001}'
            | '\u{E0020}'..='\u{E007F}'
    )
}

#[cfg(test)]
mod tests {
    use super::is_invisible;

    #[test]
    fn invisible_characters_are_told_from_letters_and_spaces() {
        for c in ['\u{200B}', '\u{202E}', '\u{2028}', '\u{FEFF}', '\u{00AD}', '\u{2066}', '\u{E0041}', '\u{3164}'] {
            assert!(is_invisible(c), "{c:?}");
        }
        for c in ['a', 'é', 'ß', '中', ' ', '-', '\'', '\u{00A0}', '\u{200C}', '\u{200D}', '\u{094D}'] {
            assert!(!is_invisible(c), "{c:?}");
        }
    }
}
