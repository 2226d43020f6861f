//! File names: paths relative to `/mnt/data`, validated once so every later use is safe.

use std::fmt;

/// Longest path segment Linux accepts.
const MAX_SEGMENT_BYTES: usize = 255;
/// Longest whole name we keep; deeper trees are refused rather than half-stored.
pub const MAX_NAME_BYTES: usize = 1024;

/// A validated relative path such as `plot.png` or `out/report.csv`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileName(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("the file name is empty")]
    Empty,
    #[error("the file name contains a NUL or control character")]
    ControlCharacter,
    #[error("the file name must be relative to /mnt/data, not an absolute path")]
    Absolute,
    #[error("the file name may not contain '..' or '.' segments")]
    DotSegment,
    #[error("the file name has an empty path segment ('//' or a trailing '/')")]
    EmptySegment,
    #[error("a path segment of the file name is longer than 255 bytes")]
    SegmentTooLong,
    #[error("the file name is longer than 1024 bytes")]
    TooLong,
}

impl FileName {
    /// Validate a client-supplied name. A leading `/mnt/data/` is dropped, since that is
    /// where the file lives inside the sandbox and models often write it that way.
    pub fn parse(raw: &str) -> Result<Self, NameError> {
        let name = raw.strip_prefix("/mnt/data/").unwrap_or(raw);
        if name.is_empty() {
            return Err(NameError::Empty);
        }
        if name.len() > MAX_NAME_BYTES {
            return Err(NameError::TooLong);
        }
        if name.chars().any(|c| c.is_control()) {
            return Err(NameError::ControlCharacter);
        }
        if name.starts_with('/') {
            return Err(NameError::Absolute);
        }
        for segment in name.split('/') {
            match segment {
                "" => return Err(NameError::EmptySegment),
                "." | ".." => return Err(NameError::DotSegment),
                s if s.len() > MAX_SEGMENT_BYTES => return Err(NameError::SegmentTooLong),
                _ => {}
            }
        }
        Ok(FileName(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The last segment, for `Content-Disposition`.
    pub fn base_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }

    /// The directory part, if the name has one.
    pub fn parent(&self) -> Option<&str> {
        self.0.rsplit_once('/').map(|(dir, _)| dir)
    }

    pub fn content_type(&self) -> String {
        mime_guess::from_path(self.base_name())
            .first_or_octet_stream()
            .essence_str()
            .to_owned()
    }
}

impl fmt::Display for FileName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_nested_names_are_accepted() {
        assert_eq!(FileName::parse("data.csv").unwrap().as_str(), "data.csv");
        assert_eq!(
            FileName::parse("out/report.csv").unwrap().parent(),
            Some("out")
        );
        assert_eq!(FileName::parse(".hidden").unwrap().as_str(), ".hidden");
        assert_eq!(
            FileName::parse("/mnt/data/plot.png").unwrap().as_str(),
            "plot.png"
        );
    }

    #[test]
    fn traversal_and_odd_names_are_refused() {
        assert_eq!(FileName::parse(""), Err(NameError::Empty));
        assert_eq!(FileName::parse("../etc/passwd"), Err(NameError::DotSegment));
        assert_eq!(FileName::parse("a/../../b"), Err(NameError::DotSegment));
        assert_eq!(FileName::parse("/etc/passwd"), Err(NameError::Absolute));
        assert_eq!(FileName::parse("a//b"), Err(NameError::EmptySegment));
        assert_eq!(FileName::parse("dir/"), Err(NameError::EmptySegment));
        assert_eq!(FileName::parse("a\0b"), Err(NameError::ControlCharacter));
        assert_eq!(FileName::parse("a\nb"), Err(NameError::ControlCharacter));
        assert_eq!(
            FileName::parse(&"x".repeat(256)),
            Err(NameError::SegmentTooLong)
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            cases: 4000,
            failure_persistence: None,
            ..Default::default()
        })]

        /// Any client string, biased towards path syntax: parsing never panics, and what
        /// it accepts names something strictly below the workspace, within the limits, and
        /// parses to itself again.
        #[test]
        fn an_accepted_name_stays_inside_the_workspace(
            raw in "(/mnt/data/)?([a-z.]{0,3}|\\.\\.|/|\\PC{0,4}|\\x00|\n){0,12}",
            long in proptest::prelude::any::<bool>(),
        ) {
            let raw = if long { raw.repeat(40) } else { raw };
            if let Ok(name) = FileName::parse(&raw) {
                let path = std::path::Path::new(name.as_str());
                proptest::prop_assert!(path.components().all(|c| matches!(c, std::path::Component::Normal(_))));
                proptest::prop_assert!(name.as_str().len() <= MAX_NAME_BYTES);
                proptest::prop_assert!(!name.as_str().chars().any(char::is_control));
                let again = FileName::parse(name.as_str());
                proptest::prop_assert_eq!(again, Ok(name.clone()));
                proptest::prop_assert!(!name.base_name().is_empty());
            }
        }
    }

    #[test]
    fn content_type_follows_the_extension() {
        assert_eq!(FileName::parse("a.csv").unwrap().content_type(), "text/csv");
        assert_eq!(
            FileName::parse("p.png").unwrap().content_type(),
            "image/png"
        );
        assert_eq!(
            FileName::parse("blob").unwrap().content_type(),
            "application/octet-stream"
        );
    }
}
