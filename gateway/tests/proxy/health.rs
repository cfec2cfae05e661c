use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use crate::helpers::*;

/// Checks every 50 ms. A killed stub refuses at once and a sick one answers 503 at once, so the
/// timeout only has to spare a healthy stub on a busy machine.
const HEALTH: &str = "health = { path = \"/healthz\", interval_ms = 50, timeout_ms = 1000, healthy_threshold = 2, unhealthy_threshold = 2 }";

async fn is_healthy(gw: &TestGateway, client: &TestClient, addr: &str) -> bool {
    gw.backends(client, "web").await[addr]["healthy"] == true
}

/// Load runs through the whole kill and heal; GETs are retried on another backend, so none
/// fails, and the killed backend leaves rotation within a few check intervals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_backend_leaves_rotation_and_returns_after_it_heals_with_no_failed_get() {
    let (a, b, c) = (
        Stub::start("a").await,
        Stub::start("b").await,
        Stub::start("c").await,
    );
    let gw = TestGateway::start(&format!(
        "{LISTEN}[[upstreams]]\nname = \"web\"\n{}\n{HEALTH}\n[[routes]]\ndefault = true\nupstream = \"web\"\n",
        backends(&[&a, &b, &c])
    ))
    .await;
    let client = TestClient::new();
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (client, url, stop, ok, failed) = (
            client.clone(),
            gw.url("/"),
            stop.clone(),
            ok.clone(),
            failed.clone(),
        );
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                match client.try_send(hyper::Method::GET, &url, &[], "").await {
                    Ok(r) if r.status == 200 => ok.fetch_add(1, Ordering::SeqCst),
                    _ => failed.fetch_add(1, Ordering::SeqCst),
                };
            }
        }));
    }
    eventually(Duration::from_secs(5), "traffic on b", || async {
        b.hits() > 10
    })
    .await;

    b.kill();
    let b_addr = b.addr.to_string();
    let took = eventually(Duration::from_secs(5), "b unhealthy", || async {
        !is_healthy(&gw, &client, &b_addr).await
    })
    .await;
    // Under load passive ejection usually acts first; the window is checked without load below.
    eprintln!("under load, b left rotation {took:?} after the kill");
    assert!(
        took < Duration::from_secs(2),
        "b left rotation after {took:?}"
    );

    let b = Stub::start_on("b", b.addr).await;
    eventually(Duration::from_secs(5), "b healthy again", || {
        is_healthy(&gw, &client, &b_addr)
    })
    .await;
    eventually(Duration::from_secs(5), "traffic back on b", || async {
        b.hits() > 10
    })
    .await;

    stop.store(true, Ordering::SeqCst);
    for t in load {
        t.await.unwrap();
    }
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "failed GETs (of {} ok)",
        ok.load(Ordering::SeqCst)
    );
}

/// Without traffic only the active checks can notice: interval_ms x unhealthy_threshold is
/// 100 ms here, and the bound leaves room for a busy machine.
#[tokio::test]
async fn without_traffic_a_killed_backend_leaves_rotation_within_the_check_window() {
    let (a, b) = (Stub::start("a").await, Stub::start("b").await);
    let gw = TestGateway::start(&format!(
        "{LISTEN}[[upstreams]]\nname = \"web\"\n{}\n{HEALTH}\n[[routes]]\ndefault = true\nupstream = \"web\"\n",
        backends(&[&a, &b])
    ))
    .await;
    let client = TestClient::new();
    let b_addr = b.addr.to_string();
    eventually(Duration::from_secs(5), "first checks", || async {
        gw.backends(&client, "web").await[&b_addr]["healthy"] == true
    })
    .await;
    tokio::time::sleep(Duration::from_millis(120)).await;
    b.kill();
    let took = eventually(Duration::from_secs(5), "b unhealthy", || async {
        !is_healthy(&gw, &client, &b_addr).await
    })
    .await;
    eprintln!("without traffic, b left rotation {took:?} after the kill");
    assert!(
        took < Duration::from_secs(1),
        "b left rotation after {took:?}"
    );
    assert_eq!(
        gw.backends(&client, "web").await[&b_addr]["failures_total"],
        0
    );
}

