use std::time::Duration;

use hyper::Method;

use crate::helpers::*;

fn cookie_of(r: &Reply) -> Option<String> {
    let v = r.headers.get("set-cookie")?.to_str().ok()?;
    Some(v.split(';').next()?.to_owned())
}

#[tokio::test]
async fn a_sticky_cookie_pins_a_client_and_is_repinned_when_its_backend_goes_down() {
    let stubs = [
        Stub::start("a").await,
        Stub::start("b").await,
        Stub::start("c").await,
    ];
    let gw = TestGateway::start(&format!(
        "{LISTEN}[[upstreams]]\nname = \"web\"\nsticky_cookie = \"scaleout_affinity\"\n{}\nhealth = {{ interval_ms = 50, timeout_ms = 1000, healthy_threshold = 2, unhealthy_threshold = 2 }}\n[[routes]]\ndefault = true\nupstream = \"web\"\n",
        backends(&[&stubs[0], &stubs[1], &stubs[2]])
    ))
    .await;
    let client = TestClient::new();

    let first = client.get(&gw.url("/")).await;
    let cookie = cookie_of(&first).expect("the first response sets the cookie");
    assert!(cookie.starts_with("scaleout_affinity="));
    let pinned = first.body.clone();
    for _ in 0..10 {
        let r = client
            .send(Method::GET, &gw.url("/"), &[("cookie", &cookie)], "")
            .await;
        assert_eq!(r.body, pinned);
        assert!(cookie_of(&r).is_none(), "a pinned client is not re-pinned");
    }

    let stub = stubs.iter().find(|s| s.name == pinned).unwrap();
    stub.set_healthy(false);
    let addr = stub.addr.to_string();
    eventually(
        Duration::from_secs(5),
        "pinned backend unhealthy",
        || async { gw.backends(&client, "web").await[&addr]["healthy"] == false },
    )
    .await;

    let moved = client
        .send(Method::GET, &gw.url("/"), &[("cookie", &cookie)], "")
        .await;
    assert_eq!(moved.status, 200);
    assert_ne!(moved.body, pinned);
    let repinned = cookie_of(&moved).expect("the client is re-pinned");
    assert_ne!(repinned, cookie);
    for _ in 0..10 {
        let r = client
            .send(Method::GET, &gw.url("/"), &[("cookie", &repinned)], "")
            .await;
        assert_eq!(r.body, moved.body);
    }
}

/// Before any check notices, the retry on another backend already re-pins the client.
#[tokio::test]
async fn a_client_pinned_to_a_killed_backend_is_served_and_repinned_at_once() {
    let stubs = [Stub::start("a").await, Stub::start("b").await];
    let gw = TestGateway::start(&format!(
        "{LISTEN}[[upstreams]]\nname = \"web\"\nsticky_cookie = \"aff\"\n{}\n[[routes]]\ndefault = true\nupstream = \"web\"\n",
        backends(&[&stubs[0], &stubs[1]])
    ))
    .await;
    let client = TestClient::new();
    let first = client.get(&gw.url("/")).await;
    let cookie = cookie_of(&first).unwrap();
    stubs.iter().find(|s| s.name == first.body).unwrap().kill();

    let moved = client
        .send(Method::GET, &gw.url("/"), &[("cookie", &cookie)], "")
        .await;
    assert_eq!(moved.status, 200);
    assert_ne!(moved.body, first.body);
    let repinned = cookie_of(&moved).expect("the client is re-pinned");
    let again = client
        .send(Method::GET, &gw.url("/"), &[("cookie", &repinned)], "")
        .await;
    assert_eq!(again.body, moved.body);
    assert!(cookie_of(&again).is_none());
}
