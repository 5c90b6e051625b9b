//! The filter expressions imgsearch sends Milvus, in Milvus's own grammar (Plan.g4): which rows a
//! search or a query may return, with every user string escaped as a literal. Nothing a client
//! sends reaches Milvus except through [`string_literal`].

use super::{ID_FIELD, URI_FIELD};

/// Which rows a search may return.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SearchFilter {
    /// Only images whose URI starts with this (a folder, a bucket prefix, a site).
    pub uri_prefix: Option<String>,
    /// Never these ids (the query image itself, for "more like this").
    pub exclude_ids: Vec<i64>,
    /// Only ids from this one up (the duplicates report looks forward only).
    pub min_id: Option<i64>,
}

impl SearchFilter {
    /// The Milvus boolean expression, or `None` for no filter.
    ///
    /// The prefix is a range on the VARCHAR field (`uri >= p and uri < successor(p)`), not
    /// `like "p%"`: `like` treats `%` and `_` in file names as wildcards and its escaping differs
    /// between Milvus versions, while string comparison is byte order everywhere (tested on
    /// Milvus Lite and Milvus 2.3.5).
    pub fn expression(&self) -> Option<String> {
        let mut terms = Vec::new();
        if let Some(prefix) = self.uri_prefix.as_deref().filter(|p| !p.is_empty()) {
            terms.push(format!("{URI_FIELD} >= {}", string_literal(prefix)));
            if let Some(upper) = prefix_successor(prefix) {
                terms.push(format!("{URI_FIELD} < {}", string_literal(&upper)));
            }
        }
        if let Some(min_id) = self.min_id {
            terms.push(format!("{ID_FIELD} >= {min_id}"));
        }
        if !self.exclude_ids.is_empty() {
            let list = self.exclude_ids.iter().map(i64::to_string).collect::<Vec<_>>().join(", ");
            terms.push(format!("{ID_FIELD} not in [{list}]"));
        }
        (!terms.is_empty()).then(|| terms.join(" and "))
    }
}

/// A Milvus expression string literal: double quotes, with `\`, `"`, CR and LF escaped. Milvus's
/// grammar (Plan.g4) refuses a raw line break inside a literal, and both servers read `\n` and
/// `\r` back (measured on Milvus Lite 3.2 and 2.3.5; Milvus Lite refuses `\x`/`\u` escapes, so
/// other characters stay raw, which the grammar allows).
pub(crate) fn string_literal(text: &str) -> String {
    let mut literal = String::with_capacity(text.len() + 2);
    literal.push('"');
    for c in text.chars() {
        match c {
            '\\' => literal.push_str("\\\\"),
            '"' => literal.push_str("\\\""),
            '\n' => literal.push_str("\\n"),
            '\r' => literal.push_str("\\r"),
            other => literal.push(other),
        }
    }
    literal.push('"');
    literal
}

