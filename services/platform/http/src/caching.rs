//! HTTP caching semantics every service shares (RFC 9110 and RFC 9111): `Cache-Control`
//! policies, strong `ETag`s derived from content versions, `Last-Modified`, `Vary`, and the
//! conditional `GET` that answers 304 Not Modified.
//!
//! A handler describes its response's cacheability with [`CacheHeaders`] before building the
//! body: [`CacheHeaders::not_modified`] answers a matching conditional request with a bodiless
//! 304 (so the body is never serialised), and [`CacheHeaders::apply`] puts the same headers on
//! the full response. ETags come from a [`Fingerprint`] of the versions a representation is
//! made of (a post's id and version, a page's ids, versions and counts), not from the bytes, so
//! a validator can be checked as soon as the versions are known.

use std::fmt::{self, Display, Write as _};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_web::http::Method;
use actix_web::http::header::{
    self, CACHE_CONTROL, ETAG, EXPIRES, EntityTag, Header, HttpDate, IfMatch, IfModifiedSince,
    IfNoneMatch, LAST_MODIFIED, VARY,
};
use actix_web::{HttpRequest, HttpResponse, HttpResponseBuilder};
use serde::{Deserialize, Serialize};

/// The `Vary` value of a response whose headers or body depend on who is asking: the bearer
/// token and the session cookie both name a session.
pub const VARY_CREDENTIALS: &str = "Authorization, Cookie";

/// `Cache-Control` of content-hashed static assets: their name changes with their bytes, so any
/// cache may keep them for a year without ever revalidating.
pub const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// Caching settings shared by the web and mobile services.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct CacheSettings {
    /// `CACHE_MAX_AGE_SECS`: how long any cache (browser, phone, the gateway's edge cache) may
    /// reuse an anonymous post or post list without revalidating. 0 makes every reuse revalidate
    /// (`max-age=0`), which still saves the body through 304s.
    pub cache_max_age_secs: u64,
}

impl Default for CacheSettings {
    fn default() -> Self {
        Self {
            cache_max_age_secs: 30,
        }
    }
}

impl CacheSettings {
    /// The policy for anonymous reads of public content.
    pub fn public(&self) -> Policy {
        Policy::Public {
            max_age_secs: self.cache_max_age_secs,
        }
    }
}

/// Who may store a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Anyone, shared caches included, for `max_age_secs`: anonymous reads of public content.
    Public { max_age_secs: u64 },
    /// Only the requester's own cache, and only after revalidating: the response was made for
    /// an authenticated or personalised request.
    Private,
    /// Nobody: account and authentication responses, pages carrying a CSRF token.
    NoStore,
}

impl Policy {
    fn cache_control(self) -> String {
        match self {
            Self::Public { max_age_secs } => format!("public, max-age={max_age_secs}"),
            // `no-cache` makes the phone revalidate (cheaply, by ETag) rather than show a stale
            // copy of something its user may just have edited.
            Self::Private => "private, no-cache".to_owned(),
            Self::NoStore => "no-store".to_owned(),
        }
    }
}

/// A 64-bit FNV-1a hash over labelled parts, hex-encoded.
///
/// FNV is neither cryptographic nor needed to be: validators and asset names only have to
/// change when their input does, and be the same in every replica and every build (std's
/// `DefaultHasher` promises neither across releases).
#[derive(Debug, Clone)]
pub struct Fingerprint(u64);

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

impl Fingerprint {
    /// A fingerprint of a kind of representation (`"post"`, `"post-list"`): two kinds never
    /// share an ETag even when their versions do.
    pub fn new(kind: &str) -> Self {
        Self(FNV_OFFSET).bytes(kind.as_bytes())
    }

    /// Mixes in raw bytes.
    pub fn bytes(mut self, bytes: &[u8]) -> Self {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(FNV_PRIME);
        }
        self
    }

    /// Mixes in one part, followed by a separator so `("1", "23")` and `("12", "3")` differ.
    pub fn part(self, part: impl Display) -> Self {
        let mut text = String::new();
        let _ = write!(text, "{part}");
        self.bytes(text.as_bytes()).bytes(&[0x1f])
    }

    /// The hash as 16 hex digits.
    pub fn hex(&self) -> String {
        format!("{:016x}", self.0)
    }

    /// A strong entity tag.
    pub fn etag(&self) -> EntityTag {
        EntityTag::new_strong(self.hex())
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex())
    }
}

