//! Server-side sessions in Redis shared by every scaleout front end, with the login throttle
//! that guards them.
//!
//! A session id is 256 random bits, sent by the web as the `sid` cookie and by phones as a
//! bearer token; both name the same Redis key, so a login on one front end is valid on the other
//! and a logout on either ends it for both. The id carries no data: everything lives in Redis,
//! which lets every web and mobile replica serve any request.
//!
//! Expiry is enforced by the server, not trusted to the cookie: each read pushes the key's TTL to
//! the idle timeout, but never past the absolute deadline fixed when the session was created.
//! A session changes id whenever its privilege changes ([`SessionStore::rotate`] on login), so an
//! id learnt before login (session fixation) is worthless after it.
//!
//! # Layout
//! - [`SessionId`], [`SessionData`], [`Session`]: the values.
//! - [`SessionStore`]: create, load, save, rotate, destroy.
//! - [`transport`]: reading the id from a request, and the `sid` cookie.
//! - [`throttle`]: fixed-window attempt counters for login.

pub mod throttle;
pub mod transport;

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use std::time::Duration;

use platform_redis::redis::{self, AsyncCommands};
use platform_redis::{Redis, RedisError, client_span};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use time::OffsetDateTime;
use tracing::Instrument;

/// Session settings shared by the web and mobile services.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct SessionSettings {
    /// `SESSION_IDLE_TIMEOUT_SECS`: a session unused for this long is gone.
    pub session_idle_timeout_secs: u64,
    /// `SESSION_ABSOLUTE_TIMEOUT_SECS`: a session older than this is gone, however busy.
    pub session_absolute_timeout_secs: u64,
    /// `SESSION_COOKIE_SECURE`: send the `sid` cookie over HTTPS only. Off by default so the
    /// local HTTP setup works; turn it on behind TLS.
    pub session_cookie_secure: bool,
}

impl Default for SessionSettings {
    fn default() -> Self {
        Self {
            session_idle_timeout_secs: 2 * 60 * 60,
            session_absolute_timeout_secs: 7 * 24 * 60 * 60,
            session_cookie_secure: false,
        }
    }
}

/// Why a session operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Redis could not be reached in time; callers answer 503.
    #[error("the session store is unavailable")]
    Unavailable(#[from] RedisError),
    /// A stored session could not be decoded; it is treated as absent and removed.
    #[error("a stored session is corrupt")]
    Corrupt(#[from] serde_json::Error),
}

impl From<redis::RedisError> for SessionError {
    fn from(e: redis::RedisError) -> Self {
        Self::Unavailable(RedisError::Command(e))
    }
}

/// An opaque session id: 32 random bytes from the OS, base64url without padding (43 chars).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SessionId(String);

impl SessionId {
    const ENCODED_LEN: usize = 43;

    fn generate() -> Self {
        Self(random_token())
    }

    /// Accepts only strings shaped like an id we issued, so junk never reaches Redis.
    pub fn parse(s: &str) -> Option<Self> {
        (s.len() == Self::ENCODED_LEN
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
        .then(|| Self(s.to_owned()))
    }

    /// The id as sent to the client.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Ids are credentials: logs show a short prefix only.
impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({}…)", &self.0[..6])
    }
}

/// 32 bytes from the OS's CSPRNG, base64url-encoded without padding.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the OS random source is available");
    URL_SAFE_NO_PAD.encode(bytes)
}

/// What a session remembers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SessionData {
    /// The signed-in user, if any; anonymous sessions exist to carry a CSRF token.
    pub user_id: Option<i64>,
    /// The signed-in user's name, kept here so pages render their header without a query.
    pub username: Option<String>,
    /// The synchronizer token every form of this session must echo back.
    pub csrf_token: String,
    /// When the session was first created (Unix seconds); fixes its absolute deadline. Rotation
    /// keeps it, so logging in does not extend a session's life.
    pub created_at: i64,
    /// The primary's WAL position after this session's latest write, if any: its reads must see
    /// at least that much (read-your-writes with replicas).
    #[serde(default)]
    pub last_write_lsn: Option<u64>,
}

impl SessionData {
    /// A fresh anonymous session.
    pub fn anonymous() -> Self {
        Self {
            user_id: None,
            username: None,
            csrf_token: random_token(),
            created_at: OffsetDateTime::now_utc().unix_timestamp(),
            last_write_lsn: None,
        }
    }

    /// The same session, signed in as `user_id`, with a new CSRF token.
    pub fn signed_in(self, user_id: i64, username: impl Into<String>) -> Self {
        Self {
            user_id: Some(user_id),
            username: Some(username.into()),
            csrf_token: random_token(),
            created_at: self.created_at,
            last_write_lsn: self.last_write_lsn,
        }
    }

