//! `spawn_app`: the real mobile API on a free port, with its own database and Redis prefix,
//! and a client that speaks to it the way a phone does. `spawn_web` starts the web service
//! beside it on the same database and prefix, for the session-sharing tests.

use domain::comments::{self, CommentId, SentimentLabel};
use platform_testing::{TestDatabase, TestRedis};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, COOKIE, SET_COOKIE};
use reqwest::{Response, StatusCode, redirect};
use serde_json::{Value, json};

use mobile::configuration::Settings;
use mobile::startup::Application;

pub(crate) const PASSWORD: &str = "correct horse battery";

pub(crate) struct TestApp {
    pub(crate) address: String,
    pub(crate) client: reqwest::Client,
    pub(crate) db: TestDatabase,
    pub(crate) redis: TestRedis,
}

impl TestApp {
    /// What the moderation workers do after changing a post's comments behind the API's back:
    /// tell the application cache, so the API shows the change at once.
    pub(crate) async fn comments_changed(&self, post: i64) {
        let redis = platform_redis::Redis::connect(&self.redis.settings).unwrap();
        let store = domain::store::Store::connect(
            &self.db.settings,
            redis,
            &platform_cache::CacheSettings::default(),
        )
        .unwrap();
        store.comments_changed(domain::PostId(post)).await;
    }

    /// What the spam worker does with a ham verdict: publishes comment `id` of `post` the way
    /// the pipeline does (with its moderation time), then tells the cache.
    pub(crate) async fn publish_comment(&self, post: i64, id: i64) {
        let applied = comments::apply_spam_verdict(
            &self.db.pool,
            "spam",
            uuid::Uuid::new_v4(),
            CommentId(id),
            false,
            0.0,
        )
        .await
        .unwrap();
        assert_eq!(applied, comments::Applied::Done);
        self.comments_changed(post).await;
    }

    /// What the sentiment worker does: scores comment `id` of `post`, then tells the cache.
    pub(crate) async fn score_comment(
        &self,
        post: i64,
        id: i64,
        score: f64,
        label: SentimentLabel,
    ) {
        let applied = comments::apply_sentiment(
            &self.db.pool,
            "sentiment",
            uuid::Uuid::new_v4(),
            CommentId(id),
            score,
            label,
        )
        .await
        .unwrap();
        assert_eq!(applied, comments::Applied::Done);
        self.comments_changed(post).await;
    }
}

pub(crate) async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Spawns the app after `customise` has adjusted its settings.
pub(crate) async fn spawn_app_with(customise: impl FnOnce(&mut Settings)) -> TestApp {
    let db = TestDatabase::create(&domain::MIGRATOR).await;
    let redis = TestRedis::new();
    let mut settings = Settings::default();
    settings.http.bind = "127.0.0.1:0".into();
    settings.http.http_workers = 1;
    settings.db = db.settings.clone();
    settings.redis = redis.settings.clone();
    settings.run_migrations = false;
    customise(&mut settings);
    let app = Application::build(settings).await.expect("the app builds");
    let address = format!("http://127.0.0.1:{}", app.port());
    tokio::spawn(app.run_until_stopped());
    TestApp {
        address,
        client: reqwest::Client::builder()
            .redirect(redirect::Policy::none())
            .build()
            .unwrap(),
        db,
        redis,
    }
}

/// The status, problem `type` slug and body of a problem+json response.
pub(crate) async fn problem(response: Response) -> (StatusCode, String, Value) {
    let status = response.status();
    assert_eq!(
        response.headers()[CONTENT_TYPE],
        "application/problem+json",
        "errors are problem+json"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], status.as_u16(), "{body}");
    let kind = body["type"]
        .as_str()
        .and_then(|t| t.strip_prefix("https://scaleout.dev/problems/"))
        .expect("a stable problem type")
        .to_owned();
    (status, kind, body)
}

