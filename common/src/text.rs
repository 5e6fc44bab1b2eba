//! Checks on free text shared by the validators of names, addresses and email addresses.

/// Characters that show as nothing or reorder what follows them: the format characters people
/// paste by accident or on purpose (soft hyphen, zero-width space and joiners, bidirectional
/// marks and overrides, word joiner and invisible operators, byte-order mark, interlinear
/// annotation, tag characters) and the line and paragraph separators. They make two values that
/// look the same differ, and garble mail headers, exports and screens.
pub fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{061C}'
            | '\u{180E}'
            | '\u{200B}'..='\u{200F}'
            | '\u{2028}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{206F}'
            | '\u{FEFF}'
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
        for c in ['\u{200B}', '\u{202E}', '\u{2028}', '\u{FEFF}', '\u{00AD}', '\u{2066}', '\u{E0041}'] {
            assert!(is_invisible(c), "{c:?}");
        }
        for c in ['a', 'é', 'ß', '中', ' ', '-', '\'', '\u{00A0}'] {
            assert!(!is_invisible(c), "{c:?}");
        }
    }
}
