//! The HTTP API (axum): OpenAI's Videos API (`/v1/videos`), health checks and Prometheus
//! metrics. Every request is validated before anything is queued; every error has OpenAI's
//! shape `{"error": {"message", "type", "param", "code"}}` and the fitting status.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::artifacts::{Artifacts, Variant};
use crate::engine::ModelSpec;
use crate::job::{Job, JobRequest, JobStatus, VideoObject, is_valid_id};
use crate::store::{JobStore, Order, StoreError};

/// Longest prompt accepted, in characters.
pub const MAX_PROMPT_CHARS: usize = 4000;

/// Largest request body accepted, in bytes.
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// What the handlers share.
pub struct ServerState {
    /// The job queue.
    pub store: Arc<dyn JobStore>,
    /// Where finished videos are.
    pub artifacts: Artifacts,
    /// The models served; the first is the default.
    pub models: Vec<ModelSpec>,
}

/// An error in OpenAI's shape.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
    param: Option<&'static str>,
    code: Option<&'static str>,
}

impl ApiError {
    fn invalid(param: &'static str, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_request_error",
            message: message.into(),
            param: Some(param),
            code: None,
        }
    }

    fn not_found(id: &str) -> Self {
        let message = if is_valid_id(id) {
            format!("no video with id {id:?}")
        } else {
            format!("{id:?} is not a video id (video_ and 24 hexadecimal digits)")
        };
        Self {
            status: StatusCode::NOT_FOUND,
            kind: "invalid_request_error",
            message,
            param: Some("video_id"),
            code: Some("not_found"),
        }
    }

    fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::QueueFull { .. } => Self {
                status: StatusCode::TOO_MANY_REQUESTS,
                kind: "rate_limit_error",
                message: error.to_string(),
                param: None,
                code: Some("queue_full"),
            },
            StoreError::Database(_) => Self {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                kind: "server_error",
                message: error.to_string(),
                param: None,
                code: None,
            },
        }
    }
}

/// Seconds to wait before retrying when the queue is full.
const RETRY_AFTER_SECONDS: &str = "5";

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }});
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(RETRY_AFTER_SECONDS),
            );
        }
        response
    }
}

/// Runs a store call off the async threads.
async fn blocking<T: Send + 'static>(
    state: &Arc<ServerState>,
    call: impl FnOnce(&dyn JobStore) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    let state = state.clone();
    tokio::task::spawn_blocking(move || call(state.store.as_ref()))
        .await
        .map_err(|error| ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            kind: "server_error",
            message: error.to_string(),
            param: None,
            code: None,
        })?
        .map_err(ApiError::from)
}

/// The routes, with `state`.
pub fn router(state: Arc<ServerState>) -> Router {
    Router::new()
        .route("/v1/videos", get(list_videos).post(create_video))
        .route("/v1/videos/{id}", get(get_video).delete(delete_video))
        .route("/v1/videos/{id}/content", get(content))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .fallback(|| async {
            ApiError {
                status: StatusCode::NOT_FOUND,
                kind: "invalid_request_error",
                message: "no such route; the API is under /v1/videos".into(),
                param: None,
                code: Some("not_found"),
            }
        })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// `seconds` as a string (OpenAI's SDKs) or a number.
#[derive(Deserialize)]
#[serde(untagged)]
enum Seconds {
    Text(String),
    Number(f64),
}

/// The body of `POST /v1/videos`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateVideo {
    prompt: String,
    model: Option<String>,
    seconds: Option<Seconds>,
    size: Option<String>,
    seed: Option<u64>,
    steps: Option<usize>,
    guidance: Option<f64>,
    negative_prompt: Option<String>,
}

