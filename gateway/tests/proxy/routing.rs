use hyper::Method;

use crate::helpers::*;

#[tokio::test]
async fn routes_match_on_header_method_and_path_and_the_first_match_wins() {
    let (us, api_read, api, web) = (
        Stub::start("us").await,
        Stub::start("api-read").await,
        Stub::start("api").await,
        Stub::start("web").await,
    );
    let mut toml = LISTEN.to_owned();
    for (name, s) in [
        ("us", &us),
        ("api-read", &api_read),
        ("api", &api),
        ("web", &web),
    ] {
        toml += &format!("[[upstreams]]\nname = \"{name}\"\n{}\n", backends(&[s]));
    }
    toml += r#"
[[routes]]
header = { name = "X-Client-Location", value = "US,*" }
upstream = "us"
[[routes]]
path_prefix = "/api/"
methods = ["GET", "HEAD"]
upstream = "api-read"
[[routes]]
path_prefix = "/api/"
upstream = "api"
[[routes]]
default = true
upstream = "web"
"#;
    let gw = TestGateway::start(&toml).await;
    let c = TestClient::new();
    let body = |r: Reply| r.body;
    assert_eq!(body(c.get(&gw.url("/api/posts")).await), "api-read");
    assert_eq!(
        body(c.send(Method::POST, &gw.url("/api/posts"), &[], "x").await),
        "api"
    );
    assert_eq!(
        body(
            c.send(Method::DELETE, &gw.url("/api/posts/1"), &[], "")
                .await
        ),
        "api"
    );
    let head = c.send(Method::HEAD, &gw.url("/api/posts"), &[], "").await;
    assert_eq!(head.headers["x-backend"], "api-read");
    assert_eq!(body(c.get(&gw.url("/posts")).await), "web");
    assert_eq!(body(c.get(&gw.url("/apix")).await), "web");
    let loc = |v: &'static str| [("x-client-location", v)];
    assert_eq!(
        body(
            c.send(Method::GET, &gw.url("/api/posts"), &loc("US,CA"), "")
                .await
        ),
        "us"
    );
    assert_eq!(
        body(c.send(Method::GET, &gw.url("/"), &loc("US,"), "").await),
        "us"
    );
    assert_eq!(
        body(c.send(Method::GET, &gw.url("/"), &loc("EU,FR"), "").await),
        "web"
    );
    assert_eq!(
        body(c.send(Method::GET, &gw.url("/"), &loc("USA"), "").await),
        "web"
    );
}

#[tokio::test]
async fn a_request_no_route_matches_gets_a_404_problem() {
    let a = Stub::start("a").await;
    let gw = TestGateway::start(&format!(
        "{LISTEN}[[upstreams]]\nname = \"web\"\n{}\n[[routes]]\npath_prefix = \"/only/\"\nupstream = \"web\"\n",
        backends(&[&a])
    ))
    .await;
    let r = TestClient::new().get(&gw.url("/elsewhere")).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.headers["content-type"], "application/problem+json");
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["status"], 404);
}
