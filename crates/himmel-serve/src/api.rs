//! The HTTP API (axum): OpenAI's Videos API (`/v1/videos`), health checks and Prometheus
//! metrics. Every request is validated before anything is queued; every error has OpenAI's
//! shape `{"error": {"message", "type", "param", "code"}}` and the fitting status.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::prelude::BASE64_STANDARD;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::artifacts::{Artifacts, UPLOAD_EXTENSIONS, Variant};
use crate::engine::ModelSpec;
use crate::job::{Direction, Edit, Job, JobRequest, JobStatus, Remix, VideoObject, is_valid_id};
use crate::store::{JobStore, Order, StoreError};
use himmel_pipeline::SkipGuidance;
use himmel_safety::Policy;

/// Longest prompt accepted, in characters.
pub const MAX_PROMPT_CHARS: usize = 4000;

/// Largest JSON body accepted, in bytes.
pub const MAX_JSON_BYTES: usize = 1 << 20;

/// Largest body accepted at all (a multipart upload), in bytes.
pub const MAX_BODY_BYTES: usize = 32 << 20;

/// What the handlers share.
pub struct ServerState {
    /// The job queue.
    pub store: Arc<dyn JobStore>,
    /// Where finished videos are.
    pub artifacts: Artifacts,
    /// The models served; the first is the default.
    pub models: Vec<ModelSpec>,
    /// Bearer keys one of which `/v1` requests must carry; none: no key needed.
    pub api_keys: Vec<String>,
    /// The prompt policy every prompt passes before it is queued.
    pub policy: Policy,
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

/// Whether `given` is one of `keys`, comparing every byte (no early exit on a mismatch).
fn key_matches(keys: &[String], given: &str) -> bool {
    keys.iter().fold(false, |found, key| {
        let same = key.len() == given.len()
            && key
                .bytes()
                .zip(given.bytes())
                .fold(0u8, |difference, (a, b)| difference | (a ^ b))
                == 0;
        found | same
    })
}

/// Refuses `/v1` requests without a configured bearer key (when keys are configured).
async fn require_key(
    State(state): State<Arc<ServerState>>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if !state.api_keys.is_empty() {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .unwrap_or_default();
        if !key_matches(&state.api_keys, given.trim()) {
            return Err(ApiError {
                status: StatusCode::UNAUTHORIZED,
                kind: "invalid_request_error",
                message: "a valid API key is needed: Authorization: Bearer KEY".into(),
                param: None,
                code: Some("invalid_api_key"),
            });
        }
    }
    Ok(next.run(request).await)
}

/// The web page: prompt and options, uploads, the queue with live progress and previews, a
/// player and downloads (plain HTML and JavaScript, embedded in the binary).
const PAGE: &str = include_str!("page.html");

/// The routes, with `state`.
pub fn router(state: Arc<ServerState>) -> Router {
    let api = Router::new()
        .route("/v1/videos", get(list_videos).post(create_video))
        .route("/v1/videos/{id}", get(get_video).delete(delete_video))
        .route("/v1/videos/{id}/content", get(content))
        .route("/v1/videos/{id}/remix", post(remix))
        .route("/v1/videos/{id}/events", get(events))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_key));
    Router::new()
        .merge(api)
        .route("/", get(|| async { Html(PAGE) }))
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
    shift: Option<f64>,
    boundary: Option<f64>,
    expert_guidance: Option<f64>,
    /// Skip guidance's scale and block, each falling back to the model's.
    skip_guidance: Option<f64>,
    skip_layer: Option<usize>,
    negative_prompt: Option<String>,
    /// Himmel's editing tasks on finished videos (JSON bodies).
    #[serde(rename = "loop")]
    seamless_loop: Option<bool>,
    extend: Option<ExtendField>,
    connect: Option<ConnectField>,
    /// How much to change an uploaded clip (video to video), 0..=1.
    strength: Option<f64>,
}

