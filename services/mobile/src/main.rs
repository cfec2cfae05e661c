//! The `mobile` binary: `mobile` serves; `mobile migrate` creates and migrates the database, then
//! exits.

use frontend::Command;
use mobile::configuration::Settings;
use mobile::startup::Application;

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = platform_telemetry::init("mobile");
    let settings: Settings = platform_config::load_or_exit("mobile");
    match Command::from_args("mobile") {
        Command::Migrate => Ok(domain::prepare_database(&settings.db).await?),
        Command::Serve => {
            Application::build(settings)
                .await?
                .run_until_stopped()
                .await
        }
    }
}
