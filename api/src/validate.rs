//! Input rules shared by the routes: names and URLs.

use std::sync::OnceLock;

use regex::Regex;

use crate::ApiError;

/// Longest name accepted for a region or runner.
pub const NAME_MAX_LEN: usize = 63;
/// Longest URL accepted.
pub const URL_MAX_LEN: usize = 2048;

fn name_pattern() -> &'static Regex {
    static PATTERN: OnceLock<Regex> = OnceLock::new();
    // The pattern is a literal; it compiles or the unit test below fails.
    PATTERN.get_or_init(|| Regex::new(r"^[A-Za-z0-9._-]+$").unwrap_or_else(|e| panic!("name pattern: {e}")))
}

/// Names: letters, digits, `.`, `_`, `-`; 1 to 63 characters.
pub fn name(field: &str, value: &str) -> Result<(), ApiError> {
    if value.is_empty() || value.len() > NAME_MAX_LEN {
        return Err(ApiError::unprocessable(format!("{field} must be 1 to {NAME_MAX_LEN} characters long")));
    }
    if !name_pattern().is_match(value) {
        return Err(ApiError::unprocessable(format!(
            "{field} may contain only letters, numbers, underscores, periods and hyphens"
        )));
    }
    Ok(())
}

/// An absolute URL with a host (any scheme: the seeds use `https://` and `ssh://`).
pub fn url(field: &str, value: &str) -> Result<(), ApiError> {
    if value.len() > URL_MAX_LEN {
        return Err(ApiError::unprocessable(format!("{field} is longer than {URL_MAX_LEN} characters")));
    }
    let parsed =
        url::Url::parse(value).map_err(|e| ApiError::unprocessable(format!("{field} is not a valid URL: {e}")))?;
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(ApiError::unprocessable(format!("{field} must include a host")));
    }
    Ok(())
}

/// A DNS name: labels of letters, digits and hyphens separated by dots; at most 253 characters.
pub fn domain(field: &str, value: &str) -> Result<(), ApiError> {
    let valid = !value.is_empty()
        && value.len() <= 253
        && value.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if valid {
        Ok(())
    } else {
        Err(ApiError::unprocessable(format!("{field} must be a valid DNS name")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(name("name", "my-custom_region.1").is_ok());
        assert!(name("name", "").is_err());
        assert!(name("name", &"a".repeat(64)).is_err());
        assert!(name("name", &"a".repeat(63)).is_ok());
        assert!(name("name", "has space").is_err());
        assert!(name("name", "slash/").is_err());
        assert!(name("name", "ünïcode").is_err());
    }

    #[test]
    fn domains() {
        assert!(domain("domain", "runner1.example.com").is_ok());
        assert!(domain("domain", "bad_domain.com").is_err());
        assert!(domain("domain", "-x.com").is_err());
        assert!(domain("domain", "").is_err());
    }

    #[test]
    fn urls() {
        assert!(url("proxyUrl", "https://proxy.example.com").is_ok());
        assert!(url("sshGatewayUrl", "ssh://ssh-gateway.example.com").is_ok());
        assert!(url("proxyUrl", "not a url").is_err());
        assert!(url("proxyUrl", "mailto:x").is_err());
    }
}