/// The cache-related headers of one response.
#[derive(Debug, Clone)]
pub struct CacheHeaders {
    policy: Policy,
    etag: Option<EntityTag>,
    last_modified: Option<SystemTime>,
    vary: Option<&'static str>,
}

impl CacheHeaders {
    pub fn new(policy: Policy) -> Self {
        Self {
            policy,
            etag: None,
            last_modified: None,
            vary: None,
        }
    }

    /// Sets the strong `ETag`.
    pub fn etag(mut self, fingerprint: &Fingerprint) -> Self {
        self.etag = Some(fingerprint.etag());
        self
    }

    /// Sets `Last-Modified`, truncated to the whole second HTTP dates carry.
    pub fn last_modified(mut self, at: impl Into<SystemTime>) -> Self {
        self.last_modified = Some(truncate_to_second(at.into()));
        self
    }

    /// Sets `Vary` (for example [`VARY_CREDENTIALS`]).
    pub fn vary(mut self, vary: &'static str) -> Self {
        self.vary = Some(vary);
        self
    }

    /// Whether `req`'s preconditions say the client's copy is current (RFC 9110 section 13.2.2):
    /// `If-None-Match`, when present, decides alone, by weak comparison as the RFC requires;
    /// only without it is `If-Modified-Since` consulted. Both apply to `GET` and `HEAD` only.
    pub fn is_fresh(&self, req: &HttpRequest) -> bool {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return false;
        }
        if req.headers().contains_key(header::IF_NONE_MATCH) {
            let Some(current) = &self.etag else {
                return false;
            };
            return match IfNoneMatch::parse(req) {
                Ok(IfNoneMatch::Any) => true,
                Ok(IfNoneMatch::Items(tags)) => tags.iter().any(|t| t.weak_eq(current)),
                // An unreadable precondition is ignored (RFC 9110 section 13.1).
                Err(_) => false,
            };
        }
        match (self.last_modified, IfModifiedSince::parse(req)) {
            (Some(modified), Ok(IfModifiedSince(since))) => modified <= SystemTime::from(since),
            _ => false,
        }
    }

    /// A bodiless 304 carrying the headers the full response would have (RFC 9110 section
    /// 15.4.5), when `req`'s validators match; `None` when the full response is due.
    pub fn not_modified(&self, req: &HttpRequest) -> Option<HttpResponse> {
        if !self.is_fresh(req) {
            return None;
        }
        let mut builder = HttpResponse::NotModified();
        self.apply(&mut builder);
        Some(builder.finish())
    }

    /// Puts `Cache-Control`, `Expires` (public only, for HTTP/1.0 caches), `ETag`,
    /// `Last-Modified` and `Vary` on a response.
    pub fn apply(&self, builder: &mut HttpResponseBuilder) {
        builder.insert_header((CACHE_CONTROL, self.policy.cache_control()));
        if let Policy::Public { max_age_secs } = self.policy {
            let expires = SystemTime::now() + Duration::from_secs(max_age_secs);
            builder.insert_header((EXPIRES, HttpDate::from(expires).to_string()));
        }
        if let Some(etag) = &self.etag {
            builder.insert_header((ETAG, etag.to_string()));
        }
        if let Some(at) = self.last_modified {
            builder.insert_header((LAST_MODIFIED, HttpDate::from(at).to_string()));
        }
        if let Some(vary) = self.vary {
            builder.insert_header((VARY, vary));
        }
    }
}

/// Whether `req`'s `If-Match` (RFC 9110 section 13.1.1) lets a write proceed on a resource
/// whose current ETag is `current`: no header, `*`, or a tag that matches strongly. A client
/// editing from a stale copy gets `false`, and the caller answers 412 rather than overwrite an
/// edit the client never saw.
pub fn if_match_allows(req: &HttpRequest, current: &Fingerprint) -> bool {
    if !req.headers().contains_key(header::IF_MATCH) {
        return true;
    }
    let current = current.etag();
    match IfMatch::parse(req) {
        Ok(IfMatch::Any) => true,
        Ok(IfMatch::Items(tags)) => tags.iter().any(|t| t.strong_eq(&current)),
        // An If-Match the server cannot read cannot be satisfied.
        Err(_) => false,
    }
}

