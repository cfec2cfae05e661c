//! The `mobile` binary: `mobile` serves; `mobile migrate` creates and migrates the database, then
//! exits.

use mobile::configuration::Settings;
use mobile::startup::Application;

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = platform_telemetry::init("mobile");
    let settings = match platform_config::load::<Settings>() {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("mobile: {e}");
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
            eprintln!("mobile: unknown command `{other}`; usage: mobile [migrate]");
            std::process::exit(64);
        }
    }
}
