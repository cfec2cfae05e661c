//! Every series the Grafana dashboards in `infra/grafana/dashboards/` query is exposed by some
//! scaleout process, named by Prometheus conventions, and moves when what it counts happens.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use platform_metrics::scrape::Scrape;
use platform_testing::eventually;
use serde_json::Value;
use trace_tests::Stack;
use workers::{SENTIMENT_CONSUMER, SPAM_CONSUMER};

async fn fetch(client: &reqwest::Client, url: String) -> Scrape {
    let response = client.get(&url).send().await.expect("a scrape answer");
    assert_eq!(response.status(), 200, "{url}");
    Scrape::parse(&response.text().await.unwrap()).expect("the Prometheus text format")
}

/// The metric names a PromQL expression reads: identifiers that are neither functions nor
/// keywords, outside label matchers, grouping clauses, ranges and strings.
fn metric_names(expr: &str) -> Vec<String> {
    let mut plain = String::new();
    let mut chars = expr.chars().peekable();
    while let Some(c) = chars.next() {
        let close = match c {
            '"' => '"',
            '{' => '}',
            '[' => ']',
            _ => {
                plain.push(c);
                continue;
            }
        };
        for inner in chars.by_ref() {
            if inner == close {
                break;
            }
        }
        plain.push(' ');
    }
    let mut names = Vec::new();
    let mut rest = plain.as_str();
    let mut grouping = false;
    while let Some(start) = rest.find(|c: char| c.is_ascii_alphabetic() || c == '_') {
        rest = &rest[start..];
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(rest.len());
        let (word, after) = rest.split_at(end);
        let ahead = after.trim_start();
        // `sum by (...) (...)`: an aggregation is a function whose grouping comes first.
        let called = ahead.starts_with('(')
            || ["by", "without"].iter().any(|k| {
                ahead
                    .strip_prefix(k)
                    .is_some_and(|r| r.trim_start().starts_with('('))
            });
        if grouping {
            // `by (a, b)`: label names until the group closes.
            grouping = !ahead.starts_with(')');
        } else if matches!(word, "by" | "without" | "on" | "ignoring") {
            grouping = true;
        } else if !called && !matches!(word, "and" | "or" | "unless" | "offset" | "bool") {
            names.push(word.to_owned());
        }
        rest = after;
    }
    names
}

