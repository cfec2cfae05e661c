//! `GET /metrics` on the admin listener, parsed the way Prometheus reads it.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use crate::helpers::*;

const HEALTH: &str = "health = { path = \"/healthz\", interval_ms = 50, timeout_ms = 1000, healthy_threshold = 2, unhealthy_threshold = 2 }";

/// One scrape: series (name and sorted labels) to value, and family name to type.
///
/// The services' tests use `platform_metrics::scrape::Scrape`; the gateway keeps this small copy
/// because that crate brings sqlx and actix with it, and the gateway links no database crate.
#[derive(Debug)]
struct Scrape {
    samples: HashMap<(String, BTreeMap<String, String>), f64>,
    types: HashMap<String, String>,
}

impl Scrape {
    fn parse(text: &str) -> Self {
        let mut samples = HashMap::new();
        let mut types = HashMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
                types.insert(name.to_owned(), kind.to_owned());
                continue;
            }
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect("a sample has a value");
            let value: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("a number in {line}"));
            let (name, labels) = match series.split_once('{') {
                Some((name, labels)) => (name, labels.strip_suffix('}').expect("closed labels")),
                None => (series, ""),
            };
            let labels = labels
                .split("\",")
                .filter(|l| !l.is_empty())
                .map(|l| {
                    let (k, v) = l.split_once("=\"").expect("label=\"value\"");
                    (k.to_owned(), v.trim_end_matches('"').to_owned())
                })
                .collect();
            samples.insert((name.to_owned(), labels), value);
        }
        Self { samples, types }
    }

    /// The value of a series, 0 when it is absent (a counter not yet incremented).
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let labels = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        self.samples
            .get(&(name.to_owned(), labels))
            .copied()
            .unwrap_or(0.0)
    }

    /// The family a sample belongs to: histogram samples carry a suffix.
    fn family(name: &str) -> &str {
        ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name)
    }
}

async fn scrape(gw: &TestGateway, client: &TestClient) -> Scrape {
    let r = client.get(&gw.admin_url("/metrics")).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.headers["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    Scrape::parse(&r.body)
}

#[tokio::test]
async fn every_series_has_a_declared_type_and_a_conventional_name() {
    let a = Stub::start("a").await;
    let gw = TestGateway::start(&format!(
        "{LISTEN}[[upstreams]]\nname = \"web\"\n{}\n[[routes]]\npath_prefix = \"/x\"\nupstream = \"web\"\n",
        backends(&[&a])
    ))
    .await;
    let client = TestClient::new();
    client.get(&gw.url("/x")).await;
    client.get(&gw.url("/nowhere")).await;
    let m = scrape(&gw, &client).await;
    assert!(!m.samples.is_empty());
    for (name, _) in m.samples.keys() {
        assert!(
            name.starts_with("gateway_"),
            "{name}: one prefix per process"
        );
        let family = Scrape::family(name);
        let kind = m
            .types
            .get(family)
            .or_else(|| m.types.get(name))
            .unwrap_or_else(|| panic!("{name} has no # TYPE"));
        match kind.as_str() {
            "counter" => assert!(
                name.ends_with("_total"),
                "counter {name} must end in _total"
            ),
            "histogram" => assert!(
                family.ends_with("_seconds"),
                "histogram {family} must be in seconds"
            ),
            "gauge" => assert!(
                !name.ends_with("_total"),
                "gauge {name} named like a counter"
            ),
            other => panic!("{name}: unexpected type {other}"),
        }
    }
}

#[tokio::test]
async fn requests_latency_health_and_load_move_with_traffic() {
    let (a, b) = (Stub::start("a").await, Stub::start("b").await);
    let gw = TestGateway::start(&format!(
        "{LISTEN}[[upstreams]]\nname = \"web\"\npolicy = \"least_connections\"\n{HEALTH}\n{}\n[[routes]]\ndefault = true\nupstream = \"web\"\n",
        backends(&[&a, &b])
    ))
    .await;
    let client = TestClient::new();
    let (a_addr, b_addr) = (a.addr.to_string(), b.addr.to_string());
    let per_backend = |m: &Scrape, name: &str| {
        m.get(name, &[("upstream", "web"), ("backend", &a_addr)])
            + m.get(name, &[("upstream", "web"), ("backend", &b_addr)])
    };
    let ok = |m: &Scrape| {
        [&a_addr, &b_addr]
            .iter()
            .map(|addr| {
                m.get(
                    "gateway_requests_total",
                    &[("upstream", "web"), ("backend", addr), ("status", "200")],
                )
            })
            .sum::<f64>()
    };
    let web = [("upstream", "web")];

    let before = scrape(&gw, &client).await;
    assert_eq!(per_backend(&before, "gateway_backend_healthy"), 2.0);
    assert_eq!(per_backend(&before, "gateway_backend_in_flight"), 0.0);

    for _ in 0..10 {
        assert_eq!(client.get(&gw.url("/")).await.status, 200);
    }
    let after = scrape(&gw, &client).await;
    assert_eq!(ok(&after) - ok(&before), 10.0);
    assert_eq!(
        per_backend(&after, "gateway_backend_attempts_total")
            - per_backend(&before, "gateway_backend_attempts_total"),
        10.0
    );
    let count = "gateway_request_duration_seconds_count";
    assert_eq!(after.get(count, &web) - before.get(count, &web), 10.0);
    assert!(
        after.get("gateway_request_duration_seconds_sum", &web)
            > before.get("gateway_request_duration_seconds_sum", &web)
    );
    assert_eq!(
        after.get(
            "gateway_request_duration_seconds_bucket",
            &[("upstream", "web"), ("le", "+Inf")]
        ),
        after.get(count, &web),
        "the +Inf bucket counts every observation"
    );

    // Load: a slow request shows in flight on its backend while it runs, and leaves.
    a.set_delay(Duration::from_millis(400));
    b.set_delay(Duration::from_millis(400));
    let slow = {
        let (client, url) = (client.clone(), gw.url("/"));
        tokio::spawn(async move { client.get(&url).await })
    };
    eventually(Duration::from_secs(5), "one request in flight", || {
        let (gw, client, per_backend) = (&gw, &client, &per_backend);
        async move {
            let m = scrape(gw, client).await;
            per_backend(&m, "gateway_backend_in_flight") == 1.0
        }
    })
    .await;
    assert_eq!(slow.await.unwrap().status, 200);
    let idle = scrape(&gw, &client).await;
    assert_eq!(per_backend(&idle, "gateway_backend_in_flight"), 0.0);

    // Health: a backend failing its checks drops to 0, the other stays at 1.
    a.set_healthy(false);
    eventually(Duration::from_secs(5), "a marked unhealthy", || {
        let (gw, client, a_addr) = (&gw, &client, &a_addr);
        async move {
            let m = scrape(gw, client).await;
            m.get(
                "gateway_backend_healthy",
                &[("upstream", "web"), ("backend", a_addr)],
            ) == 0.0
        }
    })
    .await;
    let m = scrape(&gw, &client).await;
    assert_eq!(
        m.get(
            "gateway_backend_healthy",
            &[("upstream", "web"), ("backend", &b_addr)]
        ),
        1.0
    );
}
