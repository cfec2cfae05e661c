//! The askama templates' types. Templates escape every value by default; nothing here marks
//! user input as safe.

use askama::Template;
use domain::comments::Comment;
use domain::posts::{Page, Post};
use platform_session::Session;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Who is looking, for the page header: their name and the token for the logout form.
#[derive(Debug, Default, Clone)]
pub struct Viewer {
    pub username: Option<String>,
    pub csrf_token: Option<String>,
}

impl From<Option<&Session>> for Viewer {
    fn from(session: Option<&Session>) -> Self {
        session.map_or_else(Self::default, |s| Self {
            username: s.data.username.clone(),
            csrf_token: Some(s.data.csrf_token.clone()),
        })
    }
}

/// Dates as RFC 3339, which the `<time>` element and people both read.
pub fn timestamp(at: &OffsetDateTime) -> String {
    at.format(&Rfc3339).unwrap_or_default()
}

#[derive(Template)]
#[template(path = "home.html")]
pub struct HomePage<'a> {
    pub viewer: Viewer,
    pub page: &'a Page,
}

#[derive(Template)]
#[template(path = "post.html")]
pub struct PostPage<'a> {
    pub viewer: Viewer,
    pub post: &'a Post,
    pub comments: &'a [Comment],
    /// The viewer just submitted a comment: say that it awaits moderation.
    pub comment_pending: bool,
}

#[derive(Template)]
#[template(path = "new_post.html")]
pub struct NewPostPage<'a> {
    pub viewer: Viewer,
    pub csrf_token: &'a str,
    pub title: &'a str,
    pub body: &'a str,
    pub error: Option<&'a str>,
}

/// The register and login forms share a shape.
#[derive(Template)]
#[template(path = "account_form.html")]
pub struct AccountFormPage<'a> {
    pub viewer: Viewer,
    pub heading: &'a str,
    pub action: &'a str,
    pub csrf_token: &'a str,
    pub username: &'a str,
    pub error: Option<&'a str>,
}

#[derive(Template)]
#[template(path = "error.html")]
pub struct ErrorPage<'a> {
    pub viewer: Viewer,
    pub title: &'a str,
    pub message: &'a str,
}
