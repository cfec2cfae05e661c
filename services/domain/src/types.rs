//! Validated domain values. Each has a private field and one constructor, `parse`, whose error
//! is a sentence fit to show the user.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A user's primary key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, sqlx::Type, Serialize, Deserialize)]
#[sqlx(transparent)]
#[serde(transparent)]
pub struct UserId(pub i64);

/// A post's primary key.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, sqlx::Type, Serialize, Deserialize,
)]
#[sqlx(transparent)]
#[serde(transparent)]
pub struct PostId(pub i64);

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for PostId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Trims, then checks a length in characters and refuses control characters other than line
/// breaks and tabs (`multiline`) or any control character at all.
fn text(what: &str, raw: &str, min: usize, max: usize, multiline: bool) -> Result<String, String> {
    let trimmed = raw.trim();
    let len = trimmed.chars().count();
    if len < min {
        return Err(if min == 1 {
            format!("{what} must not be empty.")
        } else {
            format!("{what} must be at least {min} characters.")
        });
    }
    if len > max {
        return Err(format!("{what} must be at most {max} characters."));
    }
    let allowed = |c: char| !c.is_control() || (multiline && matches!(c, '\n' | '\r' | '\t'));
    if !trimmed.chars().all(allowed) {
        return Err(format!("{what} contains characters that are not allowed."));
    }
    Ok(trimmed.to_owned())
}

macro_rules! text_type {
    ($(#[$doc:meta])* $name:ident, $what:literal, $min:expr, $max:expr, $multiline:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct $name(String);

        impl $name {
            /// The fewest characters allowed.
            pub const MIN_CHARS: usize = $min;
            /// The most characters allowed.
            pub const MAX_CHARS: usize = $max;

            /// Validates `raw` (trimmed) into a value.
            pub fn parse(raw: &str) -> Result<Self, String> {
                text($what, raw, $min, $max, $multiline).map(Self)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

text_type!(
    /// A post's title: 1 to 200 characters on one line.
    PostTitle, "The title", 1, 200, false
);
text_type!(
    /// A post's body: 1 to 20,000 characters.
    PostBody, "The body", 1, 20_000, true
);
text_type!(
    /// A comment's body: 1 to 2,000 characters.
    CommentBody, "The comment", 1, 2_000, true
);

/// A username: 3 to 32 letters, digits, `_` or `-`. Uniqueness ignores case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Username(String);

impl Username {
    pub const MIN_CHARS: usize = 3;
    pub const MAX_CHARS: usize = 32;

    pub fn parse(raw: &str) -> Result<Self, String> {
        let name = text("The username", raw, Self::MIN_CHARS, Self::MAX_CHARS, false)?;
        if !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err("The username may only contain letters, digits, '_' and '-'.".into());
        }
        Ok(Self(name))
    }
}

impl AsRef<str> for Username {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// A new password: 8 to 128 characters. Never trimmed (spaces are legitimate) and never logged.
#[derive(Clone)]
pub struct Password(String);

impl Password {
    pub const MIN_CHARS: usize = 8;
    /// The cap keeps hashing cost bounded; OWASP suggests at least 64.
    pub const MAX_CHARS: usize = 128;

    pub fn parse(raw: &str) -> Result<Self, String> {
        let len = raw.chars().count();
        if len < Self::MIN_CHARS {
            return Err(format!(
                "The password must be at least {} characters.",
                Self::MIN_CHARS
            ));
        }
        if len > Self::MAX_CHARS {
            return Err(format!(
                "The password must be at most {} characters.",
                Self::MAX_CHARS
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password([redacted])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles_are_trimmed_and_bounded() {
        assert_eq!(PostTitle::parse("  hi  ").unwrap().as_ref(), "hi");
        assert!(PostTitle::parse("   ").is_err());
        assert!(PostTitle::parse(&"x".repeat(201)).is_err());
        assert!(
            PostTitle::parse(&"é".repeat(200)).is_ok(),
            "limits count characters"
        );
        assert!(PostTitle::parse("a\nb").is_err(), "titles are one line");
    }

    #[test]
    fn bodies_keep_line_breaks_but_refuse_other_control_characters() {
        assert!(PostBody::parse("line one\nline two").is_ok());
        assert!(PostBody::parse("bell\u{7}").is_err());
    }

    #[test]
    fn usernames_are_restricted_to_a_safe_alphabet() {
        assert!(Username::parse("ada_lovelace-1").is_ok());
        assert!(Username::parse("ad").is_err());
        assert!(Username::parse("ada lovelace").is_err());
        assert!(Username::parse("<script>").is_err());
    }

    #[test]
    fn passwords_are_bounded_and_never_printed() {
        assert!(Password::parse("short").is_err());
        assert!(Password::parse(&"p".repeat(129)).is_err());
        let p = Password::parse("correct horse battery").unwrap();
        assert_eq!(format!("{p:?}"), "Password([redacted])");
    }
}
