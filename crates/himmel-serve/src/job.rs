//! A video job: what was asked for ([`JobRequest`]), where it stands ([`Job`]), and the video
//! object of OpenAI's Videos API that clients see ([`VideoObject`]).

use himmel_pipeline::SkipGuidance;
use serde::{Deserialize, Serialize};

/// Where a job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Waiting for a worker.
    Queued,
    /// A worker holds its lease and is generating.
    InProgress,
    /// The video is ready.
    Completed,
    /// It could not be made; the job's error says why.
    Failed,
}

impl JobStatus {
    /// The name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::InProgress => "in_progress",
            Self::Completed => "completed",
            Self::Failed => "failed",
        }
    }

    /// The status a stored name stands for.
    pub fn parse(name: &str) -> Option<Self> {
        [
            Self::Queued,
            Self::InProgress,
            Self::Completed,
            Self::Failed,
        ]
        .into_iter()
        .find(|status| status.as_str() == name)
    }
}

/// What a job must generate, validated before it is queued.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRequest {
    /// What the video shows.
    pub prompt: String,
    /// What it should not show.
    #[serde(default)]
    pub negative_prompt: String,
    /// The model's name.
    pub model: String,
    /// Frame width in pixels.
    pub width: usize,
    /// Frame height in pixels.
    pub height: usize,
    /// Duration in seconds.
    pub seconds: f64,
    /// Seed of the noise (and of the scene choices a prompt leaves open).
    pub seed: u64,
    /// Denoising steps; the model's default when absent.
    pub steps: Option<usize>,
    /// Guidance scale; the model's default when absent.
    pub guidance: Option<f64>,
    /// Flow shift of the sampler's steps; the model's default when absent.
    #[serde(default)]
    pub shift: Option<f64>,
    /// Noise level (0 to 1) from which the model's high-noise expert denoises; the model's
    /// boundary when absent. Only for models with an expert.
    #[serde(default)]
    pub boundary: Option<f64>,
    /// Guidance scale of the high-noise expert's steps; the model's (else `guidance`) when
    /// absent. Only for models with an expert.
    #[serde(default)]
    pub expert_guidance: Option<f64>,
    /// Skip guidance, the model's own filling in a half the request left out; the model's when
    /// absent. Only for models that take it (himmel-mini).
    #[serde(default)]
    pub skip_guidance: Option<SkipGuidance>,
    /// An uploaded image or clip (file name under the data directory's uploads): an image
    /// becomes the first frame; a clip is re-styled (video to video with `strength`) or, with
    /// [`Edit::ExtendReference`], extended.
    #[serde(default)]
    pub input_reference: Option<String>,
    /// How much video to video changes an uploaded clip, 0..=1.
    #[serde(default)]
    pub strength: Option<f64>,
    /// A finished video to re-make under this prompt (a remix), and how much to change it.
    #[serde(default)]
    pub remix: Option<Remix>,
    /// An editing task on finished videos instead of a new clip.
    #[serde(default)]
    pub edit: Option<Edit>,
}

/// Himmel's editing tasks, on finished videos of the same server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Edit {
    /// A seamless loop of the request's length.
    Loop,
    /// The video `video_id` and the request's seconds more, after it or before it.
    Extend {
        /// The finished video to extend.
        video_id: String,
        /// `forward` or `backward`.
        direction: Direction,
    },
    /// The uploaded clip (`input_reference`) and the request's seconds more.
    ExtendReference {
        /// `forward` or `backward`.
        direction: Direction,
    },
    /// A transition of the request's seconds from the end of one video to the start of
    /// another.
    Connect {
        /// The video the transition starts from.
        from_video_id: String,
        /// The video it arrives at.
        to_video_id: String,
    },
}

impl Edit {
    /// The finished videos the task starts from.
    pub fn videos(&self) -> Vec<&str> {
        match self {
            Self::Loop | Self::ExtendReference { .. } => Vec::new(),
            Self::Extend { video_id, .. } => vec![video_id],
            Self::Connect {
                from_video_id,
                to_video_id,
            } => vec![from_video_id, to_video_id],
        }
    }
}