/// Checks a request against the served models and makes the job request.
fn validate(body: CreateVideo, models: &[ModelSpec]) -> Result<JobRequest, ApiError> {
    let prompt = body.prompt.trim().to_string();
    if prompt.is_empty() {
        return Err(ApiError::invalid("prompt", "prompt must not be empty"));
    }
    if prompt.chars().count() > MAX_PROMPT_CHARS {
        return Err(ApiError::invalid(
            "prompt",
            format!("prompt must be at most {MAX_PROMPT_CHARS} characters"),
        ));
    }
    let model = match &body.model {
        None => &models[0],
        Some(name) => models.iter().find(|m| &m.name == name).ok_or_else(|| {
            let known: Vec<&str> = models.iter().map(|m| m.name.as_str()).collect();
            ApiError::invalid(
                "model",
                format!(
                    "unknown model {name:?}; this server has {}",
                    known.join(", ")
                ),
            )
            .with_code("model_not_found")
        })?,
    };
    let seconds = match body.seconds {
        None => model.seconds,
        Some(Seconds::Number(seconds)) => seconds,
        Some(Seconds::Text(text)) => text.trim().parse().map_err(|_| {
            ApiError::invalid("seconds", format!("seconds must be a number; got {text:?}"))
        })?,
    };
    if !(seconds.is_finite() && seconds > 0.0 && seconds <= model.max_seconds) {
        return Err(ApiError::invalid(
            "seconds",
            format!(
                "seconds must be more than 0 and at most {}; got {seconds}",
                model.max_seconds
            ),
        ));
    }
    let (width, height) = match &body.size {
        None => model.size,
        Some(size) => parse_size(size, model)?,
    };
    if let Some(steps) = body.steps
        && !(1..=200).contains(&steps)
    {
        return Err(ApiError::invalid(
            "steps",
            "steps must be between 1 and 200",
        ));
    }
    if let Some(guidance) = body.guidance
        && !(guidance.is_finite() && (0.0..=30.0).contains(&guidance))
    {
        return Err(ApiError::invalid(
            "guidance",
            "guidance must be between 0 and 30",
        ));
    }
    Ok(JobRequest {
        prompt,
        negative_prompt: body.negative_prompt.unwrap_or_default(),
        model: model.name.clone(),
        width,
        height,
        seconds,
        seed: body.seed.unwrap_or_else(rand::random),
        steps: body.steps,
        guidance: body.guidance,
    })
}

/// `WIDTHxHEIGHT` within the model's limits.
fn parse_size(size: &str, model: &ModelSpec) -> Result<(usize, usize), ApiError> {
    let invalid = |message: String| ApiError::invalid("size", message);
    let (width, height) = size
        .split_once('x')
        .and_then(|(w, h)| {
            Some((
                w.trim().parse::<usize>().ok()?,
                h.trim().parse::<usize>().ok()?,
            ))
        })
        .ok_or_else(|| {
            invalid(format!(
                "size must be WIDTHxHEIGHT, like \"64x64\"; got {size:?}"
            ))
        })?;
    let multiple = model.size_multiple;
    for (name, value) in [("width", width), ("height", height)] {
        if value == 0 || value > model.max_side || value % multiple != 0 {
            return Err(invalid(format!(
                "{name} must be a multiple of {multiple} between {multiple} and {}; got {value}",
                model.max_side
            )));
        }
    }
    Ok((width, height))
}

async fn create_video(
    State(state): State<Arc<ServerState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<axum::Json<VideoObject>, ApiError> {
    let body = body.map_err(|rejection| ApiError {
        status: rejection.status(),
        kind: "invalid_request_error",
        message: rejection.body_text(),
        param: None,
        code: None,
    })?;
    let parsed: CreateVideo = serde_json::from_slice(&body).map_err(|error| {
        ApiError::invalid("body", format!("the body is not a valid request: {error}"))
    })?;
    let request = validate(parsed, &state.models)?;
    let job = blocking(&state, move |store| store.create(&request, None)).await?;
    Ok(axum::Json(VideoObject::from(&job)))
}

async fn find(state: &Arc<ServerState>, id: &str) -> Result<Job, ApiError> {
    if !is_valid_id(id) {
        return Err(ApiError::not_found(id));
    }
    let key = id.to_string();
    blocking(state, move |store| store.get(&key))
        .await?
        .ok_or_else(|| ApiError::not_found(id))
}

async fn get_video(
    State(state): State<Arc<ServerState>>,
    Path(id): Path<String>,
) -> Result<axum::Json<VideoObject>, ApiError> {
    let job = find(&state, &id).await?;
    Ok(axum::Json(VideoObject::from(&job)))
}

/// A page of videos.
#[derive(Serialize)]
struct VideoList {
    object: &'static str,
    data: Vec<VideoObject>,
    first_id: Option<String>,
    last_id: Option<String>,
    has_more: bool,
}

async fn list_videos(
    State(state): State<Arc<ServerState>>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<axum::Json<VideoList>, ApiError> {
    let limit = match query.get("limit") {
        None => 20,
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|limit| (1..=100).contains(limit))
            .ok_or_else(|| ApiError::invalid("limit", "limit must be between 1 and 100"))?,
    };
    let order = match query.get("order").map(String::as_str) {
        None | Some("desc") => Order::Descending,
        Some("asc") => Order::Ascending,
        Some(other) => {
            return Err(ApiError::invalid(
                "order",
                format!("order must be \"asc\" or \"desc\"; got {other:?}"),
            ));
        }
    };
    let after = query.get("after").cloned();
    if let Some(after) = &after {
        find(&state, after).await?;
    }
    let mut jobs = blocking(&state, move |store| {
        store.list(limit + 1, after.as_deref(), order)
    })
    .await?;
    let has_more = jobs.len() > limit;
    jobs.truncate(limit);
    let data: Vec<VideoObject> = jobs.iter().map(VideoObject::from).collect();
    Ok(axum::Json(VideoList {
        object: "list",
        first_id: data.first().map(|v| v.id.clone()),
        last_id: data.last().map(|v| v.id.clone()),
        data,
        has_more,
    }))
}

async fn delete_video(
    State(state): State<Arc<ServerState>>,
    Path(id): Path<String>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    find(&state, &id).await?;
    let key = id.clone();
    let deleted = blocking(&state, move |store| store.delete(&key)).await?;
    if !deleted {
        return Err(ApiError::not_found(&id));
    }
    state.artifacts.remove(&id);
    Ok(axum::Json(
        json!({"id": id, "object": "video.deleted", "deleted": true}),
    ))
}

async fn content(
    State(state): State<Arc<ServerState>>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let variant = match query.get("variant") {
        None => Variant::Video,
        Some(name) => Variant::parse(name).ok_or_else(|| {
            ApiError::invalid(
                "variant",
                format!("variant must be \"video\" or \"thumbnail\"; got {name:?}"),
            )
        })?,
    };
    let job = find(&state, &id).await?;
    if job.status != JobStatus::Completed {
        return Err(ApiError {
            status: StatusCode::CONFLICT,
            kind: "invalid_request_error",
            message: format!("video {id} is {}, not completed", job.status.as_str()),
            param: None,
            code: Some("video_not_ready"),
        });
    }
    let path = state.artifacts.path(&id, variant);
    let bytes = tokio::fs::read(&path).await.map_err(|error| ApiError {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        kind: "server_error",
        message: format!("the {variant:?} of {id} cannot be read: {error}"),
        param: None,
        code: None,
    })?;
    Ok(([(header::CONTENT_TYPE, variant.content_type())], bytes).into_response())
}

async fn ready(State(state): State<Arc<ServerState>>) -> Result<&'static str, ApiError> {
    blocking(&state, |store| store.counts()).await?;
    Ok("ready\n")
}