    /// Checks a submitted CSRF token in constant time.
    pub fn csrf_matches(&self, submitted: &str) -> bool {
        self.csrf_token
            .as_bytes()
            .ct_eq(submitted.as_bytes())
            .into()
    }
}

/// A session as loaded: its id and its data.
#[derive(Debug, Clone)]
pub struct Session {
    pub id: SessionId,
    pub data: SessionData,
}

/// Sessions in Redis under `<prefix>session:<id>`.
#[derive(Debug, Clone)]
pub struct SessionStore {
    redis: Redis,
    idle: Duration,
    absolute: Duration,
}

impl SessionStore {
    pub fn new(redis: Redis, settings: &SessionSettings) -> Self {
        Self {
            redis,
            idle: Duration::from_secs(settings.session_idle_timeout_secs),
            absolute: Duration::from_secs(settings.session_absolute_timeout_secs),
        }
    }

    fn key(&self, id: &SessionId) -> String {
        self.redis.key(format_args!("session:{}", id.0))
    }

    /// Seconds the key may live from now: the idle timeout, cut short by the absolute
    /// deadline. `None` once the deadline has passed.
    fn ttl_secs(&self, data: &SessionData) -> Option<u64> {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let deadline = data
            .created_at
            .saturating_add(self.absolute.as_secs() as i64);
        let left = deadline.saturating_sub(now);
        (left > 0).then(|| self.idle.as_secs().min(left as u64))
    }

    /// Stores a new session under a new id.
    pub async fn create(&self, data: SessionData) -> Result<Session, SessionError> {
        let id = SessionId::generate();
        let ttl = self.ttl_secs(&data).unwrap_or(1);
        let json = serde_json::to_string(&data)?;
        let mut conn = self.redis.conn().await?;
        // NX: a 256-bit collision is not going to happen, but if it did we must not overwrite.
        let _: () = redis::cmd("SET")
            .arg(self.key(&id))
            .arg(json)
            .arg("EX")
            .arg(ttl)
            .arg("NX")
            .query_async(&mut conn)
            .instrument(client_span("SET"))
            .await?;
        Ok(Session { id, data })
    }

    /// Loads a live session and slides its idle expiry. Expired, unknown and corrupt sessions
    /// are `None`.
    pub async fn load(&self, id: &SessionId) -> Result<Option<Session>, SessionError> {
        let key = self.key(id);
        let mut conn = self.redis.conn().await?;
        let json: Option<String> = redis::cmd("GETEX")
            .arg(&key)
            .arg("EX")
            .arg(self.idle.as_secs())
            .query_async(&mut conn)
            .instrument(client_span("GETEX"))
            .await?;
        let Some(json) = json else { return Ok(None) };
        let data: SessionData = match serde_json::from_str(&json) {
            Ok(data) => data,
            Err(_) => {
                let _: () = conn.del(&key).instrument(client_span("DEL")).await?;
                return Ok(None);
            }
        };
        match self.ttl_secs(&data) {
            None => {
                let _: () = conn.del(&key).instrument(client_span("DEL")).await?;
                Ok(None)
            }
            Some(ttl) => {
                if ttl < self.idle.as_secs() {
                    let _: () = conn
                        .expire(&key, ttl as i64)
                        .instrument(client_span("EXPIRE"))
                        .await?;
                }
                Ok(Some(Session {
                    id: id.clone(),
                    data,
                }))
            }
        }
    }

    /// The live session a request presents (bearer token first, then the `sid` cookie; see
    /// [`transport::session_id`]), if any. Every front end finds its caller this way, which is
    /// what makes a web login valid on the API and the reverse.
    pub async fn current(
        &self,
        req: &actix_web::HttpRequest,
    ) -> Result<Option<Session>, SessionError> {
        match transport::session_id(req) {
            Some(id) => self.load(&id).await,
            None => Ok(None),
        }
    }

    /// Replaces the old id with a new one holding `data`, in one transaction: after it returns
    /// the old id names nothing. Used on every change of privilege.
    pub async fn rotate(
        &self,
        old: &SessionId,
        data: SessionData,
    ) -> Result<Session, SessionError> {
        let id = SessionId::generate();
        let ttl = self.ttl_secs(&data).unwrap_or(1);
        let json = serde_json::to_string(&data)?;
        let mut conn = self.redis.conn().await?;
        let _: () = redis::pipe()
            .atomic()
            .del(self.key(old))
            .ignore()
            .set_ex(self.key(&id), json, ttl)
            .ignore()
            .query_async(&mut conn)
            .instrument(client_span("MULTI"))
            .await?;
        Ok(Session { id, data })
    }