/// Which way an extension grows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// New frames after the video.
    Forward,
    /// New frames before it.
    Backward,
}

/// A video to re-make under a new prompt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Remix {
    /// The finished video's job id.
    pub video_id: String,
    /// 0 keeps it, 1 ignores it.
    pub strength: f64,
}

/// Why a job failed, as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobError {
    /// A short machine-readable code.
    pub code: String,
    /// What went wrong, in words.
    pub message: String,
}

/// A job as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// `video_` and 24 hexadecimal digits.
    pub id: String,
    /// Where it stands.
    pub status: JobStatus,
    /// Percent done, 0..=100.
    pub progress: u8,
    /// Unix seconds when it was created.
    pub created_at: i64,
    /// Unix seconds when it completed or failed.
    pub completed_at: Option<i64>,
    /// What to generate.
    pub request: JobRequest,
    /// Why it failed.
    pub error: Option<JobError>,
    /// Times a worker has leased it.
    pub attempts: u32,
    /// The job this one re-does with a new prompt.
    pub remixed_from: Option<String>,
}

/// The `video` object of OpenAI's Videos API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VideoObject {
    /// The job's id.
    pub id: String,
    /// Always `"video"`.
    pub object: String,
    /// `queued`, `in_progress`, `completed` or `failed`.
    pub status: JobStatus,
    /// Percent done.
    pub progress: u8,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds, once finished.
    pub completed_at: Option<i64>,
    /// Unix seconds after which the video may be deleted (none: kept until deleted).
    pub expires_at: Option<i64>,
    /// The model's name.
    pub model: String,
    /// Duration in seconds, as a string.
    pub seconds: String,
    /// `WIDTHxHEIGHT`.
    pub size: String,
    /// The prompt.
    pub prompt: String,
    /// Why it failed.
    pub error: Option<JobError>,
    /// The video this one remixes.
    pub remixed_from_video_id: Option<String>,
}

impl From<&Job> for VideoObject {
    fn from(job: &Job) -> Self {
        let request = &job.request;
        Self {
            id: job.id.clone(),
            object: "video".into(),
            status: job.status,
            progress: job.progress,
            created_at: job.created_at,
            completed_at: job.completed_at,
            expires_at: None,
            model: request.model.clone(),
            seconds: format_seconds(request.seconds),
            size: format!("{}x{}", request.width, request.height),
            prompt: request.prompt.clone(),
            error: job.error.clone(),
            remixed_from_video_id: job.remixed_from.clone(),
        }
    }
}

/// Seconds as the API writes them: `"4"`, or `"2.5"`.
fn format_seconds(seconds: f64) -> String {
    if seconds.fract() == 0.0 {
        format!("{seconds:.0}")
    } else {
        seconds.to_string()
    }
}

/// A new job id: `video_` and 24 random hexadecimal digits.
pub fn new_id() -> String {
    use rand::Rng;
    let bytes: [u8; 12] = rand::rng().random();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("video_{hex}")
}

/// Whether `id` has the shape of a job id (so it can name files safely).
pub fn is_valid_id(id: &str) -> bool {
    id.strip_prefix("video_").is_some_and(|hex| {
        hex.len() == 24
            && hex
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_safe_file_names() {
        let id = new_id();
        assert!(is_valid_id(&id), "{id}");
        for bad in [
            "../../etc/passwd",
            "video_",
            "video_XYZ",
            "video_0123456789abcdef0123456/",
        ] {
            assert!(!is_valid_id(bad), "{bad}");
        }
        assert_ne!(new_id(), new_id());
    }

    #[test]
    fn statuses_and_seconds_read_as_the_api_writes_them() {
        for status in [
            JobStatus::Queued,
            JobStatus::InProgress,
            JobStatus::Completed,
            JobStatus::Failed,
        ] {
            assert_eq!(JobStatus::parse(status.as_str()), Some(status));
        }
        assert_eq!(format_seconds(4.0), "4");
        assert_eq!(format_seconds(2.5), "2.5");
    }
}