#[tokio::test]
async fn active_checks_alone_take_a_failing_backend_out_and_bring_it_back() {
    let (a, b) = (Stub::start("a").await, Stub::start("b").await);
    let gw = TestGateway::start(&format!(
        "{LISTEN}[[upstreams]]\nname = \"web\"\n{}\n{HEALTH}\n[[routes]]\ndefault = true\nupstream = \"web\"\n",
        backends(&[&a, &b])
    ))
    .await;
    let client = TestClient::new();
    let b_addr = b.addr.to_string();
    b.set_healthy(false);
    eventually(Duration::from_secs(5), "b unhealthy", || async {
        !is_healthy(&gw, &client, &b_addr).await
    })
    .await;
    let before = b.hits();
    for _ in 0..10 {
        assert_eq!(client.get(&gw.url("/")).await.body, "a");
    }
    assert_eq!(b.hits(), before);
    b.set_healthy(true);
    eventually(Duration::from_secs(5), "b healthy", || {
        is_healthy(&gw, &client, &b_addr)
    })
    .await;
    let replies: Vec<Reply> = sequential_gets(&client, &gw, 10).await;
    assert!(replies.iter().any(|r| r.body == "b"));
}

/// An ejected backend comes back only after `healthy_threshold` good checks in a row, counted
/// by the backend itself.
#[tokio::test]
async fn a_backend_returns_only_after_healthy_threshold_good_checks() {
    let (a, b) = (Stub::start("a").await, Stub::start("b").await);
    let gw = TestGateway::start(&format!(
        "{LISTEN}[[upstreams]]\nname = \"web\"\n{}\n{}\n[[routes]]\ndefault = true\nupstream = \"web\"\n",
        backends(&[&a, &b]),
        HEALTH.replace(", healthy_threshold = 2", ", healthy_threshold = 4")
    ))
    .await;
    let client = TestClient::new();
    let a_addr = a.addr.to_string();
    a.set_healthy(false);
    eventually(Duration::from_secs(5), "a unhealthy", || async {
        !is_healthy(&gw, &client, &a_addr).await
    })
    .await;
    let before = a.health_checks();
    a.set_healthy(true);
    eventually(Duration::from_secs(5), "a healthy", || {
        is_healthy(&gw, &client, &a_addr)
    })
    .await;
    // At most one failed check can have been answered after `before`.
    let checks = a.health_checks() - before;
    assert!(checks >= 4, "back after {checks} checks");
}

async fn sequential_gets(client: &TestClient, gw: &TestGateway, n: usize) -> Vec<Reply> {
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(client.get(&gw.url("/")).await);
    }
    v
}

#[tokio::test]
async fn with_no_healthy_backend_the_answer_is_a_fast_503_problem() {
    let a = Stub::start("a").await;
    let gw = TestGateway::start(&format!(
        "{LISTEN}[[upstreams]]\nname = \"web\"\n{}\n{HEALTH}\n[[routes]]\ndefault = true\nupstream = \"web\"\n",
        backends(&[&a])
    ))
    .await;
    let client = TestClient::new();
    a.set_healthy(false);
    let addr = a.addr.to_string();
    eventually(Duration::from_secs(5), "a unhealthy", || async {
        !is_healthy(&gw, &client, &addr).await
    })
    .await;
    let started = std::time::Instant::now();
    let r = client.get(&gw.url("/")).await;
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(r.status, 503);
    assert_eq!(r.headers["content-type"], "application/problem+json");
    assert!(r.body.contains("no healthy backend"), "{}", r.body);
}

/// Without active checks, consecutive 5xx answers eject a backend and `passive_eject_ms` later
/// it gets traffic again.
#[tokio::test]
async fn consecutive_5xx_answers_eject_a_backend_passively_until_its_eject_time_passes() {
    let (a, b) = (Stub::start("a").await, Stub::start("b").await);
    let gw = TestGateway::start(&format!(
        "{LISTEN}[[upstreams]]\nname = \"web\"\npassive_failures = 2\npassive_eject_ms = 1500\n{}\n[[routes]]\ndefault = true\nupstream = \"web\"\n",
        backends(&[&a, &b])
    ))
    .await;
    let client = TestClient::new();
    a.set_failing(true);
    let replies = sequential_gets(&client, &gw, 10).await;
    // A 5xx is an answer, passed on and not retried; the second one in a row ejects `a`.
    assert_eq!(replies.iter().filter(|r| r.status == 500).count(), 2);
    assert!(replies[4..].iter().all(|r| r.body == "b"));
    let a_addr = a.addr.to_string();
    assert_eq!(gw.backends(&client, "web").await[&a_addr]["healthy"], false);

    a.set_failing(false);
    eventually(Duration::from_secs(5), "a readmitted", || async {
        gw.backends(&client, "web").await[&a_addr]["healthy"] == true
    })
    .await;
    let replies = sequential_gets(&client, &gw, 4).await;
    assert!(replies.iter().any(|r| r.body == "a"));
}
