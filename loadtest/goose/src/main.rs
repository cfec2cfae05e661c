//! goose load scenarios for scaleout: the five scenarios of `loadtest/k6/scaleout.js`, in Rust.
//!
//! ```text
//! cargo build --release --manifest-path loadtest/goose/Cargo.toml
//! loadtest/goose/target/release/scaleout-goose --run-time 30s            # the mix
//! loadtest/goose/target/release/scaleout-goose --scenarios anonymous     # one scenario
//! ```
//!
//! Scenarios (machine names for `--scenarios`): `anonymous` (front page and Zipf-distributed
//! post pages), `loggedin` (post pages with the API token as the `sid` cookie), `posting`,
//! `commentstorm` and `mobile` (the JSON API). Users are split between them 55/15/2/8/20, the
//! shares of the k6 mix, and each waits 0.5 to 1.5 s between requests, so 100 users (the
//! default) make about 100 requests per second, as k6's default `RATE`.
//!
//! Every goose option works (`--users`, `--increase-rate`, `--run-time`, `--report-file`,
//! `--threshold`...); `BASE_URL` (default `http://127.0.0.1:8080`) is the default `--host`.
//! The same thresholds as k6 fail the run: under 1 % errors, reads p95 < 100 ms and
//! p99 < 250 ms, writes p95 < 250 ms and p99 < 500 ms, judged at the end of the run.
//!
//! # Layout
//! - [`main`]: the attack, its defaults and thresholds.
//! - [`load_posts`]: the `test_start` step that collects the posts to read and their Zipf law.
//! - [`sign_up`]: each signed-in user's `on_start`: register and log in through the API.
//! - one function per scenario's transaction.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use goose::prelude::*;
use serde::Deserialize;
use serde_json::json;

/// Reads that must stay fast: k6's `kind:read` requests.
const READS: [&str; 5] = [
    "GET /",
    "GET /posts/{id}",
    "GET /posts/{id} (signed in)",
    "GET /api/v1/posts",
    "GET /api/v1/posts/{id}",
];
/// Writes, allowed more time: k6's `kind:write` requests.
const WRITES: [&str; 2] = ["POST /api/v1/posts", "POST /api/v1/posts/{id}/comments"];

/// The posts readers pick from: newest first, with the cumulative distribution of a Zipf law
/// over them, so a few posts are hot and most are cold, as on a real site.
struct Posts {
    ids: Vec<i64>,
    cdf: Vec<f64>,
}

static POSTS: OnceLock<Posts> = OnceLock::new();
/// Numbers the accounts this run registers.
static ACCOUNTS: AtomicUsize = AtomicUsize::new(0);
/// Tells this run's accounts from earlier runs'.
static RUN: OnceLock<String> = OnceLock::new();

/// What a signed-in user keeps: the session id the API answered the login with.
#[derive(Clone)]
struct Session {
    token: String,
}

#[derive(Deserialize)]
struct Page {
    items: Vec<Item>,
    next_cursor: Option<String>,
}

#[derive(Deserialize)]
struct Item {
    id: i64,
}

#[derive(Deserialize)]
struct Login {
    token: String,
}

#[tokio::main]
async fn main() -> Result<(), GooseError> {
    let host = std::env::var("BASE_URL").unwrap_or_else(|_| "http://127.0.0.1:8080".to_owned());
    let think =
        |s: Scenario| s.set_wait_time(Duration::from_millis(500), Duration::from_millis(1500));
    let mut attack = GooseAttack::initialize()?
        .test_start(transaction!(load_posts).set_name("collect posts"))
        .register_scenario(think(
            scenario!("anonymous")
                .set_weight(55)?
                .register_transaction(transaction!(anonymous)),
        )?)
        .register_scenario(think(
            scenario!("logged in")
                .set_weight(15)?
                .register_transaction(transaction!(sign_up).set_on_start())
                .register_transaction(transaction!(logged_in)),
        )?)
        .register_scenario(think(
            scenario!("posting")
                .set_weight(2)?
                .register_transaction(transaction!(sign_up).set_on_start())
                .register_transaction(transaction!(posting)),
        )?)
        .register_scenario(think(
            scenario!("comment storm")
                .set_weight(8)?
                .register_transaction(transaction!(sign_up).set_on_start())
                .register_transaction(transaction!(comment_storm)),
        )?)
        .register_scenario(think(
            scenario!("mobile")
                .set_weight(20)?
                .register_transaction(transaction!(mobile)),
        )?)
        .set_default(GooseDefault::Host, host.as_str())?
        .set_default(GooseDefault::Users, 100)?
        .set_default(GooseDefault::IncreaseRate, "20")?
        .set_default(GooseDefault::RunTime, 30)?
        // Like k6: every rule is judged once, at the end, and a miss fails the run.
        .set_default(GooseDefault::NoThresholdAbort, true)?
        .set_default(GooseDefault::Threshold, "error-rate<1%")?;
    for name in READS {
        attack = attack
            .set_default(
                GooseDefault::Threshold,
                format!("p95<100ms for {name}").as_str(),
            )?
            .set_default(
                GooseDefault::Threshold,
                format!("p99<250ms for {name}").as_str(),
            )?;
    }
    for name in WRITES {
        attack = attack
            .set_default(
                GooseDefault::Threshold,
                format!("p95<250ms for {name}").as_str(),
            )?
            .set_default(
                GooseDefault::Threshold,
                format!("p99<500ms for {name}").as_str(),
            )?;
    }
    attack.execute().await?;
    Ok(())
}

