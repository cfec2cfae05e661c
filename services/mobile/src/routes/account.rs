//! Registering, logging in and out, and who the caller is.

use actix_web::{HttpRequest, HttpResponse, web};
use anyhow::Context;
use domain::users::{self, CreateUserError};
use domain::{Password, Username};
use platform_session::SessionData;
use platform_session::throttle::Verdict;
use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

use super::{no_store, timestamp};
use crate::auth;
use crate::error::{ApiError, FieldError};
use crate::startup::AppState;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CredentialsBody {
    username: String,
    password: String,
}

#[derive(Serialize)]
struct UserBody<'a> {
    id: i64,
    username: &'a str,
}

#[derive(Serialize)]
struct TokenBody {
    token: String,
    /// When the session ends at the latest (its absolute deadline); it ends sooner after
    /// `SESSION_IDLE_TIMEOUT_SECS` without use, or on logout from either front end.
    expires_at: String,
}

/// `POST /auth/register`: creates an account. The caller logs in separately, like on the web.
pub(super) async fn register(
    state: web::Data<AppState>,
    body: web::Json<CredentialsBody>,
) -> Result<HttpResponse, ApiError> {
    let username = Username::parse(&body.username);
    let password = Password::parse(&body.password);
    let (username, password) = match (username, password) {
        (Ok(u), Ok(p)) => (u, p),
        (u, p) => {
            let errors = [("username", u.err()), ("password", p.err())]
                .into_iter()
                .filter_map(|(field, e)| e.map(|message| FieldError { field, message }))
                .collect();
            return Err(ApiError::Validation(errors));
        }
    };
    let hash = state
        .hasher
        .hash(&password)
        .await
        .context("Failed to hash a password")?;
    match users::create(&state.pool, &username, &hash).await {
        Ok(id) => {
            tracing::info!(message = "User registered.", user_id = id.0);
            Ok(no_store(HttpResponse::Created()).json(UserBody {
                id: id.0,
                username: username.as_ref(),
            }))
        }
        Err(CreateUserError::UsernameTaken) => Err(ApiError::UsernameTaken),
        Err(CreateUserError::Database(e)) => Err(e.into()),
    }
}

/// `POST /auth/login`: checks the password and issues a token, rate-limited per client and per
/// account with the same counters as the web's login form.
///
/// An unknown user and a wrong password get the same answer after the same work, so the
/// endpoint cannot be used to discover accounts.
pub(super) async fn login(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Json<CredentialsBody>,
) -> Result<HttpResponse, ApiError> {
    let username = body.username.trim();
    let mut errors = Vec::new();
    if username.is_empty() || username.chars().count() > Username::MAX_CHARS {
        errors.push(FieldError {
            field: "username",
            message: format!(
                "The username must be 1 to {} characters.",
                Username::MAX_CHARS
            ),
        });
    }
    if body.password.is_empty() || body.password.chars().count() > Password::MAX_CHARS {
        errors.push(FieldError {
            field: "password",
            message: format!(
                "The password must be 1 to {} characters.",
                Password::MAX_CHARS
            ),
        });
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }

    let client = platform_http::client_ip(&req, &state.settings.http.trusted_proxies)
        .map(|ip| ip.to_string())
        .unwrap_or_default();
    let account = username.to_lowercase();
    for (throttle, key) in [
        (&state.login_per_client, client.as_str()),
        (&state.login_per_account, account.as_str()),
    ] {
        match throttle.hit(key).await {
            Ok(Verdict::Allowed) => {}
            Ok(Verdict::Limited { retry_after_secs }) => {
                return Err(ApiError::TooManyRequests { retry_after_secs });
            }
            Err(e) => {
                tracing::warn!(message = "Login throttle unavailable.", error = %e);
                return Err(ApiError::Unavailable("The session store"));
            }
        }
    }
    let credentials = users::find_credentials(&state.pool, username).await?;
    let verified = state
        .hasher
        .verify(
            &body.password,
            credentials.as_ref().map(|c| c.password_hash.as_str()),
        )
        .await
        .context("Failed to verify a password")?;
    let Some(user) = credentials.filter(|_| verified) else {
        return Err(ApiError::InvalidCredentials);
    };
    // Always a new session: an id the caller held before logging in is never promoted.
    let session = state
        .sessions
        .create(SessionData::anonymous().signed_in(user.id.0, &user.username))
        .await?;
    tracing::info!(message = "User logged in.", user_id = user.id.0);
    let deadline = OffsetDateTime::from_unix_timestamp(session.data.created_at)
        .unwrap_or_else(|_| OffsetDateTime::now_utc())
        + Duration::seconds(state.sessions.absolute_timeout().as_secs() as i64);
    Ok(no_store(HttpResponse::Ok()).json(TokenBody {
        token: session.id.as_str().to_owned(),
        expires_at: timestamp(deadline),
    }))
}

/// `POST /auth/logout`: ends the session on every front end.
pub(super) async fn logout(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let session = auth::session(&state, &req).await?;
    state.sessions.destroy(&session.id).await?;
    Ok(no_store(HttpResponse::NoContent()).finish())
}

/// `GET /me`: the signed-in caller.
pub(super) async fn me(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let caller = auth::caller(&state, &req).await?;
    Ok(no_store(HttpResponse::Ok()).json(UserBody {
        id: caller.user_id.0,
        username: &caller.username,
    }))
}