/// `"extend": {"video_id": ..., "direction": "forward"}` (a finished video), or
/// `"extend": "forward"` (the uploaded clip).
#[derive(Deserialize)]
#[serde(untagged)]
enum ExtendField {
    Reference(Direction),
    Video {
        video_id: String,
        direction: Option<Direction>,
    },
}

/// `"connect": {"from_video_id": ..., "to_video_id": ...}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConnectField {
    from_video_id: String,
    to_video_id: String,
}

/// Checks a request against the served models and the prompt policy, and makes the job
/// request.
fn validate(
    body: CreateVideo,
    models: &[ModelSpec],
    policy: &Policy,
) -> Result<JobRequest, ApiError> {
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
    if let Err(refusal) = policy.check(&prompt) {
        return Err(
            ApiError::invalid("prompt", refusal.to_string()).with_code("moderation_blocked")
        );
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
    for (param, guidance) in [
        ("guidance", body.guidance),
        ("expert_guidance", body.expert_guidance),
    ] {
        if let Some(guidance) = guidance
            && !(guidance.is_finite() && (0.0..=30.0).contains(&guidance))
        {
            return Err(ApiError::invalid(
                param,
                format!("{param} must be between 0 and 30"),
            ));
        }
    }
    if let Some(shift) = body.shift
        && !(shift.is_finite() && shift > 0.0 && shift <= 100.0)
    {
        return Err(ApiError::invalid(
            "shift",
            "shift must be more than 0 and at most 100",
        ));
    }
    if let Some(boundary) = body.boundary
        && !(0.0..=1.0).contains(&boundary)
    {
        return Err(ApiError::invalid(
            "boundary",
            "boundary must be a noise level from 0 to 1",
        ));
    }
    if !model.high_noise_expert
        && let Some(param) = [
            ("boundary", body.boundary),
            ("expert_guidance", body.expert_guidance),
        ]
        .into_iter()
        .find_map(|(param, value)| value.map(|_| param))
    {
        return Err(ApiError::invalid(
            param,
            format!(
                "{param} needs a model with a high-noise expert; {} has none",
                model.name
            ),
        ));
    }
    let skip_guidance = skip_guidance(body.skip_guidance, body.skip_layer, model)?;
    let edit = match (
        body.seamless_loop.unwrap_or(false),
        body.extend,
        body.connect,
    ) {
        (false, None, None) => None,
        (true, None, None) => Some(Edit::Loop),
        (
            false,
            Some(ExtendField::Video {
                video_id,
                direction,
            }),
            None,
        ) => Some(Edit::Extend {
            video_id,
            direction: direction.unwrap_or(Direction::Forward),
        }),
        (false, Some(ExtendField::Reference(direction)), None) => {
            Some(Edit::ExtendReference { direction })
        }
        (false, None, Some(connect)) => Some(Edit::Connect {
            from_video_id: connect.from_video_id,
            to_video_id: connect.to_video_id,
        }),
        _ => {
            return Err(ApiError::invalid(
                "loop",
                "ask for at most one of loop, extend and connect",
            ));
        }
    };
    if let Some(strength) = body.strength
        && !(0.0..=1.0).contains(&strength)
    {
        return Err(ApiError::invalid(
            "strength",
            "strength must be between 0 and 1",
        ));
    }
    Ok(JobRequest {
        edit,
        strength: body.strength,
        prompt,
        negative_prompt: body.negative_prompt.unwrap_or_default(),
        model: model.name.clone(),
        width,
        height,
        seconds,
        seed: body.seed.unwrap_or_else(rand::random),
        steps: body.steps,
        guidance: body.guidance,
        shift: body.shift,
        boundary: body.boundary,
        expert_guidance: body.expert_guidance,
        skip_guidance,
        input_reference: None,
        remix: None,
    })
}

/// A request's skip guidance `scale` and `layer`, the model's filling in what is left out;
/// `None` (the model's own) when neither is given.
fn skip_guidance(
    scale: Option<f64>,
    layer: Option<usize>,
    model: &ModelSpec,
) -> Result<Option<SkipGuidance>, ApiError> {
    if scale.is_none() && layer.is_none() {
        return Ok(None);
    }
    let param = if layer.is_some() {
        "skip_layer"
    } else {
        "skip_guidance"
    };
    let Some(layers) = model.skip_guidance_layers else {
        return Err(ApiError::invalid(
            param,
            format!(
                "{param} needs a himmel-mini model; {} takes no skip guidance",
                model.name
            ),
        ));
    };
    if let Some(scale) = scale
        && !(scale.is_finite() && (0.0..=30.0).contains(&scale))
    {
        return Err(ApiError::invalid(
            "skip_guidance",
            "skip_guidance must be between 0 and 30",
        ));
    }
    let skip = SkipGuidance::overriding(model.skip_guidance, scale, layer)
        .map_err(|reason| ApiError::invalid(param, reason))?;
    if let Some(skip) = skip {
        skip.check(layers)
            .map_err(|reason| ApiError::invalid(param, reason))?;
    }
    Ok(skip)
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

fn too_large(limit: usize) -> ApiError {
    ApiError {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        kind: "invalid_request_error",
        message: format!("the body is larger than {limit} bytes"),
        param: None,
        code: Some("body_too_large"),
    }
}

fn rejected(rejection: impl IntoResponse + std::fmt::Display) -> ApiError {
    let message = rejection.to_string();
    let status = rejection.into_response().status();
    ApiError {
        status,
        kind: "invalid_request_error",
        message,
        param: None,
        code: None,
    }
}

/// A JSON body as a [`CreateVideo`].
fn parse_json(body: &[u8]) -> Result<CreateVideo, ApiError> {
    if body.len() > MAX_JSON_BYTES {
        return Err(too_large(MAX_JSON_BYTES));
    }
    serde_json::from_slice(body).map_err(|error| {
        ApiError::invalid("body", format!("the body is not a valid request: {error}"))
    })
}

/// A multipart body: text fields as a [`CreateVideo`], and the `input_reference` file with
/// its extension.
async fn parse_multipart(
    mut multipart: Multipart,
) -> Result<(CreateVideo, Option<(Bytes, String)>), ApiError> {
    let mut fields = serde_json::Map::new();
    let mut upload = None;
    while let Some(field) = multipart.next_field().await.map_err(rejected)? {
        let name = field.name().unwrap_or_default().to_string();
        if name == "input_reference" {
            let file_name = field.file_name().unwrap_or_default().to_lowercase();
            let extension = file_name.rsplit_once('.').map(|(_, e)| e.to_string());
            let extension = extension
                .filter(|e| UPLOAD_EXTENSIONS.contains(&e.as_str()))
                .ok_or_else(|| {
                    ApiError::invalid(
                        "input_reference",
                        format!(
                            "input_reference must be an image or a clip ({}); got {file_name:?}",
                            UPLOAD_EXTENSIONS.join(", ")
                        ),
                    )
                })?;
            upload = Some((field.bytes().await.map_err(rejected)?, extension));
            continue;
        }
        let text = field.text().await.map_err(rejected)?;
        // Numbers arrive as text in forms.
        let value = match name.as_str() {
            "seed" | "steps" | "guidance" | "shift" | "boundary" | "expert_guidance"
            | "skip_guidance" | "skip_layer" | "loop" | "strength" => {
                serde_json::from_str(&text).unwrap_or(Value::String(text))
            }
            _ => Value::String(text),
        };
        fields.insert(name, value);
    }
    let body = serde_json::from_value(Value::Object(fields)).map_err(|error| {
        ApiError::invalid("body", format!("the form is not a valid request: {error}"))
    })?;
    Ok((body, upload))
}

async fn create_video(
    State(state): State<Arc<ServerState>>,
    request: Request,
) -> Result<axum::Json<VideoObject>, ApiError> {
    let multipart = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("multipart/form-data"));
    let (body, upload) = if multipart {
        parse_multipart(
            Multipart::from_request(request, &())
                .await
                .map_err(rejected)?,
        )
        .await?
    } else {
        let bytes = Bytes::from_request(request, &()).await.map_err(rejected)?;
        (parse_json(&bytes)?, None)
    };
    let mut job_request = validate(body, &state.models, &state.policy)?;
    if let Some((bytes, extension)) = upload {
        let artifacts = state.artifacts.clone();
        let saved = tokio::task::spawn_blocking(move || artifacts.save_upload(&bytes, &extension))
            .await
            .map_err(|error| ApiError::invalid("input_reference", error.to_string()))?;
        let name = saved.map_err(|error| {
            ApiError::invalid(
                "input_reference",
                format!("input_reference is not an image: {error}"),
            )
        })?;
        job_request.input_reference = Some(name);
    } else if matches!(job_request.edit, Some(Edit::ExtendReference { .. })) {
        return Err(ApiError::invalid(
            "extend",
            "extending the uploaded clip needs an input_reference clip",
        ));
    }
    if let Some(edit) = &job_request.edit {
        for id in edit.videos() {
            let video = find(&state, id).await?;
            if video.status != JobStatus::Completed {
                return Err(ApiError::invalid(
                    "video_id",
                    format!("video {id} is {}, not completed", video.status.as_str()),
                ));
            }
        }
    }
    let job = blocking(&state, move |store| store.create(&job_request, None)).await?;
    Ok(axum::Json(VideoObject::from(&job)))
}

/// The body of `POST /v1/videos/{id}/remix`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RemixVideo {
    prompt: String,
    /// How much to change the video, 0..=1.
    strength: Option<f64>,
}

