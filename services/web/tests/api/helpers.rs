//! `spawn_app`: the real web application on a free port, with its own database and Redis
//! prefix, and a client that speaks to it the way a browser does.

use platform_testing::{TestDatabase, TestRedis};
use reqwest::header::{COOKIE, SET_COOKIE};
use reqwest::{Response, StatusCode, redirect};
use web::configuration::Settings;
use web::startup::Application;

pub(crate) struct TestApp {
    pub(crate) address: String,
    pub(crate) client: reqwest::Client,
    pub(crate) db: TestDatabase,
    _redis: TestRedis,
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
        _redis: redis,
    }
}

/// The `sid` a response sets, if any.
pub(crate) fn session_cookie(response: &Response) -> Option<String> {
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

/// A browser-like visitor: it remembers its session cookie between requests.
pub(crate) struct Visitor<'a> {
    pub(crate) app: &'a TestApp,
    pub(crate) sid: Option<String>,
}

impl TestApp {
    pub(crate) fn visitor(&self) -> Visitor<'_> {
        Visitor {
            app: self,
            sid: None,
        }
    }

    /// Registers `username` and returns a visitor signed in as them.
    pub(crate) async fn registered_user(&self, username: &str, password: &str) -> Visitor<'_> {
        let mut visitor = self.visitor();
        let response = visitor
            .submit(
                "/register",
                "/register",
                &[("username", username), ("password", password)],
            )
            .await;
        assert_eq!(
            response.status(),
            StatusCode::SEE_OTHER,
            "registration succeeds"
        );
        visitor
    }
}

impl Visitor<'_> {
    pub(crate) async fn get(&mut self, path: &str) -> Response {
        let mut request = self.app.client.get(format!("{}{path}", self.app.address));
        if let Some(sid) = &self.sid {
            request = request.header(COOKIE, format!("sid={sid}"));
        }
        let response = request.send().await.expect("the request is answered");
        self.remember(&response);
        response
    }

    pub(crate) async fn post(&mut self, path: &str, fields: &[(&str, &str)]) -> Response {
        let mut request = self
            .app
            .client
            .post(format!("{}{path}", self.app.address))
            .form(fields);
        if let Some(sid) = &self.sid {
            request = request.header(COOKIE, format!("sid={sid}"));
        }
        let response = request.send().await.expect("the request is answered");
        self.remember(&response);
        response
    }

    /// Loads the form at `form_page`, then posts `fields` with its CSRF token to `action`.
    pub(crate) async fn submit(
        &mut self,
        form_page: &str,
        action: &str,
        fields: &[(&str, &str)],
    ) -> Response {
        let html = self.get(form_page).await.text().await.unwrap();
        let token = csrf_token(&html);
        let mut all = vec![("csrf_token", token.as_str())];
        all.extend_from_slice(fields);
        self.post(action, &all).await
    }

    fn remember(&mut self, response: &Response) {
        if let Some(sid) = session_cookie(response) {
            self.sid = (!sid.is_empty()).then_some(sid);
        }
    }
}
