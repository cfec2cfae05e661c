//! Reading, listing, writing and editing posts.

use actix_web::http::header::{IF_MATCH, LOCATION};
use actix_web::{HttpRequest, HttpResponse, web};
use domain::posts::{self, Post, UpdatePostError};
use domain::{PostBody, PostId, PostTitle};
use platform_http::caching::{
    CacheHeaders, Fingerprint, Policy, VARY_CREDENTIALS, if_match_allows,
};
use serde::{Deserialize, Serialize};

use super::{PREFIX, path_id, timestamp};
use crate::auth;
use crate::error::{ApiError, FieldError};
use crate::startup::AppState;

/// The largest `limit` a listing accepts.
pub(super) const MAX_LIMIT: u32 = 100;

#[derive(Deserialize)]
pub(super) struct ListQuery {
    limit: Option<u32>,
    cursor: Option<String>,
}

#[derive(Serialize)]
struct SummaryBody {
    id: i64,
    title: String,
    author: String,
    created_at: String,
    comment_count: i64,
    views: i64,
}

#[derive(Serialize)]
struct ListBody {
    items: Vec<SummaryBody>,
    /// Opaque: pass back as `cursor` for the next page; `null` on the last page.
    next_cursor: Option<String>,
}

#[derive(Serialize)]
struct PostBodyJson<'a> {
    id: i64,
    title: &'a str,
    body: &'a str,
    author: &'a str,
    created_at: String,
    updated_at: String,
    views: i64,
}

impl<'a> From<&'a Post> for PostBodyJson<'a> {
    fn from(post: &'a Post) -> Self {
        Self {
            id: post.id.0,
            title: &post.title,
            body: &post.body,
            author: &post.author,
            created_at: timestamp(post.created_at),
            updated_at: timestamp(post.updated_at),
            views: post.views,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PostInput {
    title: String,
    body: String,
}

impl PostInput {
    fn parse(&self) -> Result<(PostTitle, PostBody), ApiError> {
        match (PostTitle::parse(&self.title), PostBody::parse(&self.body)) {
            (Ok(title), Ok(body)) => Ok((title, body)),
            (title, body) => Err(ApiError::Validation(
                [("title", title.err()), ("body", body.err())]
                    .into_iter()
                    .filter_map(|(field, e)| e.map(|message| FieldError { field, message }))
                    .collect(),
            )),
        }
    }
}

/// A post's ETag: it changes with every edit (the version). The view count is approximate
/// (counted write-behind) and left out, so a popular post stays cacheable; a revalidating
/// client may see an older count.
fn post_fingerprint(post: &Post) -> Fingerprint {
    Fingerprint::new("api-post")
        .part(post.id)
        .part(post.version)
}

/// The cache headers of a post.
fn post_cache(post: &Post, policy: Policy) -> CacheHeaders {
    CacheHeaders::new(policy)
        .etag(&post_fingerprint(post))
        .last_modified(post.updated_at)
        .vary(VARY_CREDENTIALS)
}

/// `GET /posts?limit=&cursor=`: newest first, by keyset pagination on the id, so posts added
/// while a client pages through never shift the pages it has yet to read.
pub(super) async fn list(
    state: web::Data<AppState>,
    req: HttpRequest,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let limit = query.limit.unwrap_or(state.settings.page_size);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::InvalidQuery(format!(
            "`limit` must be between 1 and {MAX_LIMIT}."
        )));
    }
    let before = match query.cursor.as_deref() {
        None | Some("") => None,
        Some(raw) => Some(
            raw.parse::<i64>()
                .ok()
                .filter(|id| *id > 0)
                .map(PostId)
                .ok_or_else(|| {
                    ApiError::InvalidQuery(
                        "`cursor` must be a `next_cursor` value from a previous page.".into(),
                    )
                })?,
        ),
    };
    let seen = auth::last_write(&state, &req).await;
    let page = state.store.list_posts(before, limit, seen).await?;

    // What changes a page: a post arriving or leaving it (ids), an edit (versions), a comment
    // being published (counts), and where the next page starts; not the approximate views.
    let mut fingerprint = Fingerprint::new("api-post-list");
    for item in &page.items {
        fingerprint = fingerprint
            .part(item.id)
            .part(item.version)
            .part(item.comment_count);
    }
    let fingerprint = fingerprint.part(page.next_cursor.map(|c| c.0).unwrap_or(0));
    let mut cache = CacheHeaders::new(auth::read_policy(&state, &req))
        .etag(&fingerprint)
        .vary(VARY_CREDENTIALS);
    // Moved by the same changes as the ETag, so a client revalidating by date alone is not told
    // a page with a new comment count is unchanged.
    if let Some(last_modified) = page.last_modified() {
        cache = cache.last_modified(last_modified);
    }
    if let Some(not_modified) = cache.not_modified(&req) {
        return Ok(not_modified);
    }
    let body = ListBody {
        next_cursor: page.next_cursor.map(|c| c.0.to_string()),
        items: page
            .items
            .into_iter()
            .map(|p| SummaryBody {
                id: p.id.0,
                title: p.title,
                author: p.author,
                created_at: timestamp(p.created_at),
                comment_count: p.comment_count,
                views: p.views,
            })
            .collect(),
    };
    let mut builder = HttpResponse::Ok();
    cache.apply(&mut builder);
    Ok(builder.json(body))
}

