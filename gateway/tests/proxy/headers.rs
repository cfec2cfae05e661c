use hyper::Method;

use crate::helpers::*;

fn one_upstream(stub: &Stub, extra: &str) -> String {
    format!(
        "{LISTEN}{extra}\n[[upstreams]]\nname = \"web\"\n{}\n[[routes]]\ndefault = true\nupstream = \"web\"\n",
        backends(&[stub])
    )
}

#[tokio::test]
async fn forwarding_headers_are_replaced_for_a_client_and_traceparent_passes_untouched() {
    let a = Stub::start("a").await;
    let gw = TestGateway::start(&one_upstream(&a, "")).await;
    let trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = TestClient::new()
        .send(
            Method::GET,
            &gw.url("/"),
            &[
                ("x-forwarded-for", "203.0.113.9"),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "evil.example"),
                ("traceparent", trace),
                ("connection", "keep-alive, x-hop"),
                ("x-hop", "1"),
            ],
            "",
        )
        .await;
    assert_eq!(r.status, 200);
    let h = a.last_headers();
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], gw.addr.to_string().as_str());
    assert_eq!(h["traceparent"], trace);
    assert!(
        !h.contains_key("x-hop"),
        "a header named by Connection must not be forwarded"
    );
}

#[tokio::test]
async fn a_trusted_proxy_keeps_its_forwarding_headers_and_the_chain_is_extended() {
    let a = Stub::start("a").await;
    let gw = TestGateway::start(&one_upstream(&a, "trusted_proxies = [\"127.0.0.0/8\"]")).await;
    TestClient::new()
        .send(
            Method::GET,
            &gw.url("/"),
            &[
                ("x-forwarded-for", "203.0.113.9"),
                ("x-forwarded-proto", "https"),
            ],
            "",
        )
        .await;
    let h = a.last_headers();
    assert_eq!(h["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "https");
}

#[tokio::test]
async fn request_and_response_bodies_stream_through_both_ways() {
    let a = Stub::start("a").await;
    let gw = TestGateway::start(&one_upstream(&a, "")).await;
    // Printable ASCII, so the reply's text is the bytes themselves.
    let body: Vec<u8> = (0..2_000_000u32).map(|i| b'!' + (i % 94) as u8).collect();
    let r = TestClient::new()
        .send(Method::PUT, &gw.url("/echo"), &[], body.clone())
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["x-body-len"], "2000000");
    assert!(
        r.body.as_bytes() == body,
        "the body comes back whole and in order"
    );
}
