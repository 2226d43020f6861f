//! `session://{session_id}/{name}`: how a session file is named as an MCP resource.
//!
//! The name keeps its `/` separators and has every other byte outside the URI's unreserved
//! set percent-encoded. Parsing decodes percent escapes in the whole name, so a client that
//! expanded the template with `%2F` for `/` (RFC 6570 simple expansion) reaches the same file.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};

pub const SCHEME: &str = "session://";

/// The resource template clients expand.
pub const TEMPLATE: &str = "session://{session_id}/{name}";

/// Bytes that stay as they are in a name: RFC 3986 unreserved characters and `/`.
const NAME_KEEPS: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'/');

/// A session's notebook (its Python cells as `.ipynb`).
pub const NOTEBOOK_TEMPLATE: &str = "notebook://{session_id}";
const NOTEBOOK_SCHEME: &str = "notebook://";

pub fn notebook_uri(session_id: &str) -> String {
    format!("{NOTEBOOK_SCHEME}{session_id}")
}

/// The session id of a `notebook://` URI.
pub fn parse_notebook(uri: &str) -> Option<&str> {
    uri.strip_prefix(NOTEBOOK_SCHEME).filter(|s| !s.is_empty())
}

pub fn file_uri(session_id: &str, name: &str) -> String {
    format!(
        "{SCHEME}{session_id}/{}",
        utf8_percent_encode(name, NAME_KEEPS)
    )
}

/// The session id and the decoded file name of a `session://` URI; `None` for anything else.
pub fn parse(uri: &str) -> Option<(String, String)> {
    let rest = uri.strip_prefix(SCHEME)?;
    let (session_id, name) = rest.split_once('/')?;
    let name = percent_decode_str(name).decode_utf8().ok()?;
    if session_id.is_empty() || name.is_empty() {
        return None;
    }
    Some((session_id.to_owned(), name.into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_with_directories_and_spaces_round_trips() {
        let uri = file_uri("abcdefghij_klmnopq-rs", "out dir/report (final).csv");
        assert_eq!(
            uri,
            "session://abcdefghij_klmnopq-rs/out%20dir/report%20%28final%29.csv"
        );
        assert_eq!(
            parse(&uri),
            Some((
                "abcdefghij_klmnopq-rs".to_owned(),
                "out dir/report (final).csv".to_owned()
            ))
        );
    }

    #[test]
    fn an_encoded_slash_from_template_expansion_is_accepted() {
        assert_eq!(
            parse("session://abc/out%2Fa.txt"),
            Some(("abc".to_owned(), "out/a.txt".to_owned()))
        );
    }

    #[test]
    fn a_notebook_uri_names_its_session() {
        let uri = notebook_uri("abcdefghij_klmnopq-rs");
        assert_eq!(parse_notebook(&uri), Some("abcdefghij_klmnopq-rs"));
        assert_eq!(parse_notebook("notebook://"), None);
        assert_eq!(parse(&uri), None);
    }

    #[test]
    fn other_uris_are_not_session_files() {
        assert_eq!(parse("file:///etc/passwd"), None);
        assert_eq!(parse("session://abc"), None);
        assert_eq!(parse("session://abc/"), None);
        assert_eq!(parse("session:///a.txt"), None);
    }
}
