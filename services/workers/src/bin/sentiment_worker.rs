//! The `sentiment-worker` binary: scores comments from `comments.sentiment` with VADER.
//! `/healthz` and `/readyz` on `BIND` (default `127.0.0.1:9302`).

use std::sync::Arc;

use workers::sentiment::Sentiment;
use workers::{SENTIMENT_CONSUMER, SentimentHandler, SentimentSettings, run_worker};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = platform_telemetry::init("sentiment-worker");
    let settings: SentimentSettings = platform_config::load_or_exit("sentiment-worker");
    let sentiment = Arc::new(Sentiment::default());
    run_worker(
        settings.common,
        platform_messaging::topology::SENTIMENT,
        SENTIMENT_CONSUMER,
        |store| SentimentHandler::new(store, sentiment),
    )
    .await
}
