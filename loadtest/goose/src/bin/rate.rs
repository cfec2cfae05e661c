//! A constant-arrival-rate load of comment submissions, for the pipeline benchmark.
//!
//! ```text
//! BASE_URL=http://127.0.0.1:8081 TOKEN=... POST_ID=1 RATE=2000 DURATION=10 \
//!   loadtest/goose/target/release/scaleout-rate
//! ```
//!
//! Every `1 / RATE` seconds, for `DURATION` seconds, it starts one
//! `POST /api/v1/posts/{POST_ID}/comments` with the bearer session `TOKEN`, whether or not the
//! earlier ones have been answered (an open model, as k6's `constant-arrival-rate`), over at
//! most `CONNECTIONS` (512) connections at once; a submission due while all are busy is counted
//! as dropped, not delayed. `SPAM_EVERY=n` makes every n-th comment obvious spam.
//!
//! It exists because the load generator shares the benchmark machine's two cores with what it
//! measures: k6 running `loadtest/pipeline.js` spent about 330 µs of CPU per comment and goose
//! about 220, against about 1,000 for the whole pipeline, so they measured themselves as much as
//! the pipeline. This does the same work with one thread and one reused HTTP/1.1 client.
//!
//! At the end it prints one JSON line, which `loadtest/pipeline-bench.sh` reads:
//! `{"offered", "accepted", "refused", "dropped", "p50_ms", "p99_ms", "max_ms"}`; accepted counts
//! the 202 answers, refused every other answer and every error, and the latencies are those of
//! the answered submissions.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio::time::MissedTickBehavior;

const SPAM: &str =
    "CLICK HERE to claim your FREE money!!! Limited offer, act now, no credit check!";

/// What each answered submission left: its status (0 for an error) and its time.
type Answers = Arc<Mutex<Vec<(u16, Duration)>>>;

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn number(name: &str, default: u64) -> u64 {
    match env(name) {
        None => default,
        Some(v) => v.parse().unwrap_or_else(|_| {
            eprintln!("{name} must be a whole number, not {v:?}");
            std::process::exit(2)
        }),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let (Some(token), Some(post)) = (env("TOKEN"), env("POST_ID")) else {
        eprintln!("TOKEN (a bearer session) and POST_ID must be set");
        std::process::exit(2);
    };
    let base = env("BASE_URL").unwrap_or_else(|| "http://127.0.0.1:8080".to_owned());
    let url = format!(
        "{}/api/v1/posts/{post}/comments",
        base.trim_end_matches('/')
    );
    let authorization = format!("Bearer {token}");
    let rate = number("RATE", 500).max(1);
    let duration = number("DURATION", 20);
    let connections = number("CONNECTIONS", 512).max(1) as usize;
    let spam_every = number("SPAM_EVERY", 0);

    let client = match reqwest::Client::builder()
        .pool_max_idle_per_host(connections)
        .timeout(Duration::from_secs(10))
        .build()
    {
        Ok(client) => client,
        Err(e) => {
            eprintln!("the HTTP client could not be built: {e}");
            std::process::exit(1);
        }
    };
    let free = Arc::new(Semaphore::new(connections));
    let answers: Answers = Arc::new(Mutex::new(Vec::with_capacity((rate * duration) as usize)));
    let offered = rate * duration;
    let mut dropped = 0u64;

    // Ticks missed while the thread was busy fire at once: the rate is kept on average.
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    ticker.set_missed_tick_behavior(MissedTickBehavior::Burst);
    for n in 0..offered {
        ticker.tick().await;
        let Ok(permit) = free.clone().try_acquire_owned() else {
            dropped += 1;
            continue;
        };
        let body = if spam_every > 0 && n % spam_every == 0 {
            format!(r#"{{"body":"{SPAM}"}}"#)
        } else {
            format!(r#"{{"body":"Thanks for the post, it was a good read. ({n})"}}"#)
        };
        let request = client
            .post(&url)
            .header("content-type", "application/json")
            .header("authorization", &authorization)
            .body(body);
        let answers = answers.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let status = match request.send().await {
                // The body is read so the connection can carry the next submission.
                Ok(response) => {
                    let status = response.status().as_u16();
                    match response.bytes().await {
                        Ok(_) => status,
                        Err(_) => 0,
                    }
                }
                Err(_) => 0,
            };
            let took = started.elapsed();
            answers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((status, took));
            drop(permit);
        });
    }
    // Every submission holds a permit until it is answered or times out.
    let _all = free.acquire_many(connections as u32).await;

    let answers = std::mem::take(&mut *answers.lock().unwrap_or_else(|e| e.into_inner()));
    let accepted = answers.iter().filter(|(status, _)| *status == 202).count();
    let mut times: Vec<Duration> = answers
        .iter()
        .filter(|(status, _)| *status != 0)
        .map(|(_, took)| *took)
        .collect();
    times.sort_unstable();
    let at = |q: f64| {
        times
            .get(((times.len() as f64 * q).ceil() as usize).saturating_sub(1))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    println!(
        r#"{{"offered":{offered},"accepted":{accepted},"refused":{},"dropped":{dropped},"p50_ms":{:.1},"p99_ms":{:.1},"max_ms":{:.1}}}"#,
        answers.len() - accepted,
        at(0.5),
        at(0.99),
        at(1.0),
    );
}
