//! containerd's identifier rule, as Lima uses it for network names, modes, interfaces and groups.

use crate::quote::go_quote_backtick;

/// Maximum identifier length.
pub const MAX_LENGTH: usize = 76;

/// The regular expression the rule is equivalent to (quoted in error messages).
pub const PATTERN: &str = "^[A-Za-z0-9]+(?:[._-](?:[A-Za-z0-9]+))*$";

/// Why a string is not a valid identifier. The messages are Lima's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentifierError {
    /// The string is empty.
    #[error("identifier must not be empty")]
    Empty,
    /// The string is longer than [`MAX_LENGTH`].
    #[error("identifier {} greater than maximum length ({MAX_LENGTH} characters)", go_quote_backtick(.0))]
    TooLong(String),
    /// The string does not match [`PATTERN`].
    #[error("identifier {} must match {PATTERN}", go_quote_backtick(.0))]
    Invalid(String),
}

/// Checks `s` against the identifier rule: alphanumeric components separated by single `.`, `_`
/// or `-`, at most 76 characters.
pub fn validate(s: &str) -> Result<(), IdentifierError> {
    if s.is_empty() {
        return Err(IdentifierError::Empty);
    }
    if s.len() > MAX_LENGTH {
        return Err(IdentifierError::TooLong(s.to_owned()));
    }
    if !matches_pattern(s) {
        return Err(IdentifierError::Invalid(s.to_owned()));
    }
    Ok(())
}

/// `^[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*$` without a regex engine: every separator must sit
/// between two alphanumeric runs.
fn matches_pattern(s: &str) -> bool {
    s.split(['.', '_', '-'])
        .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_alphanumeric()))
}