fn run_id() -> &'static str {
    RUN.get_or_init(|| {
        let millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        format!("{millis:x}")
    })
}

/// The body of a response, or the transaction's error.
async fn body(
    response: Result<reqwest::Response, reqwest::Error>,
) -> Result<String, Box<TransactionError>> {
    Ok(response?.text().await?)
}

/// Parses a JSON answer, naming what was expected when it is something else.
fn parse<T: for<'de> Deserialize<'de>>(what: &str, text: &str) -> Result<T, Box<TransactionError>> {
    serde_json::from_str(text).map_err(|e| format!("{what}: {e}: {text}").into())
}

/// Registers an account and logs in; other accounts' sessions are untouched.
async fn register_and_log_in(user: &mut GooseUser) -> Result<String, Box<TransactionError>> {
    let n = ACCOUNTS.fetch_add(1, Ordering::Relaxed);
    let credentials = json!({
        "username": format!("goose-{}-{n}", run_id()),
        "password": "load-test-password",
    });
    let request = GooseRequest::builder()
        .method(GooseMethod::Post)
        .path("/api/v1/auth/register")
        .set_request_builder(
            user.get_request_builder(&GooseMethod::Post, "/api/v1/auth/register")?
                .json(&credentials),
        )
        .expect_status_code(201)
        .build();
    let registered = user.request(request).await?;
    if !registered.request.success {
        return Err(format!("registration failed: {}", registered.request.status_code).into());
    }
    let request = GooseRequest::builder()
        .method(GooseMethod::Post)
        .path("/api/v1/auth/login")
        .set_request_builder(
            user.get_request_builder(&GooseMethod::Post, "/api/v1/auth/login")?
                .json(&credentials),
        )
        .build();
    let login = user.request(request).await?;
    let text = body(login.response).await?;
    Ok(parse::<Login>("the login answer", &text)?.token)
}

/// `test_start`: collects the newest posts (up to 1,000), writing 50 first on an empty site.
async fn load_posts(user: &mut GooseUser) -> TransactionResult {
    let mut ids = list_posts(user).await?;
    if ids.is_empty() {
        // An empty site: give the readers something to read.
        let token = register_and_log_in(user).await?;
        for i in 0..50 {
            let post = json!({ "title": format!("Post {i}"), "body": "Seeded by goose." });
            let request = user
                .get_request_builder(&GooseMethod::Post, "/api/v1/posts")?
                .bearer_auth(&token)
                .json(&post);
            let created = user
                .request(
                    GooseRequest::builder()
                        .method(GooseMethod::Post)
                        .path("/api/v1/posts")
                        .set_request_builder(request)
                        .build(),
                )
                .await?;
            let text = body(created.response).await?;
            ids.push(parse::<Item>("a created post", &text)?.id);
        }
    }
    let zipf_s = std::env::var("ZIPF_S")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(1.1);
    let weights: Vec<f64> = (0..ids.len())
        .map(|k| 1.0 / ((k + 1) as f64).powf(zipf_s))
        .collect();
    let total: f64 = weights.iter().sum();
    let mut sum = 0.0;
    let cdf = weights
        .iter()
        .map(|w| {
            sum += w / total;
            sum
        })
        .collect();
    // A second `test_start` cannot happen; if it did, the first list stands.
    let _ = POSTS.set(Posts { ids, cdf });
    Ok(())
}