    /// Stores changed data under the session's id, keeping its expiry; a session that ended in
    /// the meantime stays ended (the write does not revive it).
    pub async fn save(&self, session: &Session) -> Result<(), SessionError> {
        let json = serde_json::to_string(&session.data)?;
        let mut conn = self.redis.conn().await?;
        let _: () = redis::cmd("SET")
            .arg(self.key(&session.id))
            .arg(json)
            .arg("XX")
            .arg("KEEPTTL")
            .query_async(&mut conn)
            .instrument(client_span("SET"))
            .await?;
        Ok(())
    }

    /// Deletes a session; its id is rejected everywhere from now on.
    pub async fn destroy(&self, id: &SessionId) -> Result<(), SessionError> {
        let mut conn = self.redis.conn().await?;
        let _: () = conn
            .del(self.key(id))
            .instrument(client_span("DEL"))
            .await?;
        Ok(())
    }

    /// The absolute lifetime, for cookie `Max-Age`.
    pub fn absolute_timeout(&self) -> Duration {
        self.absolute
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use platform_redis::RedisSettings;

    fn store(settings: SessionSettings) -> SessionStore {
        let redis = Redis::connect(&RedisSettings {
            redis_key_prefix: format!("test:{}:", random_token()),
            ..RedisSettings::default()
        })
        .unwrap();
        SessionStore::new(redis, &settings)
    }

    #[test]
    fn ids_are_43_url_safe_characters_and_unique() {
        let a = SessionId::generate();
        let b = SessionId::generate();
        assert_eq!(a.as_str().len(), 43);
        assert!(SessionId::parse(a.as_str()).is_some());
        assert_ne!(a, b);
        assert!(SessionId::parse("short").is_none());
        assert!(SessionId::parse(&"+".repeat(43)).is_none());
    }

    #[tokio::test]
    async fn rotation_invalidates_the_old_id_and_keeps_the_creation_time() {
        let store = store(SessionSettings::default());
        let before = store.create(SessionData::anonymous()).await.unwrap();
        let after = store
            .rotate(&before.id, before.data.clone().signed_in(7, "ada"))
            .await
            .unwrap();
        assert!(store.load(&before.id).await.unwrap().is_none());
        let loaded = store.load(&after.id).await.unwrap().unwrap();
        assert_eq!(loaded.data.user_id, Some(7));
        assert_eq!(loaded.data.created_at, before.data.created_at);
        assert_ne!(loaded.data.csrf_token, before.data.csrf_token);
        store.destroy(&after.id).await.unwrap();
        assert!(store.load(&after.id).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn saving_keeps_the_expiry_and_never_revives_an_ended_session() {
        let store = store(SessionSettings::default());
        let mut session = store.create(SessionData::anonymous()).await.unwrap();
        session.data.last_write_lsn = Some(42);
        store.save(&session).await.unwrap();
        let loaded = store.load(&session.id).await.unwrap().unwrap();
        assert_eq!(loaded.data.last_write_lsn, Some(42));
        let mut conn = store.redis.conn().await.unwrap();
        let ttl: i64 = conn.ttl(store.key(&session.id)).await.unwrap();
        assert!(ttl > 0, "the expiry is kept");
        store.destroy(&session.id).await.unwrap();
        store.save(&session).await.unwrap();
        assert!(store.load(&session.id).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_session_past_its_absolute_deadline_is_gone_even_if_used() {
        let store = store(SessionSettings::default());
        let mut data = SessionData::anonymous();
        data.created_at -= store.absolute_timeout().as_secs() as i64 + 1;
        let session = store.create(data).await.unwrap();
        assert!(store.load(&session.id).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn reading_slides_the_idle_expiry_but_not_past_the_absolute_deadline() {
        let store = store(SessionSettings {
            session_idle_timeout_secs: 600,
            session_absolute_timeout_secs: 3600,
            ..SessionSettings::default()
        });
        let mut data = SessionData::anonymous();
        data.created_at -= 3600 - 100; // 100 s left of its life
        let session = store.create(data).await.unwrap();
        store.load(&session.id).await.unwrap().unwrap();
        let mut conn = store.redis.conn().await.unwrap();
        let ttl: i64 = conn.ttl(store.key(&session.id)).await.unwrap();
        assert!((1..=100).contains(&ttl), "ttl {ttl}");
        store.destroy(&session.id).await.unwrap();
    }

    #[test]
    fn csrf_tokens_compare_exactly() {
        let data = SessionData::anonymous();
        let token = data.csrf_token.clone();
        assert!(data.csrf_matches(&token));
        assert!(!data.csrf_matches(""));
        assert!(!data.csrf_matches(&token[1..]));
    }
}