impl TestApp {
    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}/api/v1{path}", self.address)
    }

    pub(crate) async fn get(&self, path: &str, token: Option<&str>) -> Response {
        let mut request = self.client.get(self.url(path));
        if let Some(token) = token {
            request = request.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        request.send().await.expect("the request is answered")
    }

    /// A conditional GET with `If-None-Match: etag`.
    pub(crate) async fn get_if_none_match(&self, path: &str, etag: &str) -> Response {
        self.client
            .get(self.url(path))
            .header("if-none-match", etag)
            .send()
            .await
            .expect("the request is answered")
    }

    /// A conditional GET with `If-Modified-Since: date`.
    pub(crate) async fn get_if_modified_since(&self, path: &str, date: &str) -> Response {
        self.client
            .get(self.url(path))
            .header("if-modified-since", date)
            .send()
            .await
            .expect("the request is answered")
    }

    pub(crate) async fn post_json(
        &self,
        path: &str,
        body: &Value,
        token: Option<&str>,
    ) -> Response {
        let mut request = self.client.post(self.url(path)).json(body);
        if let Some(token) = token {
            request = request.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        request.send().await.expect("the request is answered")
    }

    pub(crate) async fn put_json(&self, path: &str, body: &Value, token: Option<&str>) -> Response {
        let mut request = self.client.put(self.url(path)).json(body);
        if let Some(token) = token {
            request = request.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        request.send().await.expect("the request is answered")
    }

    pub(crate) async fn register(&self, username: &str, password: &str) -> Response {
        self.post_json(
            "/auth/register",
            &json!({ "username": username, "password": password }),
            None,
        )
        .await
    }

    pub(crate) async fn login(&self, username: &str, password: &str) -> Response {
        self.post_json(
            "/auth/login",
            &json!({ "username": username, "password": password }),
            None,
        )
        .await
    }

    /// Registers `username` and logs in; returns the token.
    pub(crate) async fn user(&self, username: &str) -> String {
        assert_eq!(
            self.register(username, PASSWORD).await.status(),
            StatusCode::CREATED
        );
        let response = self.login(username, PASSWORD).await;
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = response.json().await.unwrap();
        body["token"].as_str().unwrap().to_owned()
    }

    /// Submits a comment on `post` as the holder of `token`; returns its id. It is pending
    /// until [`TestApp::publish_comment`].
    pub(crate) async fn comment(&self, token: &str, post: i64, body: &str) -> i64 {
        let response = self
            .post_json(
                &format!("/posts/{post}/comments"),
                &json!({ "body": body }),
                Some(token),
            )
            .await;
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        response.json::<Value>().await.unwrap()["id"]
            .as_i64()
            .unwrap()
    }

    /// Creates a post as the holder of `token`; returns its id.
    pub(crate) async fn create_post(&self, token: &str, title: &str, body: &str) -> i64 {
        let response = self
            .post_json(
                "/posts",
                &json!({ "title": title, "body": body }),
                Some(token),
            )
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
        response.json::<Value>().await.unwrap()["id"]
            .as_i64()
            .unwrap()
    }
}

/// The web service, on the same database and Redis prefix as `app`.
pub(crate) struct WebApp {
    pub(crate) address: String,
    pub(crate) client: reqwest::Client,
}

pub(crate) async fn spawn_web(app: &TestApp) -> WebApp {
    let mut settings = web::configuration::Settings::default();
    settings.http.bind = "127.0.0.1:0".into();
    settings.http.http_workers = 1;
    settings.db = app.db.settings.clone();
    settings.redis = app.redis.settings.clone();
    settings.run_migrations = false;
    let web = web::startup::Application::build(settings)
        .await
        .expect("the web app builds");
    let address = format!("http://127.0.0.1:{}", web.port());
    tokio::spawn(web.run_until_stopped());
    WebApp {
        address,
        client: reqwest::Client::builder()
            .redirect(redirect::Policy::none())
            .build()
            .unwrap(),
    }
}

/// The `sid` a response sets, if any.
fn session_cookie(response: &Response) -> Option<String> {
    response
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| v.strip_prefix("sid="))
        .map(|v| v.split(';').next().unwrap_or_default().to_owned())
}

/// The CSRF token of the first form in `html`.
pub(crate) fn csrf_token(html: &str) -> String {
    let marker = r#"name="csrf_token" value=""#;
    let start = html
        .find(marker)
        .expect("the page has a form with a CSRF token")
        + marker.len();
    html[start..].split('"').next().unwrap().to_owned()
}

impl WebApp {
    /// A page fetched with `sid` as the session cookie.
    pub(crate) async fn page(&self, path: &str, sid: &str) -> Response {
        self.client
            .get(format!("{}{path}", self.address))
            .header(COOKIE, format!("sid={sid}"))
            .send()
            .await
            .expect("the page is answered")
    }

    /// Logs in through the web form, as a browser would; returns the `sid` cookie.
    pub(crate) async fn login(&self, username: &str, password: &str) -> String {
        let form = self
            .client
            .get(format!("{}/login", self.address))
            .send()
            .await
            .unwrap();
        let anonymous = session_cookie(&form).expect("the form starts a session");
        let token = csrf_token(&form.text().await.unwrap());
        let response = self
            .client
            .post(format!("{}/login", self.address))
            .header(COOKIE, format!("sid={anonymous}"))
            .form(&[
                ("csrf_token", token.as_str()),
                ("username", username),
                ("password", password),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::SEE_OTHER,
            "the web login succeeds"
        );
        session_cookie(&response).expect("login sets a new session cookie")
    }

    /// Logs out through the header's form, with the session `sid`.
    pub(crate) async fn logout(&self, sid: &str) {
        let home = self.page("/", sid).await.text().await.unwrap();
        let token = csrf_token(&home);
        let response = self
            .client
            .post(format!("{}/logout", self.address))
            .header(COOKIE, format!("sid={sid}"))
            .form(&[("csrf_token", token.as_str())])
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::SEE_OTHER,
            "the web logout succeeds"
        );
    }
}
