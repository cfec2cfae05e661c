//! The `spam-worker` binary: classifies comments from `comments.spam` and publishes or rejects
//! them. `/healthz` and `/readyz` on `BIND` (default `127.0.0.1:9301`).

use std::sync::Arc;

use workers::classifier::SpamModel;
use workers::{SPAM_CONSUMER, SpamHandler, SpamSettings, run_worker};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = platform_telemetry::init("spam-worker");
    let settings: SpamSettings = platform_config::load_or_exit("spam-worker");
    let model = Arc::new(SpamModel::embedded());
    let threshold = settings.spam_threshold;
    run_worker(
        settings.common,
        platform_messaging::topology::SPAM,
        SPAM_CONSUMER,
        |store| SpamHandler::new(store, model, threshold),
    )
    .await
}
