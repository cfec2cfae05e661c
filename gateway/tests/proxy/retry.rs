use hyper::Method;

use crate::helpers::*;

/// One backend refuses connections and passive ejection is off, so every second request
/// meets the dead backend first.
async fn gateway_with_a_dead_backend(live: &Stub) -> TestGateway {
    let dead = closed_port().await;
    TestGateway::start(&format!(
        "{LISTEN}[[upstreams]]\nname = \"web\"\npassive_failures = 0\nbackends = [{{ addr = \"{dead}\" }}, {{ addr = \"{}\" }}]\n[[routes]]\ndefault = true\nupstream = \"web\"\n",
        live.addr
    ))
    .await
}

#[tokio::test]
async fn a_get_is_retried_on_another_backend_after_a_connect_failure() {
    let live = Stub::start("live").await;
    let gw = gateway_with_a_dead_backend(&live).await;
    let c = TestClient::new();
    for _ in 0..10 {
        let r = c.get(&gw.url("/")).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.body, "live");
    }
}

#[tokio::test]
async fn a_post_is_retried_only_with_an_idempotency_key() {
    let live = Stub::start("live").await;
    let gw = gateway_with_a_dead_backend(&live).await;
    let c = TestClient::new();
    let mut bad_gateway = 0;
    for _ in 0..4 {
        let r = c.send(Method::POST, &gw.url("/"), &[], "body").await;
        if r.status == 502 {
            bad_gateway += 1;
            assert_eq!(r.headers["content-type"], "application/problem+json");
        }
    }
    assert_eq!(bad_gateway, 2);
    for _ in 0..4 {
        let r = c
            .send(
                Method::POST,
                &gw.url("/echo"),
                &[("idempotency-key", "k1")],
                "body",
            )
            .await;
        assert_eq!(r.status, 200);
        assert_eq!(r.body, "body", "the buffered body is sent again");
    }
}

#[tokio::test]
async fn retries_stop_when_the_budget_is_spent() {
    let live = Stub::start("live").await;
    let dead = closed_port().await;
    let gw = TestGateway::start(&format!(
        "{LISTEN}[retry]\nbudget_ratio = 0.0\nmin_retries = 2\n[[upstreams]]\nname = \"web\"\npassive_failures = 0\nbackends = [{{ addr = \"{dead}\" }}, {{ addr = \"{}\" }}]\n[[routes]]\ndefault = true\nupstream = \"web\"\n",
        live.addr
    ))
    .await;
    let c = TestClient::new();
    let mut failed = 0;
    for _ in 0..10 {
        if c.get(&gw.url("/")).await.status == 502 {
            failed += 1;
        }
    }
    // A retry moves the rotation on by one, so every request meets the dead backend first:
    // the budget lets two through to the live one and the other eight fail.
    assert_eq!(failed, 8);
    assert_eq!(live.hits(), 2);
}

/// A backend that hangs up on every request, beside a live one; passive ejection is off, and
/// each retry moves the rotation on by one.
async fn gateway_with_a_backend_that_hangs_up(
    live: &Stub,
) -> (TestGateway, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let (hangs_up, heads) = hanging_up_backend().await;
    let gw = TestGateway::start(&format!(
        "{LISTEN}[[upstreams]]\nname = \"web\"\npassive_failures = 0\nbackends = [{{ addr = \"{hangs_up}\" }}, {{ addr = \"{}\" }}]\n[[routes]]\ndefault = true\nupstream = \"web\"\n",
        live.addr
    ))
    .await;
    (gw, heads)
}

#[tokio::test]
async fn a_get_is_retried_after_a_reset_and_a_post_is_sent_once() {
    use std::sync::atomic::Ordering;

    let live = Stub::start("live").await;
    let (gw, heads) = gateway_with_a_backend_that_hangs_up(&live).await;
    let c = TestClient::new();
    for _ in 0..4 {
        let r = c.get(&gw.url("/")).await;
        assert_eq!((r.status.as_u16(), r.body.as_str()), (200, "live"));
    }
    // Every GET met the backend that hangs up first, and was retried.
    assert_eq!(heads.load(Ordering::SeqCst), 4);
    assert_eq!(live.hits(), 4);

    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(
            c.send(Method::POST, &gw.url("/"), &[], "body")
                .await
                .status
                .as_u16(),
        );
    }
    statuses.sort_unstable();
    // The backend may have acted on a POST it hung up on: it is never sent twice.
    assert_eq!(statuses, [200, 200, 502, 502]);
    assert_eq!(heads.load(Ordering::SeqCst), 6);
    assert_eq!(live.hits(), 6);
}

#[tokio::test]
async fn a_timeout_is_not_retried() {
    let (slow, fast) = (Stub::start("slow").await, Stub::start("fast").await);
    slow.set_delay(std::time::Duration::from_secs(3));
    let gw = TestGateway::start(&format!(
        "{LISTEN}[timeouts]\nresponse_ms = 200\n[[upstreams]]\nname = \"web\"\npassive_failures = 0\n{}\n[[routes]]\ndefault = true\nupstream = \"web\"\n",
        backends(&[&slow, &fast])
    ))
    .await;
    let c = TestClient::new();
    let mut statuses = Vec::new();
    for _ in 0..2 {
        statuses.push(c.get(&gw.url("/")).await.status.as_u16());
    }
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 504]);
    assert_eq!((slow.hits(), fast.hits()), (1, 1));
}
