use std::path::{Path, PathBuf};
use std::time::Duration;

use gateway::{Config, Gateway};

use crate::helpers::*;

fn temp_file(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "scaleout-gateway-{}-{name}.toml",
        std::process::id()
    ))
}

fn config_to(stub: &Stub) -> String {
    format!(
        "{LISTEN}[[upstreams]]\nname = \"web\"\n{}\n[[routes]]\ndefault = true\nupstream = \"web\"\n",
        backends(&[stub])
    )
}

/// A gateway started from the file at `path`, written with `toml`, which its reloads re-read.
async fn gateway_reading(path: &Path, toml: &str) -> TestGateway {
    std::fs::write(path, toml).unwrap();
    let config = Config::load(path).unwrap();
    TestGateway::start_with(
        Gateway::build_with_path(config, Some(path.to_owned()))
            .await
            .unwrap(),
    )
}

/// The reload function is the one SIGHUP calls.
#[tokio::test]
async fn a_reload_with_a_bad_file_keeps_the_old_config_and_a_good_one_takes_over() {
    let (old, new) = (Stub::start("old").await, Stub::start("new").await);
    let path = temp_file("reload");
    let gw = gateway_reading(&path, &config_to(&old)).await;
    let c = TestClient::new();
    assert_eq!(c.get(&gw.url("/")).await.body, "old");

    std::fs::write(
        &path,
        config_to(&new).replace("default = true", "default = true\nbogus = 1"),
    )
    .unwrap();
    let err = gw.shared.reload().unwrap_err().to_string();
    assert!(err.contains("bogus"), "{err}");
    assert_eq!(c.get(&gw.url("/")).await.body, "old");

    std::fs::write(&path, "this is not toml").unwrap();
    assert!(gw.shared.reload().is_err());
    assert_eq!(c.get(&gw.url("/")).await.body, "old");

    std::fs::write(&path, config_to(&new)).unwrap();
    gw.shared.reload().unwrap();
    assert_eq!(c.get(&gw.url("/")).await.body, "new");
    let _ = std::fs::remove_file(&path);
}

/// On shutdown the gateway stops accepting, lets the request in flight finish, and returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_the_request_in_flight_finish() {
    let a = Stub::start("a").await;
    a.set_delay(Duration::from_millis(300));
    let gw = TestGateway::start(&config_to(&a)).await;
    let c = TestClient::new();
    let url = gw.url("/");
    let pending = tokio::spawn(async move { c.get(&url).await });
    eventually(Duration::from_secs(5), "request in flight", || async {
        a.hits() == 1
    })
    .await;
    let run = gw.stop().await;
    let reply = pending.await.unwrap();
    assert_eq!(reply.status, 200);
    run.await.unwrap().unwrap();
}

/// A reload keeps what its backends are doing: a request in flight still counts, and a drain
/// that was waiting for it when the reload came still waits for it and then removes the
/// backend from the upstream the reload built.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_requests_in_flight_and_a_drain_under_way() {
    let (a, b) = (Stub::start("a").await, Stub::start("b").await);
    a.hold();
    let path = temp_file("reload-drain");
    let gw = gateway_reading(&path, &config_to(&a)).await;
    let c = TestClient::new();
    let slow = tokio::spawn({
        let (c, url) = (c.clone(), gw.url("/"));
        async move { c.get(&url).await }
    });
    eventually(Duration::from_secs(5), "the held request", || async {
        a.hits() == 1
    })
    .await;

    let both = format!(
        "{LISTEN}[[upstreams]]\nname = \"web\"\n{}\n[[routes]]\ndefault = true\nupstream = \"web\"\n",
        backends(&[&a, &b])
    );
    std::fs::write(&path, &both).unwrap();
    gw.shared.reload().unwrap();
    let a_addr = a.addr.to_string();
    assert_eq!(gw.backends(&c, "web").await[&a_addr]["in_flight"], 1);

    let delete = tokio::spawn({
        let c = c.clone();
        let url = gw.admin_url(&format!("/admin/upstreams/web/backends/{a_addr}"));
        async move { c.send(hyper::Method::DELETE, &url, &[], "").await }
    });
    eventually(Duration::from_secs(5), "the drain", || async {
        gw.backends(&c, "web").await[&a_addr]["draining"] == true
    })
    .await;
    // Reloaded again while the drain waits: the new upstream takes the draining backend over.
    gw.shared.reload().unwrap();
    assert_eq!(c.get(&gw.url("/")).await.body, "b");
    assert!(
        !delete.is_finished(),
        "the drain ended with its request still held"
    );

    a.release();
    let slow = slow.await.unwrap();
    assert_eq!((slow.status.as_u16(), slow.body.as_str()), (200, "a"));
    let deleted = delete.await.unwrap();
    assert_eq!(deleted.status, 200, "{}", deleted.body);
    assert!(
        deleted.body.contains("\"drained\":true"),
        "{}",
        deleted.body
    );
    let left = gw.backends(&c, "web").await;
    assert_eq!(left.keys().collect::<Vec<_>>(), [&b.addr.to_string()]);
    assert_eq!(c.get(&gw.url("/")).await.body, "b");
    let _ = std::fs::remove_file(&path);
}