fn truncate_to_second(at: SystemTime) -> SystemTime {
    match at.duration_since(UNIX_EPOCH) {
        Ok(since) => UNIX_EPOCH + Duration::from_secs(since.as_secs()),
        Err(_) => UNIX_EPOCH,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    fn headers() -> CacheHeaders {
        CacheHeaders::new(Policy::Public { max_age_secs: 60 })
            .etag(&Fingerprint::new("post").part(1).part(2))
            .last_modified(UNIX_EPOCH + Duration::from_secs(1_700_000_000))
    }

    #[test]
    fn fingerprints_separate_their_parts_and_kinds() {
        let a = Fingerprint::new("post").part("1").part("23").hex();
        let b = Fingerprint::new("post").part("12").part("3").hex();
        let c = Fingerprint::new("list").part("1").part("23").hex();
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_eq!(a, Fingerprint::new("post").part(1).part(23).hex());
    }

    #[test]
    fn a_matching_etag_is_fresh_and_a_stale_one_is_not() {
        let current = headers().etag.unwrap().to_string();
        let req = TestRequest::get()
            .insert_header(("if-none-match", format!("\"stale\", {current}")))
            .to_http_request();
        assert!(headers().is_fresh(&req));
        let req = TestRequest::get()
            .insert_header(("if-none-match", "\"stale\""))
            .to_http_request();
        assert!(!headers().is_fresh(&req));
        let req = TestRequest::get()
            .insert_header(("if-none-match", "*"))
            .to_http_request();
        assert!(headers().is_fresh(&req));
    }

    #[test]
    fn if_none_match_takes_precedence_over_if_modified_since() {
        let req = TestRequest::get()
            .insert_header(("if-none-match", "\"stale\""))
            .insert_header(("if-modified-since", "Fri, 01 Jan 2100 00:00:00 GMT"))
            .to_http_request();
        assert!(!headers().is_fresh(&req));
    }

    #[test]
    fn if_modified_since_compares_whole_seconds() {
        let at = |s: &str| {
            TestRequest::get()
                .insert_header(("if-modified-since", s))
                .to_http_request()
        };
        // 1_700_000_000 is Tue, 14 Nov 2023 22:13:20 GMT.
        assert!(headers().is_fresh(&at("Tue, 14 Nov 2023 22:13:20 GMT")));
        assert!(!headers().is_fresh(&at("Tue, 14 Nov 2023 22:13:19 GMT")));
        assert!(!headers().is_fresh(&at("not a date")));
    }

    #[test]
    fn if_match_lets_a_write_through_only_for_the_current_tag() {
        let current = Fingerprint::new("post").part(1).part(2);
        let with = |value: Option<String>| {
            let mut req = TestRequest::put();
            if let Some(v) = value {
                req = req.insert_header(("if-match", v));
            }
            if_match_allows(&req.to_http_request(), &current)
        };
        assert!(with(None));
        assert!(with(Some("*".into())));
        assert!(with(Some(format!("\"old\", {}", current.etag()))));
        assert!(!with(Some("\"old\"".into())));
        assert!(
            !with(Some(format!("W/\"{}\"", current.hex()))),
            "If-Match compares strongly"
        );
    }

    #[test]
    fn only_safe_methods_get_a_304() {
        let current = headers().etag.unwrap().to_string();
        let req = TestRequest::put()
            .insert_header(("if-none-match", current))
            .to_http_request();
        assert!(headers().not_modified(&req).is_none());
    }

    #[test]
    fn a_304_repeats_the_validators_and_policy_without_a_body() {
        let current = headers().etag.unwrap().to_string();
        let req = TestRequest::get()
            .insert_header(("if-none-match", current.clone()))
            .to_http_request();
        let res = headers().vary(VARY_CREDENTIALS).not_modified(&req).unwrap();
        assert_eq!(res.status(), 304);
        assert_eq!(res.headers().get("etag").unwrap(), current.as_str());
        assert_eq!(
            res.headers().get("cache-control").unwrap(),
            "public, max-age=60"
        );
        assert_eq!(res.headers().get("vary").unwrap(), VARY_CREDENTIALS);
        assert!(res.headers().contains_key("last-modified"));
    }
}