async fn list_posts(user: &mut GooseUser) -> Result<Vec<i64>, Box<TransactionError>> {
    let mut ids = Vec::new();
    let mut cursor: Option<String> = None;
    while ids.len() < 1000 {
        let path = match &cursor {
            Some(c) => format!("/api/v1/posts?limit=100&cursor={c}"),
            None => "/api/v1/posts?limit=100".to_owned(),
        };
        let page = user.get(&path).await?;
        if !page.request.success {
            return Err(format!("listing posts failed: {}", page.request.status_code).into());
        }
        let page: Page = parse("a page of posts", &body(page.response).await?)?;
        ids.extend(page.items.iter().map(|p| p.id));
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    Ok(ids)
}

/// A post drawn from the Zipf law: newest most popular.
fn zipf_post() -> Result<i64, Box<TransactionError>> {
    let posts = POSTS
        .get()
        .ok_or_else(|| Box::new(TransactionError::Custom("no posts were collected".into())))?;
    let u: f64 = rand::random();
    let k = posts
        .cdf
        .partition_point(|&p| p < u)
        .min(posts.ids.len() - 1);
    Ok(posts.ids[k])
}

fn session(user: &GooseUser) -> Result<String, Box<TransactionError>> {
    user.get_session_data::<Session>()
        .map(|s| s.token.clone())
        .ok_or_else(|| "this user could not sign up; see the errors above".into())
}

/// `on_start` of the signed-in scenarios.
async fn sign_up(user: &mut GooseUser) -> TransactionResult {
    let token = register_and_log_in(user).await?;
    user.set_session_data(Session { token });
    Ok(())
}

/// Anonymous reading, the hot path: the front page one time in five, else a post.
async fn anonymous(user: &mut GooseUser) -> TransactionResult {
    if rand::random::<f64>() < 0.2 {
        user.get_named("/", "/").await?;
    } else {
        let path = format!("/posts/{}", zipf_post()?);
        user.get_named(&path, "/posts/{id}").await?;
    }
    Ok(())
}

/// A signed-in reader: the API token is the same session id the web takes as its cookie.
async fn logged_in(user: &mut GooseUser) -> TransactionResult {
    let token = session(user)?;
    let path = format!("/posts/{}", zipf_post()?);
    let request = user
        .get_request_builder(&GooseMethod::Get, &path)?
        .header("cookie", format!("sid={token}"));
    let mut page = user
        .request(
            GooseRequest::builder()
                .path(path.as_str())
                .name("/posts/{id} (signed in)")
                .set_request_builder(request)
                .build(),
        )
        .await?;
    let text = body(page.response).await?;
    if page.request.success && !text.contains("Signed in as") {
        return user.set_failure(
            "the page does not say who is signed in",
            &mut page.request,
            None,
            None,
        );
    }
    Ok(())
}

/// The mobile API: the listing three times in ten, else a post.
async fn mobile(user: &mut GooseUser) -> TransactionResult {
    if rand::random::<f64>() < 0.3 {
        user.get_named("/api/v1/posts?limit=20", "/api/v1/posts")
            .await?;
    } else {
        let path = format!("/api/v1/posts/{}", zipf_post()?);
        user.get_named(&path, "/api/v1/posts/{id}").await?;
    }
    Ok(())
}

async fn posting(user: &mut GooseUser) -> TransactionResult {
    let token = session(user)?;
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let post = json!({
        "title": format!("Load test {millis}"),
        "body": "Written by the posting scenario.",
    });
    let request = user
        .get_request_builder(&GooseMethod::Post, "/api/v1/posts")?
        .bearer_auth(&token)
        .json(&post);
    user.request(
        GooseRequest::builder()
            .method(GooseMethod::Post)
            .path("/api/v1/posts")
            .set_request_builder(request)
            .expect_status_code(201)
            .build(),
    )
    .await?;
    Ok(())
}

/// Comments on hot posts: each goes through the outbox, the relay and both workers.
async fn comment_storm(user: &mut GooseUser) -> TransactionResult {
    let token = session(user)?;
    let comment = if rand::random::<f64>() < 0.5 {
        "What a great post, thanks!"
    } else {
        "I disagree, this is wrong."
    };
    let path = format!("/api/v1/posts/{}/comments", zipf_post()?);
    let request = user
        .get_request_builder(&GooseMethod::Post, &path)?
        .bearer_auth(&token)
        .json(&json!({ "body": comment }));
    user.request(
        GooseRequest::builder()
            .method(GooseMethod::Post)
            .path(path.as_str())
            .name("/api/v1/posts/{id}/comments")
            .set_request_builder(request)
            .expect_status_code(202)
            .build(),
    )
    .await?;
    Ok(())
}
