//! Building and running the web server: the shared front-end server around the pages.

pub use frontend::AppState;

use crate::configuration::Settings;
use crate::routes;

/// A bound, ready-to-run web server.
pub struct Application(frontend::Application);

impl Application {
    /// Prepares the database (when configured), connects the data tier and binds `BIND`. Port
    /// 0 binds a free port, which [`Application::port`] reports; tests rely on that.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let limit = settings.http.max_body_bytes;
        frontend::Application::build(settings.0, move |cfg| routes::configure(cfg, limit))
            .await
            .map(Self)
    }

    pub fn port(&self) -> u16 {
        self.0.port()
    }

    /// Serves until SIGTERM or Ctrl-C, then lets in-flight requests finish.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.0.run_until_stopped().await
    }
}
