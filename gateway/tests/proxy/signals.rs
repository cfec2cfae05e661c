//! The real binary in a child process, so real signals can be sent safely.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::helpers::*;

struct Process {
    child: Child,
    addr: SocketAddr,
    path: PathBuf,
    /// The gateway's log lines after the startup line, one JSON object each.
    log: mpsc::Receiver<serde_json::Value>,
}

impl Process {
    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args(["-s", name, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit (and removes its config file).
    async fn exit_status(mut self) -> std::process::ExitStatus {
        tokio::task::spawn_blocking(move || {
            let status = self.child.wait().unwrap();
            drop(self);
            status
        })
        .await
        .unwrap()
    }

    /// Waits for the next log line whose message starts with `message`; a signal's effect is
    /// known by what the gateway says it did, not by how long the test slept.
    fn wait_for_log(&self, message: &str) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        tokio::task::block_in_place(|| {
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                let event = self
                    .log
                    .recv_timeout(left)
                    .unwrap_or_else(|e| panic!("no log line {message:?}: {e}"));
                if event["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with(message))
                {
                    return event;
                }
            }
        })
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.path);
    }
}

fn config_to(stub: &Stub) -> String {
    format!(
        "{LISTEN}workers = 1\n[[upstreams]]\nname = \"web\"\n{}\n[[routes]]\ndefault = true\nupstream = \"web\"\n",
        backends(&[stub])
    )
}

/// Starts the binary and reads the bound address from its startup log line.
fn spawn(name: &str, toml: &str) -> Process {
    let path = std::env::temp_dir().join(format!(
        "scaleout-gateway-{}-{name}.toml",
        std::process::id()
    ));
    std::fs::write(&path, toml).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .arg("--config")
        .arg(&path)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("the gateway exited").unwrap();
        // One JSON object per line; the startup line names the bound address.
        let event: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("a JSON log line, got {line:?}: {e}"));
        if let Some(listen) = event["listen"].as_str() {
            break listen.parse().unwrap();
        }
    };
    // Keep draining the log so the child never blocks on a full pipe.
    let (sender, log) = mpsc::channel();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            if let Ok(event) = serde_json::from_str(&line) {
                let _ = sender.send(event);
            }
        }
    });
    Process {
        child,
        addr,
        path,
        log,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_file_and_a_bad_file_keeps_the_old_config() {
    let (old, new) = (Stub::start("old").await, Stub::start("new").await);
    let process = spawn("sighup", &config_to(&old));
    let url = format!("http://{}/", process.addr);
    let c = TestClient::new();
    assert_eq!(c.get(&url).await.body, "old");

    std::fs::write(&process.path, "listen = [").unwrap();
    process.signal("HUP");
    process.wait_for_log("Reload rejected");
    assert_eq!(c.get(&url).await.body, "old");

    std::fs::write(&process.path, config_to(&new)).unwrap();
    process.signal("HUP");
    process.wait_for_log("Configuration reloaded");
    assert_eq!(c.get(&url).await.body, "new");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_the_request_in_flight_and_exits_cleanly() {
    let a = Stub::start("a").await;
    a.set_delay(Duration::from_millis(300));
    let process = spawn("sigterm", &config_to(&a));
    let url = format!("http://{}/", process.addr);
    let c = TestClient::new();
    let pending = tokio::spawn(async move { c.get(&url).await });
    eventually(Duration::from_secs(5), "request in flight", || async {
        a.hits() == 1
    })
    .await;
    process.signal("TERM");
    assert_eq!(pending.await.unwrap().status, 200);
    let status = process.exit_status().await;
    assert!(status.success(), "{status}");
}

/// A request slower than `timeouts.shutdown_ms` does not hold the process: it exits at the
/// deadline, saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_gives_up_on_a_request_slower_than_the_shutdown_deadline() {
    let a = Stub::start("a").await;
    a.set_delay(Duration::from_secs(30));
    let toml = config_to(&a).replace(
        "workers = 1\n",
        "workers = 1\n[timeouts]\nshutdown_ms = 300\n",
    );
    let process = spawn("sigterm-deadline", &toml);
    let url = format!("http://{}/", process.addr);
    let c = TestClient::new();
    let pending = tokio::spawn(async move { c.try_send(hyper::Method::GET, &url, &[], "").await });
    eventually(Duration::from_secs(5), "request in flight", || async {
        a.hits() == 1
    })
    .await;
    let signalled = Instant::now();
    process.signal("TERM");
    process.wait_for_log("Shutdown deadline passed");
    let status = process.exit_status().await;
    let took = signalled.elapsed();
    assert!(status.success(), "{status}");
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(10),
        "exited {took:?} after SIGTERM"
    );
    assert!(
        pending.await.unwrap().is_err(),
        "the slow request cannot have been answered"
    );
}
