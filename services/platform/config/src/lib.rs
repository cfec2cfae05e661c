//! Layered configuration for scaleout processes: defaults, then an optional TOML file, then the
//! environment.
//!
//! Every process describes its settings as one flat `serde` struct whose `Default` runs on a
//! developer machine with no setting at all. [`load`] layers, from weakest to strongest:
//!
//! 1. the struct's `Default`;
//! 2. the TOML file named by `CONFIG_FILE`, if set (its keys are the field names);
//! 3. environment variables named after the fields in upper case (`database_url` is read from
//!    `DATABASE_URL`).
//!
//! Keys are flat on purpose: the variable a user sets, the key in the file and the field in the
//! code are the same word, so the README's configuration table is the whole story. A file key
//! that names no field is an error, and so is a value of the wrong type; the message names the key
//! and where it came from, so a typo stops the process instead of being ignored.
//!
//! # Layout
//! - [`load`] / [`load_from`]: the loader; [`load_or_exit`] for a `main`.
//! - [`Secret`]: a string that never prints (database passwords live in URLs).
//! - [`comma_separated`]: a serde helper for list-valued variables such as
//!   `DATABASE_REPLICA_URLS`.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::value::Dict;
use figment::{Figment, Provider};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The environment variable that names an optional TOML file of settings.
pub const CONFIG_FILE_VAR: &str = "CONFIG_FILE";

/// Why settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A key in the file names no setting.
    #[error("unknown setting `{key}` in {file}; known settings: {known}")]
    UnknownKey {
        key: String,
        file: String,
        known: String,
    },
    /// A value could not be parsed; the message names the variable or file key.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Loads `T` from its defaults, the file named by `CONFIG_FILE` and the environment.
pub fn load<T>() -> Result<T, ConfigError>
where
    T: Serialize + DeserializeOwned + Default,
{
    let file = std::env::var_os(CONFIG_FILE_VAR).map(PathBuf::from);
    load_from(file.as_deref(), Env::raw())
}

/// [`load`] for a process's `main`: on a bad setting, prints `program: reason` and exits with
/// `EX_USAGE` (64), since the configuration, not the program, is wrong.
pub fn load_or_exit<T>(program: &str) -> T
where
    T: Serialize + DeserializeOwned + Default,
{
    match load() {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("{program}: {e}");
            std::process::exit(64);
        }
    }
}

/// Loads `T` from its defaults, an optional file and the given environment provider.
///
/// Tests pass `Env::raw()` filtered, or a figment `Jail`, instead of mutating the process
/// environment.
pub fn load_from<T>(file: Option<&Path>, env: Env) -> Result<T, ConfigError>
where
    T: Serialize + DeserializeOwned + Default,
{
    let defaults = Figment::from(Serialized::defaults(T::default()));
    let known: BTreeSet<String> = defaults
        .data()
        .map_err(|e| ConfigError::Invalid(e.to_string()))?
        .into_values()
        .flat_map(|dict: Dict| dict.into_keys())
        .collect();

    let mut figment = defaults;
    if let Some(path) = file {
        let table: Dict = Figment::from(Toml::file_exact(path))
            .extract()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        if let Some(key) = table.keys().find(|k| !known.contains(*k)) {
            return Err(ConfigError::UnknownKey {
                key: key.clone(),
                file: path.display().to_string(),
                known: known.iter().cloned().collect::<Vec<_>>().join(", "),
            });
        }
        figment = figment.merge(Toml::file_exact(path));
    }
    // Only variables that name a field are read: the environment also holds PATH, HOME and the
    // like, which are none of our business.
    let env = env.filter(move |k| known.iter().any(|name| k == name.as_str()));
    figment
        .merge(env)
        .extract()
        .map_err(|e| ConfigError::Invalid(e.to_string()))
}

/// A string that is never printed: `Debug` and `Display` show `[redacted]`.
///
/// It serializes in clear because the loader round-trips defaults through serde; nothing else
/// serializes settings.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself; call this only where the value is handed to a client library.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Serde helpers for a list given as one comma-separated string, as environment variables are.
///
/// Use with `#[serde(with = "platform_config::comma_separated")]`. A TOML array is accepted too.
pub mod comma_separated {
    use super::*;

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        Text(String),
        List(Vec<String>),
    }

    /// Reads `"a, b,,c"` as `["a", "b", "c"]`; empty items are dropped.
    pub fn deserialize<'de, D: Deserializer<'de>, T>(deserializer: D) -> Result<Vec<T>, D::Error>
    where
        T: std::str::FromStr,
        T::Err: fmt::Display,
    {
        let items = match Either::deserialize(deserializer)? {
            Either::Text(text) => text
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
            Either::List(list) => list,
        };
        items
            .iter()
            .map(|s| s.parse().map_err(serde::de::Error::custom))
            .collect()
    }

    /// Writes the list back as one comma-separated string.
    pub fn serialize<S: Serializer, T: fmt::Display>(
        items: &[T],
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        let text = items
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",");
        serializer.serialize_str(&text)
    }
}

/// The environment provider, re-exported so callers of [`load_from`] need no figment dependency.
pub use figment::providers::Env as EnvProvider;

#[cfg(test)]
// figment's `Jail` closures must return its large error type; that is its API, not our choice.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;
    use figment::Jail;

    #[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
    struct Example {
        database_url: Secret,
        port: u16,
        #[serde(with = "comma_separated")]
        replica_urls: Vec<String>,
    }

    #[test]
    fn environment_overrides_file_which_overrides_defaults() {
        Jail::expect_with(|jail| {
            jail.create_file("s.toml", "port = 7\ndatabase_url = \"postgres://f\"")?;
            jail.set_env("PORT", "9");
            jail.set_env("REPLICA_URLS", "postgres://a, postgres://b,");
            let s: Example = load_from(Some(Path::new("s.toml")), Env::raw()).unwrap();
            assert_eq!(s.port, 9);
            assert_eq!(s.database_url.expose(), "postgres://f");
            assert_eq!(s.replica_urls, vec!["postgres://a", "postgres://b"]);
            Ok(())
        });
    }

    #[test]
    fn a_bad_value_names_the_variable() {
        Jail::expect_with(|jail| {
            jail.set_env("PORT", "eighty");
            let err = load_from::<Example>(None, Env::raw()).unwrap_err();
            assert!(err.to_string().contains("PORT"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn an_unknown_file_key_is_rejected() {
        Jail::expect_with(|jail| {
            jail.create_file("s.toml", "prot = 7")?;
            let err = load_from::<Example>(Some(Path::new("s.toml")), Env::raw()).unwrap_err();
            assert!(err.to_string().contains("`prot`"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn secrets_do_not_print() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "[redacted]");
    }
}
