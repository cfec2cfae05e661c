//! The `web` binary: `web` serves; `web migrate` creates and migrates the database, then exits.

use web::configuration::Settings;
use web::startup::Application;

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = platform_telemetry::init("web");
    let settings = match platform_config::load::<Settings>() {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("web: {e}");
            // EX_USAGE: the configuration, not the program, is wrong.
            std::process::exit(64);
        }
    };
    match std::env::args().nth(1).as_deref() {
        Some("migrate") => Ok(domain::prepare_database(&settings.db).await?),
        None => {
            Application::build(settings)
                .await?
                .run_until_stopped()
                .await
        }
        Some(other) => {
            eprintln!("web: unknown command `{other}`; usage: web [migrate]");
            std::process::exit(64);
        }
    }
}
