use std::collections::HashMap;
use std::time::Duration;

use hyper::Method;

use crate::helpers::*;

async fn sequential(client: &TestClient, gw: &TestGateway, n: usize) -> Vec<Reply> {
    let mut replies = Vec::with_capacity(n);
    for _ in 0..n {
        replies.push(client.get(&gw.url("/")).await);
    }
    replies
}

#[tokio::test]
async fn round_robin_spreads_requests_exactly_evenly() {
    let (a, b, c) = (
        Stub::start("a").await,
        Stub::start("b").await,
        Stub::start("c").await,
    );
    let gw = TestGateway::start(&format!(
        "{LISTEN}[[upstreams]]\nname = \"web\"\npolicy = \"round_robin\"\n{}\n[[routes]]\ndefault = true\nupstream = \"web\"\n",
        backends(&[&a, &b, &c])
    ))
    .await;
    let client = TestClient::new();
    let replies = sequential(&client, &gw, 30).await;
    assert!(replies.iter().all(|r| r.status == 200));
    let counts = tally(&replies);
    assert_eq!(
        counts,
        HashMap::from([("a".into(), 10), ("b".into(), 10), ("c".into(), 10)])
    );
}

#[tokio::test]
async fn weighted_round_robin_interleaves_two_to_one_smoothly() {
    let (a, b) = (Stub::start("A").await, Stub::start("B").await);
    let gw = TestGateway::start(&format!(
        "{LISTEN}[[upstreams]]\nname = \"web\"\npolicy = \"weighted_round_robin\"\nbackends = [{{ addr = \"{}\", weight = 2 }}, {{ addr = \"{}\", weight = 1 }}]\n[[routes]]\ndefault = true\nupstream = \"web\"\n",
        a.addr, b.addr
    ))
    .await;
    let client = TestClient::new();
    let order: Vec<String> = sequential(&client, &gw, 6)
        .await
        .into_iter()
        .map(|r| r.body)
        .collect();
    assert_eq!(order, ["A", "B", "A", "A", "B", "A"]);
}

/// A slow backend keeps its requests in flight, so new ones go to the fast one.
async fn slow_backend_gets_few_requests(policy: &str) {
    let (slow, fast) = (Stub::start("slow").await, Stub::start("fast").await);
    // Far longer than sending the 20 takes, even on a busy machine: the slow backend holds
    // its first request throughout.
    slow.set_delay(Duration::from_millis(2000));
    let gw = TestGateway::start(&format!(
        "{LISTEN}[[upstreams]]\nname = \"web\"\npolicy = \"{policy}\"\n{}\n[[routes]]\ndefault = true\nupstream = \"web\"\n",
        backends(&[&slow, &fast])
    ))
    .await;
    let client = TestClient::new();
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (client, url) = (client.clone(), gw.url("/"));
        tasks.push(tokio::spawn(async move { client.get(&url).await }));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut replies = Vec::new();
    for t in tasks {
        replies.push(t.await.unwrap());
    }
    assert!(replies.iter().all(|r| r.status == 200));
    let counts = tally(&replies);
    let slow_count = counts.get("slow").copied().unwrap_or(0);
    assert!(
        slow_count <= 2,
        "{policy}: slow backend got {slow_count} of 20"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_connections_avoids_a_slow_backend() {
    slow_backend_gets_few_requests("least_connections").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_of_two_avoids_a_slow_backend() {
    slow_backend_gets_few_requests("power_of_two").await;
}

#[tokio::test]
async fn random_reaches_every_backend() {
    let (a, b) = (Stub::start("a").await, Stub::start("b").await);
    let gw = TestGateway::start(&format!(
        "{LISTEN}[[upstreams]]\nname = \"web\"\npolicy = \"random\"\n{}\n[[routes]]\ndefault = true\nupstream = \"web\"\n",
        backends(&[&a, &b])
    ))
    .await;
    let counts = tally(&sequential(&TestClient::new(), &gw, 60).await);
    assert!(counts["a"] > 5 && counts["b"] > 5, "{counts:?}");
}

#[tokio::test]
async fn consistent_hashing_keeps_a_key_on_one_backend_and_moves_about_one_in_n_when_one_is_added()
{
    let stubs = [
        Stub::start("a").await,
        Stub::start("b").await,
        Stub::start("c").await,
    ];
    let d = Stub::start("d").await;
    let gw = TestGateway::start(&format!(
        "{LISTEN}[[upstreams]]\nname = \"web\"\npolicy = \"consistent_hash\"\nhash_key = \"header:X-User\"\n{}\n[[routes]]\ndefault = true\nupstream = \"web\"\n",
        backends(&[&stubs[0], &stubs[1], &stubs[2]])
    ))
    .await;
    let client = TestClient::new();
    let keys: Vec<String> = (0..200).map(|i| format!("user-{i}")).collect();
    let mut before = HashMap::new();
    for k in &keys {
        let first = client
            .send(Method::GET, &gw.url("/"), &[("x-user", k)], "")
            .await
            .body;
        let again = client
            .send(Method::GET, &gw.url("/"), &[("x-user", k)], "")
            .await
            .body;
        assert_eq!(first, again, "key {k} changed backend");
        before.insert(k.clone(), first);
    }

    let added = client
        .send(
            Method::POST,
            &gw.admin_url("/admin/upstreams/web/backends"),
            &[("content-type", "application/json")],
            format!("{{\"addr\": \"{}\"}}", d.addr),
        )
        .await;
    assert_eq!(added.status, 201, "{}", added.body);

    let mut moved = 0;
    for k in &keys {
        let now = client
            .send(Method::GET, &gw.url("/"), &[("x-user", k)], "")
            .await
            .body;
        if now != before[k] {
            assert_eq!(now, "d", "a moved key must move to the new backend");
            moved += 1;
        }
    }
    // 1/n of the keys with n = 4 is 50 of 200.
    assert!((20..=80).contains(&moved), "moved {moved} of 200");
}
