use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use hyper::Method;

use crate::helpers::*;

#[tokio::test]
async fn the_admin_api_lists_upstreams_with_their_backends() {
    let (a, b) = (Stub::start("a").await, Stub::start("b").await);
    let gw = TestGateway::start(&format!(
        "{LISTEN}[[upstreams]]\nname = \"web\"\npolicy = \"least_connections\"\nbackends = [{{ addr = \"{}\", weight = 3 }}, {{ addr = \"{}\" }}]\n[[routes]]\ndefault = true\nupstream = \"web\"\n",
        a.addr, b.addr
    ))
    .await;
    let client = TestClient::new();
    client.get(&gw.url("/")).await;
    let r = client.get(&gw.admin_url("/admin/upstreams")).await;
    assert_eq!(r.status, 200);
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    let web = &v["upstreams"][0];
    assert_eq!(web["name"], "web");
    assert_eq!(web["policy"], "least_connections");
    let first = &web["backends"][0];
    assert_eq!(first["addr"], a.addr.to_string());
    assert_eq!(first["weight"], 3);
    assert_eq!(first["healthy"], true);
    assert_eq!(first["in_flight"], 0);
    assert_eq!(first["failures_total"], 0);
    let total = web["backends"][0]["requests_total"].as_u64().unwrap()
        + web["backends"][1]["requests_total"].as_u64().unwrap();
    assert_eq!(total, 1);
}

#[tokio::test]
async fn metrics_and_healthz_are_served_on_the_admin_listener() {
    let a = Stub::start("a").await;
    let gw = TestGateway::start(&format!(
        "{LISTEN}[[upstreams]]\nname = \"web\"\n{}\n[[routes]]\npath_prefix = \"/x\"\nupstream = \"web\"\n",
        backends(&[&a])
    ))
    .await;
    let client = TestClient::new();
    client.get(&gw.url("/x")).await;
    client.get(&gw.url("/nowhere")).await;
    assert_eq!(client.get(&gw.admin_url("/healthz")).await.status, 200);
    let m = client.get(&gw.admin_url("/metrics")).await.body;
    let backend = a.addr;
    assert!(
        m.contains(&format!(
            "gateway_requests_total{{upstream=\"web\",backend=\"{backend}\",status=\"200\"}} 1"
        )),
        "{m}"
    );
    assert!(
        m.contains(&format!(
            "gateway_backend_healthy{{upstream=\"web\",backend=\"{backend}\"}} 1"
        )),
        "{m}"
    );
    assert!(
        m.contains("gateway_request_duration_seconds_count{upstream=\"web\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("gateway_local_responses_total{status=\"404\"} 1"),
        "{m}"
    );
}

/// Backends join and leave while four clients keep sending; a drained backend finishes its
/// in-flight requests before it is removed, so no request fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_are_added_drained_and_removed_under_load_with_no_failed_request() {
    let (a, b, c) = (
        Stub::start("a").await,
        Stub::start("b").await,
        Stub::start("c").await,
    );
    for s in [&a, &b, &c] {
        s.set_delay(Duration::from_millis(5));
    }
    let gw = TestGateway::start(&format!(
        "{LISTEN}[[upstreams]]\nname = \"web\"\n{}\n[[routes]]\ndefault = true\nupstream = \"web\"\n",
        backends(&[&a, &b])
    ))
    .await;
    let client = TestClient::new();
    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicUsize::new(0));
    let mut load = Vec::new();
    for i in 0..4 {
        let (client, url, stop, failed) =
            (client.clone(), gw.url("/"), stop.clone(), failed.clone());
        // Half the clients send POSTs, which are never retried: they prove the drain itself.
        let method = if i % 2 == 0 {
            Method::GET
        } else {
            Method::POST
        };
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                match client.try_send(method.clone(), &url, &[], "payload").await {
                    Ok(r) if r.status == 200 => {}
                    _ => {
                        failed.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        }));
    }

    let add = client
        .send(
            Method::POST,
            &gw.admin_url("/admin/upstreams/web/backends"),
            &[],
            format!("{{\"addr\": \"{}\", \"weight\": 1}}", c.addr),
        )
        .await;
    assert_eq!(add.status, 201, "{}", add.body);
    eventually(Duration::from_secs(5), "traffic on c", || async {
        c.hits() > 20
    })
    .await;

    let del = client
        .send(
            Method::DELETE,
            &gw.admin_url(&format!("/admin/upstreams/web/backends/{}", b.addr)),
            &[],
            "",
        )
        .await;
    assert_eq!(del.status, 200, "{}", del.body);
    assert!(del.body.contains("\"drained\":true"), "{}", del.body);
    // Removed: b is stopped at once, as an autoscaler would, and nothing may fail.
    b.kill();
    let listed = gw.backends(&client, "web").await;
    assert!(!listed.contains_key(&b.addr.to_string()));
    let a_before = a.hits();
    eventually(Duration::from_secs(5), "traffic continues", || async {
        a.hits() > a_before + 20
    })
    .await;

    stop.store(true, Ordering::SeqCst);
    for t in load {
        t.await.unwrap();
    }
    assert_eq!(failed.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn admin_changes_with_bad_input_are_refused() {
    let a = Stub::start("a").await;
    let gw = TestGateway::start(&format!(
        "{LISTEN}[[upstreams]]\nname = \"web\"\n{}\n[[routes]]\ndefault = true\nupstream = \"web\"\n",
        backends(&[&a])
    ))
    .await;
    let c = TestClient::new();
    let url = gw.admin_url("/admin/upstreams/web/backends");
    let dup = c
        .send(
            Method::POST,
            &url,
            &[],
            format!("{{\"addr\": \"{}\"}}", a.addr),
        )
        .await;
    assert_eq!(dup.status, 409);
    assert_eq!(
        c.send(Method::POST, &url, &[], "{\"addr\": \"nope\"}")
            .await
            .status,
        400
    );
    let missing = gw.admin_url("/admin/upstreams/nope/backends");
    assert_eq!(
        c.send(Method::POST, &missing, &[], "{\"addr\": \"127.0.0.1:1\"}")
            .await
            .status,
        404
    );
    let del = gw.admin_url("/admin/upstreams/web/backends/127.0.0.1:1");
    assert_eq!(c.send(Method::DELETE, &del, &[], "").await.status, 404);
}