/// `GET /posts/{id}`.
pub(super) async fn show(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = PostId(path_id(&path, "The post")?);
    let seen = auth::last_write(&state, &req).await;
    let post = state
        .store
        .post(id, seen)
        .await?
        .ok_or(ApiError::NotFound("The post"))?;
    state.store.record_view(id);
    let cache = post_cache(&post, auth::read_policy(&state, &req));
    if let Some(not_modified) = cache.not_modified(&req) {
        return Ok(not_modified);
    }
    let mut builder = HttpResponse::Ok();
    cache.apply(&mut builder);
    Ok(builder.json(PostBodyJson::from(&post)))
}

/// `POST /posts`: publishes a post by the caller; 201 with its `Location` and representation.
pub(super) async fn create(
    state: web::Data<AppState>,
    req: HttpRequest,
    input: web::Json<PostInput>,
) -> Result<HttpResponse, ApiError> {
    let caller = auth::caller(&state, &req).await?;
    let (title, body) = input.parse()?;
    let (id, written_at) = state
        .store
        .create_post(caller.user_id, &title, &body)
        .await?;
    tracing::info!(
        message = "Post created.",
        post_id = id.0,
        user_id = caller.user_id.0
    );
    auth::remember_write(&state, caller, written_at).await;
    let post = posts::get(&state.pool, id)
        .await?
        .ok_or(ApiError::NotFound("The post"))?;
    let mut builder = HttpResponse::Created();
    post_cache(&post, Policy::Private).apply(&mut builder);
    builder.insert_header((LOCATION, format!("{PREFIX}/posts/{id}")));
    Ok(builder.json(PostBodyJson::from(&post)))
}

/// `PUT /posts/{id}`: replaces the title and body, by the post's author only; with `If-Match`,
/// only if the post is still the version the client last saw (412 otherwise).
pub(super) async fn update(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    input: web::Json<PostInput>,
) -> Result<HttpResponse, ApiError> {
    let id = PostId(path_id(&path, "The post")?);
    let caller = auth::caller(&state, &req).await?;
    let (title, body) = input.parse()?;
    // With `If-Match`, the edit applies only to the version the client's ETag names; the
    // version check is repeated inside the UPDATE, so a concurrent edit cannot slip in between.
    let expected_version = if req.headers().contains_key(IF_MATCH) {
        let current = posts::get(&state.pool, id)
            .await?
            .ok_or(ApiError::NotFound("The post"))?;
        if !if_match_allows(&req, &post_fingerprint(&current)) {
            return Err(ApiError::PreconditionFailed);
        }
        Some(current.version)
    } else {
        None
    };
    let edited = state
        .store
        .update_post(id, caller.user_id, expected_version, &title, &body)
        .await;
    let post = match edited {
        Ok((post, written_at)) => {
            auth::remember_write(&state, caller.clone(), written_at).await;
            post
        }
        Err(UpdatePostError::VersionMismatch) => return Err(ApiError::PreconditionFailed),
        Err(UpdatePostError::NotFound) => return Err(ApiError::NotFound("The post")),
        Err(UpdatePostError::Forbidden) => {
            return Err(ApiError::Forbidden("Only the post's author may edit it."));
        }
        Err(UpdatePostError::Database(e)) => return Err(e.into()),
    };
    tracing::info!(
        message = "Post edited.",
        post_id = id.0,
        user_id = caller.user_id.0,
        version = post.version
    );
    let mut builder = HttpResponse::Ok();
    post_cache(&post, Policy::Private).apply(&mut builder);
    Ok(builder.json(PostBodyJson::from(&post)))
}