/// The least string greater than every string that starts with `prefix` (its last character
/// that can be incremented, incremented; the ones after it dropped), or `None` if there is none.
pub(crate) fn prefix_successor(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        // Skips the surrogate gap, which no `char` can hold.
        let next = match u32::from(last) + 1 {
            0xD800 => Some('\u{E000}'),
            code => char::from_u32(code),
        };
        if let Some(next) = next {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

/// Properties of the prefix filter, over generated strings rich in what breaks such code:
/// quotes, backslashes, wildcard characters, the last code point and the surrogate gap's edges.
#[cfg(test)]
mod prefix_properties {
    use super::*;
    use proptest::prelude::*;

    const TRICKY: [char; 14] =
        ['/', '"', '\\', '\n', '\r', '\t', '%', '_', 'a', '\u{7F}', '\u{D7FF}', '\u{E000}', '\u{FFFF}', char::MAX];

    fn text() -> impl Strategy<Value = String> {
        let tricky = prop::sample::select(&TRICKY[..]);
        prop::collection::vec(prop_oneof![any::<char>(), tricky], 0..6).prop_map(String::from_iter)
    }

    /// Reads a Milvus string literal back the way its grammar and parser do: a raw CR or LF is
    /// refused, `\n` `\r` `\t` are control characters, `\\` `\"` `\'` themselves, an unescaped
    /// `"` ends it. `None` if it is refused or does not end exactly at its last byte.
    fn read_literal(literal: &str) -> Option<String> {
        let mut chars = literal.strip_prefix('"')?.chars();
        let mut text = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => text.push(match chars.next()? {
                    'n' => '\n',
                    'r' => '\r',
                    't' => '\t',
                    escaped @ ('\\' | '"' | '\'') => escaped,
                    _ => return None,
                }),
                '"' => return chars.next().is_none().then_some(text),
                '\r' | '\n' => return None,
                c => text.push(c),
            }
        }
        None
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// `uri >= p and uri < successor(p)` (Milvus compares VARCHAR bytewise, as Rust
        /// compares `str`) holds a string exactly when it starts with `p`.
        #[test]
        fn the_prefix_range_holds_exactly_the_strings_that_start_with_the_prefix(
            prefix in text(), rest in text(), other in text()
        ) {
            let upper = prefix_successor(&prefix);
            // Besides strings with and without the prefix, its neighbours: the prefix with its
            // last character replaced by each tricky one, the nearest strings that do not start
            // with it (a looser upper bound lets them in).
            let stem: String = prefix.chars().rev().skip(1).collect::<Vec<_>>().into_iter().rev().collect();
            let neighbours = TRICKY.iter().map(|c| format!("{stem}{c}{rest}"));
            let candidates = [format!("{prefix}{rest}"), other.clone(), format!("{other}{prefix}")];
            for candidate in candidates.into_iter().chain(neighbours) {
                let in_range = candidate >= prefix && upper.as_ref().is_none_or(|upper| candidate < *upper);
                prop_assert_eq!(in_range, candidate.starts_with(&prefix), "{:?} with prefix {:?}", candidate, prefix);
            }
        }

        /// A literal reads back as the text it was made from and cannot end early, whatever
        /// quotes and backslashes the text holds.
        #[test]
        fn a_string_literal_reads_back_as_its_text_and_cannot_be_escaped(text in text()) {
            prop_assert_eq!(read_literal(&string_literal(&text)), Some(text));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_become_milvus_expressions() {
        assert_eq!(SearchFilter::default().expression(), None);
        let filter = SearchFilter { uri_prefix: Some("/photos/a_b/".into()), exclude_ids: vec![3, 4], min_id: Some(2) };
        assert_eq!(
            filter.expression().as_deref(),
            Some(r#"uri >= "/photos/a_b/" and uri < "/photos/a_b0" and id >= 2 and id not in [3, 4]"#)
        );
        // Quotes and backslashes cannot end the literal early.
        let hostile = SearchFilter { uri_prefix: Some(r#"x" or id > 0 or uri == "\"#.into()), ..Default::default() };
        assert_eq!(
            hostile.expression().as_deref(),
            Some(r#"uri >= "x\" or id > 0 or uri == \"\\" and uri < "x\" or id > 0 or uri == \"]""#)
        );
    }

    #[test]
    fn prefix_successor_bounds_every_extension() {
        assert_eq!(prefix_successor("ab").as_deref(), Some("ac"));
        assert_eq!(prefix_successor("a\u{10FFFF}").as_deref(), Some("b"));
        assert_eq!(prefix_successor("\u{D7FF}").as_deref(), Some("\u{E000}"));
        assert_eq!(prefix_successor("\u{10FFFF}"), None);
        for prefix in ["s3://bucket/a", "/é/", "x"] {
            let upper = prefix_successor(prefix).expect("has a successor");
            for extension in ["", "z", "\u{10FFFF}\u{10FFFF}", "/deep/file.jpg"] {
                let text = format!("{prefix}{extension}");
                assert!(
                    text.as_str() >= prefix && text.as_str() < upper.as_str(),
                    "{text:?} not in [{prefix:?}, {upper:?})"
                );
            }
        }
    }
}
