//! Registering, logging in and logging out.

use actix_web::{HttpRequest, HttpResponse, HttpResponseBuilder, web};
use anyhow::Context;
use domain::users::{self, CreateUserError};
use domain::{Password, Username};
use platform_session::throttle::Verdict;
use platform_session::{Session, transport};
use serde::Deserialize;

use super::{html, see_other, set_session_cookie};
use crate::error::PageError;
use crate::pages::{AccountFormPage, Viewer};
use crate::session;
use crate::startup::AppState;

const REGISTER: (&str, &str) = ("Register", "/register");
const LOGIN: (&str, &str) = ("Log in", "/login");

#[derive(Deserialize)]
pub(super) struct AccountForm {
    csrf_token: String,
    username: String,
    password: String,
}

/// Renders the register or login form for `session`.
fn account_form(
    builder: HttpResponseBuilder,
    (heading, action): (&str, &str),
    session: &Session,
    username: &str,
    error: Option<&str>,
) -> Result<HttpResponse, PageError> {
    html(
        builder,
        &AccountFormPage {
            viewer: Viewer::from(Some(session)),
            heading,
            action,
            csrf_token: &session.data.csrf_token,
            username,
            error,
        },
        true,
    )
}

/// Shows a form, starting an anonymous session to hold its CSRF token if needed.
async fn show_form(
    state: &AppState,
    req: &HttpRequest,
    which: (&str, &str),
) -> Result<HttpResponse, PageError> {
    let (session, _) = session::ensure(state, req).await?;
    let mut builder = HttpResponse::Ok();
    set_session_cookie(&mut builder, state, &session);
    account_form(builder, which, &session, "", None)
}

pub(super) async fn register_form(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, PageError> {
    show_form(&state, &req, REGISTER).await
}

pub(super) async fn login_form(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, PageError> {
    show_form(&state, &req, LOGIN).await
}

/// Signs `session` in as the given user under a new id, and sends the browser home with it.
async fn sign_in(
    state: &AppState,
    session: Session,
    user_id: i64,
    username: &str,
) -> Result<HttpResponse, PageError> {
    let signed_in = state
        .sessions
        .rotate(&session.id, session.data.signed_in(user_id, username))
        .await?;
    let mut builder = see_other("/");
    set_session_cookie(&mut builder, state, &signed_in);
    Ok(builder.finish())
}

/// `POST /register`: creates the account and signs it in.
pub(super) async fn register(
    state: web::Data<AppState>,
    req: HttpRequest,
    form: web::Form<AccountForm>,
) -> Result<HttpResponse, PageError> {
    let session = session::verified(&state, &req, &form.csrf_token).await?;
    let parsed = Username::parse(&form.username)
        .and_then(|name| Password::parse(&form.password).map(|password| (name, password)));
    let (username, password) = match parsed {
        Ok(valid) => valid,
        Err(message) => {
            return account_form(
                HttpResponse::UnprocessableEntity(),
                REGISTER,
                &session,
                &form.username,
                Some(&message),
            );
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
            sign_in(&state, session, id.0, username.as_ref()).await
        }
        Err(CreateUserError::UsernameTaken) => account_form(
            HttpResponse::Conflict(),
            REGISTER,
            &session,
            &form.username,
            Some("That username is already taken. Please choose another."),
        ),
        Err(CreateUserError::Database(e)) => Err(e.into()),
    }
}

/// `POST /login`: checks the password, rate-limited per client and per account.
///
/// An unknown user and a wrong password get the same answer after the same work, so the form
/// cannot be used to discover accounts.
pub(super) async fn login(
    state: web::Data<AppState>,
    req: HttpRequest,
    form: web::Form<AccountForm>,
) -> Result<HttpResponse, PageError> {
    let session = session::verified(&state, &req, &form.csrf_token).await?;
    let client = platform_http::client_ip(&req, &state.settings.http.trusted_proxies)
        .map(|ip| ip.to_string())
        .unwrap_or_default();
    let account = form.username.trim().to_lowercase();
    for (throttle, key) in [
        (&state.login_per_client, client.as_str()),
        (&state.login_per_account, account.as_str()),
    ] {
        match throttle.hit(key).await {
            Ok(Verdict::Allowed) => {}
            Ok(Verdict::Limited { retry_after_secs }) => {
                return Err(PageError::TooManyRequests { retry_after_secs });
            }
            Err(e) => {
                tracing::warn!(message = "Login throttle unavailable.", error = %e);
                return Err(PageError::Unavailable("The session store"));
            }
        }
    }
    let credentials = users::find_credentials(&state.pool, form.username.trim()).await?;
    let verified = state
        .hasher
        .verify(
            &form.password,
            credentials.as_ref().map(|c| c.password_hash.as_str()),
        )
        .await
        .context("Failed to verify a password")?;
    match credentials {
        Some(user) if verified => {
            tracing::info!(message = "User logged in.", user_id = user.id.0);
            sign_in(&state, session, user.id.0, &user.username).await
        }
        _ => account_form(
            HttpResponse::Unauthorized(),
            LOGIN,
            &session,
            &form.username,
            Some("Invalid username or password."),
        ),
    }
}

#[derive(Deserialize)]
pub(super) struct LogoutForm {
    csrf_token: String,
}

/// `POST /logout`: ends the session everywhere it is used and forgets the cookie.
pub(super) async fn logout(
    state: web::Data<AppState>,
    req: HttpRequest,
    form: web::Form<LogoutForm>,
) -> Result<HttpResponse, PageError> {
    let session = session::verified(&state, &req, &form.csrf_token).await?;
    state.sessions.destroy(&session.id).await?;
    Ok(see_other("/")
        .cookie(transport::removal_cookie(
            state.settings.session.session_cookie_secure,
        ))
        .finish())
}