/// How much a remix changes the video when the request does not say.
const DEFAULT_REMIX_STRENGTH: f64 = 0.7;

async fn remix(
    State(state): State<Arc<ServerState>>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<axum::Json<VideoObject>, ApiError> {
    let body = body.map_err(rejected)?;
    if body.len() > MAX_JSON_BYTES {
        return Err(too_large(MAX_JSON_BYTES));
    }
    let remix: RemixVideo = serde_json::from_slice(&body).map_err(|error| {
        ApiError::invalid("body", format!("the body is not a valid remix: {error}"))
    })?;
    let original = find(&state, &id).await?;
    if original.status != JobStatus::Completed {
        return Err(ApiError::invalid(
            "video_id",
            format!(
                "video {id} is {}; only completed videos can be remixed",
                original.status.as_str()
            ),
        ));
    }
    let strength = remix.strength.unwrap_or(DEFAULT_REMIX_STRENGTH);
    if !(0.0..=1.0).contains(&strength) {
        return Err(ApiError::invalid(
            "strength",
            "strength must be between 0 and 1",
        ));
    }
    let models = &state.models;
    let policy = &state.policy;
    let checked = validate(
        CreateVideo {
            prompt: remix.prompt,
            model: Some(original.request.model.clone()),
            seconds: Some(Seconds::Number(original.request.seconds)),
            size: Some(format!(
                "{}x{}",
                original.request.width, original.request.height
            )),
            seed: Some(original.request.seed),
            steps: original.request.steps,
            guidance: original.request.guidance,
            shift: original.request.shift,
            boundary: original.request.boundary,
            expert_guidance: original.request.expert_guidance,
            skip_guidance: original.request.skip_guidance.map(|skip| skip.scale),
            skip_layer: original.request.skip_guidance.map(|skip| skip.layer),
            negative_prompt: Some(original.request.negative_prompt.clone()),
            seamless_loop: None,
            extend: None,
            connect: None,
            strength: None,
        },
        models,
        policy,
    )?;
    let request = JobRequest {
        remix: Some(Remix {
            video_id: id.clone(),
            strength,
        }),
        ..checked
    };
    let job = blocking(&state, move |store| store.create(&request, Some(&id))).await?;
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
    let job = find(&state, &id).await?;
    let key = id.clone();
    let deleted = blocking(&state, move |store| store.delete(&key)).await?;
    if !deleted {
        return Err(ApiError::not_found(&id));
    }
    state.artifacts.remove(&id);
    if let Some(upload) = &job.request.input_reference {
        // Already gone is fine.
        let _ = std::fs::remove_file(state.artifacts.upload_path(upload));
    }
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
                format!(
                    "variant must be \"video\", \"thumbnail\", \"spritesheet\" or \"preview\"; got {name:?}"
                ),
            )
        })?,
    };
    let job = find(&state, &id).await?;
    if job.status != JobStatus::Completed && variant != Variant::Preview {
        return Err(ApiError {
            status: StatusCode::CONFLICT,
            kind: "invalid_request_error",
            message: format!("video {id} is {}, not completed", job.status.as_str()),
            param: None,
            code: Some("video_not_ready"),
        });
    }
    let path = state.artifacts.path(&id, variant);
    let bytes = tokio::fs::read(&path)
        .await
        .map_err(|error| match error.kind() {
            std::io::ErrorKind::NotFound if variant == Variant::Preview => ApiError {
                status: StatusCode::NOT_FOUND,
                kind: "invalid_request_error",
                message: format!("video {id} has no preview yet"),
                param: None,
                code: Some("not_found"),
            },
            _ => ApiError {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                kind: "server_error",
                message: format!("the {variant:?} of {id} cannot be read: {error}"),
                param: None,
                code: None,
            },
        })?;
    Ok(([(header::CONTENT_TYPE, variant.content_type())], bytes).into_response())
}

