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
