//! Input rules shared by the routes: names, URLs, DNS names, tokens and label maps.
//!
//! Each rule is stated once, as a pattern and a length that the OpenAPI document publishes
//! (see [`crate::openapi`]) and that these functions enforce, so a request the document calls
//! valid is never refused for its shape. The patterns use only syntax that means the same in
//! Rust's `regex`, ECMAScript and Python: `^…$`, classes, groups, counted repetition.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use regex::Regex;

use crate::ApiError;

/// Longest name accepted for a region, runner, organization or API key.
pub const NAME_MAX_LEN: usize = 63;
/// Letters, digits, `.`, `_`, `-`.
pub const NAME_PATTERN: &str = r"^[A-Za-z0-9._-]+$";

/// The characters of Unicode's White_Space property (what Rust's `\s` means), written out so
/// that ECMAScript (whose `\s` lacks U+0085) and Python read the same set.
macro_rules! white_space_chars {
    () => {
        r"\x09-\x0D\x20\x85\xA0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000"
    };
}

/// Longest URL accepted, in characters.
pub const URL_MAX_LEN: usize = 2048;
/// `scheme://host[:port][/path…|?query…|#fragment…]`, where host is a DNS name whose last
/// label starts with a letter (so it cannot be read as a number) or a dotted IPv4 address,
/// and the port is 0–65535; the rest has no control characters and no white space. No user
/// info: a URL in a region's settings must not carry a password. Labels are letters and
/// digits joined by single hyphens (so no `xn--` labels, whose punycode the URL parser would
/// have to accept too).
pub const URL_PATTERN: &str = concat!(
    r"^[A-Za-z][A-Za-z0-9+.-]*://",
    r"(?:(?:[A-Za-z0-9]+(?:-[A-Za-z0-9]+)*\.)*[A-Za-z][A-Za-z0-9]*(?:-[A-Za-z0-9]+)*",
    r"|(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(?:\.(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3})",
    r"(?::(?:[0-9]{1,4}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]))?",
    r"(?:[/?#][^\x00-\x1F\x7F-\x9F",
    white_space_chars!(),
    r"]*)?$",
);

/// Longest DNS name accepted.
pub const DOMAIN_MAX_LEN: usize = 253;
/// Labels of letters, digits and inner hyphens, 1–63 characters each, joined by dots.
pub const DOMAIN_PATTERN: &str =
    r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$";

/// Longest runner token accepted from an operator, in characters.
pub const TOKEN_MAX_LEN: usize = 256;
/// A token must contain something other than whitespace.
pub const TOKEN_PATTERN: &str = concat!("[^", white_space_chars!(), "]");

/// Labels on a sandbox: at most this many.
pub const MAX_LABELS: usize = 64;
/// Label keys: 1 to this many characters.
pub const LABEL_KEY_MAX_LEN: usize = 63;
/// Label values: at most this many characters.
pub const LABEL_VALUE_MAX_LEN: usize = 255;

fn compiled(cell: &'static OnceLock<Regex>, pattern: &'static str) -> &'static Regex {
    // The patterns are literals; each compiles or the unit tests below fail.
    cell.get_or_init(|| Regex::new(pattern).unwrap_or_else(|e| panic!("pattern {pattern}: {e}")))
}

/// The compiled form of one of the patterns above, built on first use.
macro_rules! regex_of {
    ($pattern:expr) => {{
        static CELL: OnceLock<Regex> = OnceLock::new();
        compiled(&CELL, $pattern)
    }};
}

/// Names: letters, digits, `.`, `_`, `-`; 1 to 63 characters.
pub fn name(field: &str, value: &str) -> Result<(), ApiError> {
    if value.is_empty() || value.len() > NAME_MAX_LEN {
        return Err(ApiError::unprocessable(format!("{field} must be 1 to {NAME_MAX_LEN} characters long")));
    }
    if !regex_of!(NAME_PATTERN).is_match(value) {
        return Err(ApiError::unprocessable(format!(
            "{field} may contain only letters, numbers, underscores, periods and hyphens"
        )));
    }
    Ok(())
}