/// How often the event stream looks for news.
const EVENT_POLL: std::time::Duration = std::time::Duration::from_millis(250);

/// What an event stream has sent so far.
struct Watch {
    state: Arc<ServerState>,
    id: String,
    last: Option<VideoObject>,
    last_preview: Option<std::time::SystemTime>,
    pending: std::collections::VecDeque<Event>,
    finished: bool,
}

impl Watch {
    /// Looks for news and queues it as events; marks the stream finished at the end.
    async fn poll(&mut self) {
        let key = self.id.clone();
        let job = match blocking(&self.state, move |store| store.get(&key)).await {
            Ok(Some(job)) => job,
            Ok(None) => {
                self.pending
                    .push_back(Event::default().event("deleted").data(&self.id));
                self.finished = true;
                return;
            }
            Err(error) => {
                self.pending
                    .push_back(Event::default().event("error").data(error.message));
                self.finished = true;
                return;
            }
        };
        let preview = self.state.artifacts.path(&self.id, Variant::Preview);
        if let Ok(modified) = std::fs::metadata(&preview).and_then(|m| m.modified())
            && self.last_preview != Some(modified)
        {
            self.last_preview = Some(modified);
            let url = format!("/v1/videos/{}/content?variant=preview", self.id);
            // The frames themselves too, so a client needs no second request (a preview being
            // replaced just then is sent next time).
            if let Ok(png) = tokio::fs::read(&preview).await {
                let image = format!("data:image/png;base64,{}", BASE64_STANDARD.encode(png));
                self.pending.push_back(
                    Event::default()
                        .event("preview")
                        .data(json!({"url": url, "image": image}).to_string()),
                );
            }
        }
        let video = VideoObject::from(&job);
        if self.last.as_ref() != Some(&video) {
            let data = serde_json::to_string(&video).unwrap_or_default();
            self.pending
                .push_back(Event::default().event("progress").data(data));
            self.last = Some(video);
        }
        if matches!(job.status, JobStatus::Completed | JobStatus::Failed) {
            self.finished = true;
        }
    }
}

