//! The `web` binary: `web` serves; `web migrate` creates and migrates the database, then
//! exits.

use frontend::Command;
use web::configuration::Settings;
use web::startup::Application;

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = platform_telemetry::init("web");
    let settings: Settings = platform_config::load_or_exit("web");
    match Command::from_args("web") {
        Command::Migrate => Ok(domain::prepare_database(&settings.db).await?),
        Command::Serve => {
            Application::build(settings)
                .await?
                .run_until_stopped()
                .await
        }
    }
}