/// An absolute URL with a host, as [`URL_PATTERN`] says (any scheme: the seeds use
/// `https://` and `ssh://`), that the URL parser also accepts.
pub fn url(field: &str, value: &str) -> Result<(), ApiError> {
    if value.chars().count() > URL_MAX_LEN {
        return Err(ApiError::unprocessable(format!("{field} is longer than {URL_MAX_LEN} characters")));
    }
    if !regex_of!(URL_PATTERN).is_match(value) {
        return Err(ApiError::unprocessable(format!(
            "{field} must be scheme://host[:port][/path], with a DNS name or IPv4 address as host and no user info"
        )));
    }
    let parsed =
        url::Url::parse(value).map_err(|e| ApiError::unprocessable(format!("{field} is not a valid URL: {e}")))?;
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(ApiError::unprocessable(format!("{field} must include a host")));
    }
    Ok(())
}

/// A DNS name: labels of letters, digits and inner hyphens separated by dots; at most 253
/// characters.
pub fn domain(field: &str, value: &str) -> Result<(), ApiError> {
    if value.len() <= DOMAIN_MAX_LEN && regex_of!(DOMAIN_PATTERN).is_match(value) {
        Ok(())
    } else {
        Err(ApiError::unprocessable(format!("{field} must be a valid DNS name")))
    }
}

/// A token chosen by an operator: 1 to 256 characters, not only whitespace.
pub fn token(field: &str, value: &str) -> Result<(), ApiError> {
    if value.chars().count() > TOKEN_MAX_LEN || !regex_of!(TOKEN_PATTERN).is_match(value) {
        return Err(ApiError::unprocessable(format!(
            "{field} must be 1 to {TOKEN_MAX_LEN} characters and not only whitespace"
        )));
    }
    Ok(())
}

/// Sandbox labels: at most 64; keys 1–63 characters, values at most 255.
pub fn labels(field: &str, labels: &BTreeMap<String, String>) -> Result<(), ApiError> {
    if labels.len() > MAX_LABELS {
        return Err(ApiError::unprocessable(format!("{field}: at most {MAX_LABELS} labels")));
    }
    let bad = |(k, v): (&String, &String)| {
        k.is_empty() || k.chars().count() > LABEL_KEY_MAX_LEN || v.chars().count() > LABEL_VALUE_MAX_LEN
    };
    if labels.iter().any(bad) {
        return Err(ApiError::unprocessable(format!(
            "{field}: keys must be 1 to {LABEL_KEY_MAX_LEN} characters and values at most {LABEL_VALUE_MAX_LEN}"
        )));
    }
    Ok(())
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
        assert!(url("proxyUrl", "https://10.0.0.1:8443/p?q=1#f").is_ok());
        assert!(url("proxyUrl", "https://user:secret@proxy.example.com").is_err(), "no user info");
        assert!(url("proxyUrl", "https://proxy.example.com:65536").is_err());
        assert!(url("proxyUrl", "https://1.2.3").is_err(), "a numeric last label is no DNS name");
        assert!(url("proxyUrl", "https://999.1.1.1").is_err());
        assert!(url("proxyUrl", "https://proxy.example.com\n").is_err());
        // Found by schemathesis: U+0085 is white space to Rust but not to ECMAScript's `\s`.
        assert!(url("sshGatewayUrl", "ssh://k0A9:62921?\u{85}").is_err());
        assert!(url("sshGatewayUrl", "ssh://k0A9:62921?\u{5}").is_err(), "no control characters");
        assert!(url("sshGatewayUrl", "ssh://k0A9:62921?\u{2F90A}").is_ok());
        assert!(url("proxyUrl", &format!("https://a.example/{}", "é".repeat(2000))).is_ok(), "chars, not bytes");
    }

    #[test]
    fn tokens_and_labels() {
        assert!(token("apiKey", "crl_x").is_ok());
        assert!(token("apiKey", "  ").is_err());
        assert!(token("apiKey", "\u{85}\u{3000}\t").is_err(), "all of Unicode's white space");
        assert!(token("apiKey", "").is_err());
        assert!(token("apiKey", &"é".repeat(256)).is_ok(), "chars, not bytes");
        assert!(token("apiKey", &"a".repeat(257)).is_err());
        let ok: BTreeMap<String, String> = [("é".repeat(63), "v".repeat(255))].into_iter().collect();
        assert!(labels("labels", &ok).is_ok());
        let empty_key: BTreeMap<String, String> = [(String::new(), "v".into())].into_iter().collect();
        assert!(labels("labels", &empty_key).is_err());
        let many: BTreeMap<String, String> = (0..65).map(|i| (i.to_string(), String::new())).collect();
        assert!(labels("labels", &many).is_err());
    }
}