/// Server-sent events for one video: `progress` (the video object, whenever it changes),
/// `preview` (the newest preview strip, as a PNG data URL and where to fetch it), and
/// `deleted`; the stream ends when the
/// video is completed, failed or deleted.
async fn events(
    State(state): State<Arc<ServerState>>,
    Path(id): Path<String>,
) -> Result<Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>>, ApiError> {
    find(&state, &id).await?;
    let watch = Watch {
        state,
        id,
        last: None,
        last_preview: None,
        pending: Default::default(),
        finished: false,
    };
    let stream = futures_util::stream::unfold(watch, |mut watch| async move {
        loop {
            if let Some(event) = watch.pending.pop_front() {
                return Some((Ok(event), watch));
            }
            if watch.finished {
                return None;
            }
            if watch.last.is_some() {
                tokio::time::sleep(EVENT_POLL).await;
            }
            watch.poll().await;
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
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
    let timing = counts.timing;
    text.push_str(&format!(
        "# HELP himmel_job_run_seconds Time from lease to finished file of completed jobs.\n\
         # TYPE himmel_job_run_seconds summary\n\
         himmel_job_run_seconds_sum {}\nhimmel_job_run_seconds_count {}\n\
         # HELP himmel_denoise_step_seconds Time of one denoising step of completed jobs.\n\
         # TYPE himmel_denoise_step_seconds summary\n\
         himmel_denoise_step_seconds_sum {}\nhimmel_denoise_step_seconds_count {}\n",
        timing.run_seconds, counts.completed, timing.denoise_seconds, timing.steps
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
            temporal_factor: 4,
            seconds: 1.0,
            max_seconds: 20.0,
            high_noise_expert: true,
            skip_guidance_layers: Some(6),
            skip_guidance: Some(SkipGuidance {
                scale: 1.0,
                layer: 2,
            }),
        }
    }

    /// A Wan 2.1 model: no high-noise expert.
    fn wan() -> ModelSpec {
        ModelSpec {
            name: "wan".into(),
            high_noise_expert: false,
            skip_guidance_layers: None,
            skip_guidance: None,
            ..mini()
        }
    }

    fn body(json: &str) -> Result<JobRequest, ApiError> {
        validate(
            serde_json::from_str(json).unwrap(),
            &[mini(), wan()],
            &Policy::standard(),
        )
    }

    #[test]
    fn keys_match_exactly() {
        let keys = vec!["secret-one".to_string(), "secret-two".to_string()];
        assert!(key_matches(&keys, "secret-two"));
        assert!(!key_matches(&keys, "secret-tw"));
        assert!(!key_matches(&keys, ""));
        assert!(!key_matches(&[], "anything"));
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
        let sampler =
            body(r#"{"prompt": "a", "shift": 3, "boundary": 0.9, "expert_guidance": 2}"#).unwrap();
        assert_eq!(
            (sampler.shift, sampler.boundary, sampler.expert_guidance),
            (Some(3.0), Some(0.9), Some(2.0))
        );
        let skip = |json| body(json).unwrap().skip_guidance;
        assert_eq!(skip(r#"{"prompt": "a"}"#), None);
        assert_eq!(
            skip(r#"{"prompt": "a", "skip_guidance": 2.5}"#),
            Some(SkipGuidance {
                scale: 2.5,
                layer: 2
            })
        );
        assert_eq!(
            skip(r#"{"prompt": "a", "skip_layer": 5}"#),
            Some(SkipGuidance {
                scale: 1.0,
                layer: 5
            })
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
            (r#"{"prompt": "a", "shift": 0}"#, "shift", "more than 0"),
            (
                r#"{"prompt": "a", "boundary": 1.5}"#,
                "boundary",
                "from 0 to 1",
            ),
            (
                r#"{"prompt": "a", "expert_guidance": -1}"#,
                "expert_guidance",
                "between 0 and 30",
            ),
            (
                r#"{"prompt": "a", "model": "wan", "boundary": 0.9}"#,
                "boundary",
                "wan has none",
            ),
            (
                r#"{"prompt": "a", "model": "wan", "expert_guidance": 3}"#,
                "expert_guidance",
                "high-noise expert",
            ),
            (
                r#"{"prompt": "a", "skip_guidance": -1}"#,
                "skip_guidance",
                "between 0 and 30",
            ),
            (
                r#"{"prompt": "a", "skip_layer": 6}"#,
                "skip_layer",
                "6 blocks",
            ),
            (
                r#"{"prompt": "a", "model": "wan", "skip_guidance": 1}"#,
                "skip_guidance",
                "wan takes no skip guidance",
            ),
        ] {
            let error = body(json).unwrap_err();
            assert_eq!(error.param, Some(param), "{json}");
            assert!(error.message.contains(words), "{json}: {}", error.message);
        }
    }
}