async fn metrics(State(state): State<Arc<ServerState>>) -> Result<String, ApiError> {
    let counts = blocking(&state, |store| store.counts()).await?;
    let mut text =
        String::from("# HELP himmel_jobs Video jobs by status.\n# TYPE himmel_jobs gauge\n");
    for (status, count) in [
        ("queued", counts.queued),
        ("in_progress", counts.in_progress),
        ("completed", counts.completed),
        ("failed", counts.failed),
    ] {
        text.push_str(&format!("himmel_jobs{{status=\"{status}\"}} {count}\n"));
    }
    text.push_str(&format!(
        "# HELP himmel_queue_depth Jobs waiting for a worker.\n# TYPE himmel_queue_depth gauge\nhimmel_queue_depth {}\n",
        counts.queued
    ));
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mini() -> ModelSpec {
        ModelSpec {
            name: "himmel-mini".into(),
            size: (64, 64),
            size_multiple: 16,
            max_side: 512,
            fps: 16.0,
            seconds: 1.0,
            max_seconds: 20.0,
        }
    }

    fn body(json: &str) -> Result<JobRequest, ApiError> {
        validate(serde_json::from_str(json).unwrap(), &[mini()])
    }

    #[test]
    fn requests_are_checked_field_by_field() {
        let request = body(r#"{"prompt": " a ball ", "seconds": "2", "size": "128x64"}"#).unwrap();
        assert_eq!(
            (
                request.prompt.as_str(),
                request.seconds,
                request.width,
                request.height
            ),
            ("a ball", 2.0, 128, 64)
        );
        for (json, param, words) in [
            (r#"{"prompt": ""}"#, "prompt", "empty"),
            (
                r#"{"prompt": "a", "size": "0x0"}"#,
                "size",
                "multiple of 16",
            ),
            (
                r#"{"prompt": "a", "size": "99999x99999"}"#,
                "size",
                "between 16 and 512",
            ),
            (r#"{"prompt": "a", "size": "big"}"#, "size", "WIDTHxHEIGHT"),
            (
                r#"{"prompt": "a", "seconds": -1}"#,
                "seconds",
                "more than 0",
            ),
            (
                r#"{"prompt": "a", "seconds": "soon"}"#,
                "seconds",
                "a number",
            ),
            (
                r#"{"prompt": "a", "model": "sora-2"}"#,
                "model",
                "unknown model",
            ),
            (
                r#"{"prompt": "a", "steps": 0}"#,
                "steps",
                "between 1 and 200",
            ),
        ] {
            let error = body(json).unwrap_err();
            assert_eq!(error.param, Some(param), "{json}");
            assert!(error.message.contains(words), "{json}: {}", error.message);
        }
    }
}