fn dashboard_queries() -> Vec<(String, String)> {
    fn walk(value: &Value, file: &str, out: &mut Vec<(String, String)>) {
        match value {
            Value::Object(map) => {
                for (key, v) in map {
                    match (key.as_str(), v) {
                        ("expr", Value::String(expr)) => out.push((file.to_owned(), expr.clone())),
                        _ => walk(v, file, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, file, out)),
            _ => {}
        }
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../infra/grafana/dashboards");
    let mut queries = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            let json: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            walk(&json, &path.display().to_string(), &mut queries);
        }
    }
    queries
}

#[test]
fn metric_names_are_read_out_of_promql() {
    assert_eq!(
        metric_names(
            "histogram_quantile(0.99, sum by (job, route, le) (rate(http_request_duration_seconds_bucket[1m])))"
        ),
        ["http_request_duration_seconds_bucket"]
    );
    assert_eq!(
        metric_names(
            "sum(rate(db_reads_total{pool=\"primary\"}[1m])) / sum(rate(db_reads_total[1m]))"
        ),
        ["db_reads_total", "db_reads_total"]
    );
    assert_eq!(
        metric_names("min by (instance) (cache_circuit_closed)"),
        ["cache_circuit_closed"]
    );
}

#[tokio::test]
async fn every_dashboard_series_is_exposed_and_moves_with_a_comment() {
    let mut stack = Stack::start().await;
    let post = stack
        .comment_on_a_new_post("What a lovely post, thank you!")
        .await;
    // A post read twice through the gateway: a cache miss, then a hit.
    for _ in 0..2 {
        let url = format!("http://{}/api/v1/posts/{post}", stack.gateway_addr);
        assert_eq!(stack.client.get(url).send().await.unwrap().status(), 200);
    }
    // A request the gateway answers itself: a header over its 32 KiB limit.
    let oversized = stack
        .client
        .get(format!("http://{}/", stack.gateway_addr))
        .header("x-padding", "a".repeat(40 * 1024))
        .send()
        .await
        .unwrap();
    assert_eq!(oversized.status(), 431);
    relay::measure_backlog(&stack.db.pool, &stack.relay.stats())
        .await
        .unwrap();

    let client = stack.client.clone();
    // The replica's series appear once the API's monitor has seen it answer.
    let api_metrics = format!("http://{}/metrics", stack.api_addr);
    let replica_reported = || async {
        fetch(&client, api_metrics.clone())
            .await
            .samples
            .keys()
            .any(|(n, _)| n == "db_replica_lag_seconds")
    };
    assert!(
        eventually(Duration::from_secs(10), replica_reported).await,
        "the API never reported the replica; is it running? (infra/scripts/replica.sh up)"
    );
    let mobile = fetch(&client, api_metrics.clone()).await;
    let processes = [
        (
            "gateway",
            fetch(
                &client,
                format!("http://{}/metrics", stack.gateway_admin_addr),
            )
            .await,
        ),
        ("mobile", mobile),
        (
            "relay",
            Scrape::parse(&relay::metrics(&stack.relay).render()).unwrap(),
        ),
        (
            "spam-worker",
            Scrape::parse(&workers::metrics(SPAM_CONSUMER, &stack.spam).render()).unwrap(),
        ),
        (
            "sentiment-worker",
            Scrape::parse(&workers::metrics(SENTIMENT_CONSUMER, &stack.sentiment).render())
                .unwrap(),
        ),
    ];
    for (process, scrape) in &processes {
        assert!(
            scrape.convention_breaks().is_empty(),
            "{process}: {:?}",
            scrape.convention_breaks()
        );
    }

    let exposed: BTreeSet<&str> = processes
        .iter()
        .flat_map(|(_, s)| s.samples.keys().map(|(name, _)| name.as_str()))
        .collect();
    let queries = dashboard_queries();
    assert!(queries.len() >= 20, "the dashboards hold their panels");
    for (file, expr) in &queries {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "{file}: no metric in {expr}");
        for name in names {
            assert!(
                exposed.contains(name.as_str()),
                "{file}: `{expr}` reads {name}, which no process exposes"
            );
        }
    }

    // What the comment and the reads moved.
    let [gateway, mobile, relay, spam, sentiment] = &processes.map(|(_, s)| s);
    let sum = |s: &Scrape, name: &str| -> f64 {
        s.samples
            .iter()
            .filter(|((n, _), _)| n == name)
            .map(|(_, v)| v)
            .sum()
    };
    assert!(sum(gateway, "gateway_requests_total") >= 6.0);
    assert_eq!(
        gateway.get("gateway_local_responses_total", &[("status", "431")]),
        1.0
    );
    assert!(sum(mobile, "http_requests_total") >= 6.0);
    assert!(mobile.get("cache_hits_total", &[("kind", "post")]) >= 1.0);
    assert!(sum(mobile, "db_reads_total") >= 1.0);
    assert_eq!(relay.get("relay_events_published_total", &[]), 1.0);
    assert_eq!(relay.get("outbox_backlog", &[]), 0.0);
    for (worker, scrape, verdict) in [
        (SPAM_CONSUMER, spam, "ham"),
        (SENTIMENT_CONSUMER, sentiment, "positive"),
    ] {
        assert_eq!(sum(scrape, "messages_consumed_total"), 1.0, "{worker}");
        assert_eq!(sum(scrape, "messages_acked_total"), 1.0, "{worker}");
        assert_eq!(sum(scrape, "messages_dead_lettered_total"), 0.0, "{worker}");
        assert_eq!(
            scrape.get(
                "classifier_verdicts_total",
                &[("worker", worker), ("verdict", verdict)]
            ),
            1.0
        );
    }
}
