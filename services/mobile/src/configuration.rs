//! The mobile API's settings: the front ends' shared [`frontend::Settings`], listening on
//! `127.0.0.1:8201` unless `BIND` says otherwise. Every field is one environment variable of the same
//! name in upper case; see the README's configuration table.

use std::ops::{Deref, DerefMut};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Settings(pub frontend::Settings);

impl Default for Settings {
    fn default() -> Self {
        Self(frontend::Settings::with_bind("127.0.0.1:8201"))
    }
}

impl Deref for Settings {
    type Target = frontend::Settings;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl DerefMut for Settings {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}
