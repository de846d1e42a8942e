//! Strings that must never reach logs, `Debug` output or printed configuration: client
//! secrets, tokens, API keys, access codes ([`Secret`]), and the password in a URL
//! ([`SecretUrl`]).

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Holds a secret. `Debug`, `Display` and `Serialize` all print `<redacted>`;
/// use [`Secret::expose`] at the one place the value is sent.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret value itself, for the request that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.trim().is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<redacted>")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Secret(s)
    }
}

/// A URL that may carry credentials (`http://user:password@camera/...`). `Display`,
/// `Debug` and `Serialize` show it with the password replaced by `***`; use
/// [`SecretUrl::expose`] at the one place the request is made. Anything that is not a URL
/// with a password (a device path, a file) shows as it is.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct SecretUrl(String);

impl SecretUrl {
    pub fn new(url: impl Into<String>) -> Self {
        SecretUrl(url.into())
    }

    /// The URL itself, credentials included, for the request that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The URL with its password (if any) replaced by `***`.
    pub fn redacted(&self) -> String {
        let url = &self.0;
        let Some(scheme_end) = url.find("://").map(|i| i + 3) else { return url.clone() };
        let rest = &url[scheme_end..];
        let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
        // The last '@' ends the user info (a password may contain an '@' of its own).
        let Some(at) = authority.rfind('@') else { return url.clone() };
        let Some(colon) = authority[..at].find(':') else { return url.clone() };
        format!("{}***{}", &url[..scheme_end + colon + 1], &url[scheme_end + at..])
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.redacted(), f)
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl Serialize for SecretUrl {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.redacted())
    }
}

impl<'de> Deserialize<'de> for SecretUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(SecretUrl)
    }
}

impl From<String> for SecretUrl {
    fn from(s: String) -> Self {
        SecretUrl(s)
    }
}

impl From<&str> for SecretUrl {
    fn from(s: &str) -> Self {
        SecretUrl(s.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_never_prints_its_password() {
        let cases = [
            ("http://bob:hunter2@cam.lan:8080/snap?x=1", "http://bob:***@cam.lan:8080/snap?x=1"),
            ("https://bob:p@ss:w0rd@cam.lan/", "https://bob:***@cam.lan/"),
            ("http://:hunter2@cam.lan", "http://:***@cam.lan"),
            ("http://cam.lan/a@b:c", "http://cam.lan/a@b:c"),
            ("http://bob@cam.lan/", "http://bob@cam.lan/"),
            ("/dev/video0", "/dev/video0"),
            ("", ""),
        ];
        for (url, shown) in cases {
            let u = SecretUrl::new(url);
            assert_eq!(u.to_string(), shown);
            assert_eq!(format!("{u:?}"), format!("{shown:?}"));
            assert_eq!(serde_json::to_string(&u).unwrap(), serde_json::to_string(shown).unwrap());
            assert_eq!(u.expose(), url);
        }
        let back: SecretUrl = serde_json::from_str("\"http://a:b@c/\"").unwrap();
        assert_eq!(back.expose(), "http://a:b@c/");
        assert!(!format!("{back} {back:?}").contains(":b@"));
    }

    #[test]
    fn never_prints_the_value() {
        let s = Secret::new("hunter2-very-secret");
        assert!(!format!("{s:?}").contains("hunter2"));
        assert!(!format!("{s}").contains("hunter2"));
        assert!(!serde_json::to_string(&s).unwrap().contains("hunter2"));
        assert_eq!(s.expose(), "hunter2-very-secret");
        let back: Secret = serde_json::from_str("\"abc\"").unwrap();
        assert_eq!(back.expose(), "abc");
    }
}
