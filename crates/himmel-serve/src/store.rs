//! [`JobStore`]: the durable job queue behind one trait. Workers lease jobs for a while and
//! renew the lease with heartbeats; a job whose worker died is leased again once its lease
//! has expired, at most [`QueueSettings::max_attempts`] times, then it fails with the reason.

use std::time::Duration;

use crate::job::{Job, JobError, JobRequest, JobStatus};

/// Why the store could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The queue holds as many waiting jobs as it may.
    #[error("the queue is full ({limit} jobs waiting); try again later")]
    QueueFull {
        /// Most waiting jobs.
        limit: usize,
    },
    /// The database failed.
    #[error("job store: {0}")]
    Database(String),
}

/// Limits of the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueSettings {
    /// Most jobs waiting at once; more are refused with [`StoreError::QueueFull`].
    pub max_queued: usize,
    /// How often a job may be leased before it fails.
    pub max_attempts: u32,
}

impl Default for QueueSettings {
    fn default() -> Self {
        Self {
            max_queued: 64,
            max_attempts: 3,
        }
    }
}

/// Newest or oldest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Oldest first.
    Ascending,
    /// Newest first.
    Descending,
}

/// Jobs by status and the time completed jobs took, for metrics and back-pressure.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Counts {
    /// Waiting.
    pub queued: usize,
    /// Being generated.
    pub in_progress: usize,
    /// Done.
    pub completed: usize,
    /// Failed.
    pub failed: usize,
    /// What the completed jobs took, added up.
    pub timing: Timing,
}

impl Counts {
    /// Records `count` jobs of the stored status `status` (unknown names are ignored).
    pub fn record(&mut self, status: &str, count: usize) {
        match JobStatus::parse(status) {
            Some(JobStatus::Queued) => self.queued = count,
            Some(JobStatus::InProgress) => self.in_progress = count,
            Some(JobStatus::Completed) => self.completed = count,
            Some(JobStatus::Failed) => self.failed = count,
            None => {}
        }
    }
}

/// Why a job failed after `attempts` leases whose workers all stopped.
pub(crate) fn worker_lost(attempts: impl std::fmt::Display) -> String {
    format!("the job was started {attempts} times and its worker stopped each time")
}

/// How long a job's generation took (or, in [`Counts`], many jobs' added up).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Timing {
    /// Seconds from lease to finished file.
    pub run_seconds: f64,
    /// Denoising steps taken.
    pub steps: u64,
    /// Seconds spent in them.
    pub denoise_seconds: f64,
}

/// What a heartbeat learns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lease {
    /// The worker still holds the job.
    Held,
    /// The job was deleted or leased by another worker: stop working on it.
    Lost,
}

/// The durable queue of video jobs.
pub trait JobStore: Send + Sync {
    /// Queues a new job (`remixed_from` names the job it re-does).
    fn create(&self, request: &JobRequest, remixed_from: Option<&str>) -> Result<Job, StoreError>;
    /// The job `id`, if it exists.
    fn get(&self, id: &str) -> Result<Option<Job>, StoreError>;
    /// Up to `limit` jobs in creation order, starting after the job `after`.
    fn list(&self, limit: usize, after: Option<&str>, order: Order)
    -> Result<Vec<Job>, StoreError>;
    /// Deletes the job `id`; a worker holding it loses its lease. Whether it existed.
    fn delete(&self, id: &str) -> Result<bool, StoreError>;
    /// Leases the oldest waiting job (or one whose lease expired) to `worker` for `lease`.
    /// A job leased too often fails instead, and the next one is tried.
    fn lease(&self, worker: &str, lease: Duration) -> Result<Option<Job>, StoreError>;
    /// Renews `worker`'s lease on `id` for `lease` and records its progress.
    fn heartbeat(
        &self,
        id: &str,
        worker: &str,
        progress: u8,
        lease: Duration,
    ) -> Result<Lease, StoreError>;
    /// Marks the job done, recording what it took; `Lost` if the worker no longer held it.
    fn complete(&self, id: &str, worker: &str, timing: &Timing) -> Result<Lease, StoreError>;
    /// Marks the job failed with `error`.
    fn fail(&self, id: &str, worker: &str, error: &JobError) -> Result<Lease, StoreError>;
    /// Jobs by status.
    fn counts(&self) -> Result<Counts, StoreError>;
}

/// The current time in Unix seconds.
pub(crate) fn now_seconds() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs() as i64)
}

/// The current time in Unix milliseconds (leases need finer times than seconds).
pub(crate) fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as i64)
}
