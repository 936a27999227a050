//! [`Worker`]: leases jobs from the store one at a time and runs them with an engine whose
//! model stays loaded. While a job runs, a heartbeat renews the lease and records progress;
//! when the job is deleted (or leased by another worker after a lost lease) the heartbeat
//! notices and the work is cancelled at the next window.

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use himmel_core::{Progress, ProgressEvent};
use himmel_safety::Marks;
use himmel_safety::provenance::{Claim, Credentials, Ingredient, Role};

use crate::artifacts::{Artifacts, Variant};
use crate::engine::{Engine, JobInputs, Output};
use crate::job::{Edit, JobError, JobRequest};
use crate::store::{JobStore, Lease, StoreError, Timing};

/// How long a lease lasts without a heartbeat.
pub const LEASE: Duration = Duration::from_secs(30);

/// Runs jobs from a store.
pub struct Worker {
    store: Arc<dyn JobStore>,
    engine: Box<dyn Engine>,
    artifacts: Artifacts,
    name: String,
    lease: Duration,
    /// What signs the videos' C2PA manifests; none: no manifest.
    credentials: Option<Credentials>,
}

/// Counts denoising steps into a percentage the heartbeat reads, and writes previews.
struct JobProgress<'a> {
    id: &'a str,
    artifacts: &'a Artifacts,
    /// When the last preview was written.
    last_preview: Cell<Option<Instant>>,
    planned: u64,
    /// Steps of the denoising stages already finished.
    finished: Cell<u64>,
    /// Steps of the current denoising stage.
    current: Cell<u64>,
    in_denoise: Cell<bool>,
    percent: Arc<AtomicU8>,
    /// When the current denoising stage began.
    denoise_started: Cell<Option<Instant>>,
    /// Seconds of the finished denoising stages.
    denoise_seconds: Cell<f64>,
}

/// Least time between two previews written.
const PREVIEW_INTERVAL: Duration = Duration::from_millis(500);

impl Progress for JobProgress<'_> {
    fn wants_previews(&self) -> bool {
        true
    }

    fn event(&self, event: ProgressEvent<'_>) {
        match event {
            ProgressEvent::Preview { frames } => {
                let due = self
                    .last_preview
                    .get()
                    .is_none_or(|last| last.elapsed() >= PREVIEW_INTERVAL);
                // A preview that cannot be written is skipped: the video matters, not it.
                if due && self.artifacts.write_preview(self.id, frames).is_ok() {
                    self.last_preview.set(Some(Instant::now()));
                }
            }
            ProgressEvent::StageStarted { stage, .. } => {
                self.in_denoise.set(stage == "denoise");
                self.current.set(0);
                self.denoise_started
                    .set((stage == "denoise").then(Instant::now));
            }
            ProgressEvent::Step { done } if self.in_denoise.get() => {
                self.current.set(done);
                let steps = self.finished.get() + done;
                // 100 is for a finished video.
                let percent = (steps * 99 / self.planned.max(1)).min(99) as u8;
                self.percent.store(percent, Ordering::Relaxed);
            }
            ProgressEvent::StageFinished if self.in_denoise.get() => {
                self.finished.set(self.finished.get() + self.current.get());
                self.in_denoise.set(false);
                if let Some(started) = self.denoise_started.take() {
                    let seconds = started.elapsed().as_secs_f64();
                    self.denoise_seconds
                        .set(self.denoise_seconds.get() + seconds);
                }
            }
            _ => {}
        }
    }
}

impl Worker {
    /// A worker named after this host and process.
    pub fn new(store: Arc<dyn JobStore>, engine: Box<dyn Engine>, artifacts: Artifacts) -> Self {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "host".into());
        Self {
            store,
            engine,
            artifacts,
            name: format!("{host}-{}-{}", std::process::id(), crate::job::new_id()),
            lease: LEASE,
            credentials: None,
        }
    }

    /// Signs the videos' C2PA manifests with `credentials` (none: no manifest).
    pub fn with_credentials(mut self, credentials: Option<Credentials>) -> Self {
        self.credentials = credentials;
        self
    }

    /// Uses leases of `lease` instead of [`LEASE`] (tests of lost workers).
    pub fn with_lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// Runs jobs until `stop` is set, polling every `idle` while the queue is empty. A
    /// failing store (a database restarting, say) is reported through `report` and retried,
    /// waiting longer each time up to [`LEASE`]; a job it held is taken over when its lease
    /// ends.
    pub fn run(&mut self, stop: &AtomicBool, idle: Duration, report: &dyn Fn(&StoreError)) {
        let mut wait = idle;
        while !stop.load(Ordering::Relaxed) {
            match self.run_one() {
                Ok(true) => wait = idle,
                Ok(false) => {
                    wait = idle;
                    std::thread::sleep(idle);
                }
                Err(error) => {
                    report(&error);
                    std::thread::sleep(wait);
                    wait = (wait * 2).min(LEASE);
                }
            }
        }
    }

    /// Leases and runs one job; whether there was one.
    pub fn run_one(&mut self) -> Result<bool, StoreError> {
        let Some(job) = self.store.lease(&self.name, self.lease)? else {
            return Ok(false);
        };
        let started = Instant::now();
        let percent = Arc::new(AtomicU8::new(0));
        let cancelled = AtomicBool::new(false);
        let (done, finished) = mpsc::channel::<()>();
        let outcome = std::thread::scope(|scope| {
            let holder = LeaseHolder {
                store: self.store.as_ref(),
                worker: &self.name,
                id: &job.id,
                lease: self.lease,
            };
            let (percent, cancelled) = (&percent, &cancelled);
            scope.spawn(move || holder.keep(percent, cancelled, &finished));
            let progress = JobProgress {
                id: &job.id,
                artifacts: &self.artifacts,
                last_preview: Cell::new(None),
                planned: self.engine.planned_steps(&job.request),
                finished: Cell::new(0),
                current: Cell::new(0),
                in_denoise: Cell::new(false),
                percent: percent.clone(),
                denoise_started: Cell::new(None),
                denoise_seconds: Cell::new(0.0),
            };
            let path = self.artifacts.path(&job.id, Variant::Video);
            let output = Output {
                path: &path,
                marks: self.marks(&job.id, &job.request),
            };
            let outcome = self.inputs(&job.request).and_then(|inputs| {
                self.engine
                    .generate(&job.request, &inputs, output, &progress, cancelled)
            });
            // Ends the heartbeat.
            drop(done);
            let timing = Timing {
                run_seconds: started.elapsed().as_secs_f64(),
                steps: progress.finished.get(),
                denoise_seconds: progress.denoise_seconds.get(),
            };
            outcome.map(|samples| (samples, timing))
        });
        let lease = match outcome {
            Ok((samples, timing)) => match self.artifacts.write_stills(&job.id, &samples) {
                Ok(()) => self.store.complete(&job.id, &self.name, &timing)?,
                Err(message) => self.store.fail(&job.id, &self.name, &failure(message))?,
            },
            Err(_) if cancelled.load(Ordering::Relaxed) => Lease::Lost,
            Err(message) => self.store.fail(&job.id, &self.name, &failure(message))?,
        };
        if lease == Lease::Lost {
            // Deleted while it ran, or taken over: its files are not ours to keep.
            if self.store.get(&job.id)?.is_none() {
                self.artifacts.remove(&job.id);
            }
        }
        Ok(true)
    }
}

impl Worker {
    /// The marks of job `id`'s video: the watermark (its id derived from the job's) and the
    /// manifest stating the model, the task and the files that went in.
    fn marks(&self, id: &str, request: &JobRequest) -> Marks {
        let generation = generation_id(id);
        let provenance = self.credentials.clone().map(|credentials| {
            let video = |id: &str| self.artifacts.path(id, Variant::Video);
            let mut ingredients = Vec::new();
            if let Some(name) = &request.input_reference {
                let path = self.artifacts.upload_path(name);
                let still = matches!(
                    path.extension().and_then(|e| e.to_str()),
                    Some("png" | "jpg" | "jpeg" | "webp")
                );
                let role = if still { Role::Component } else { Role::Parent };
                ingredients.push(Ingredient { path, role });
            }
            if let Some(remix) = &request.remix {
                ingredients.push(Ingredient {
                    path: video(&remix.video_id),
                    role: Role::Parent,
                });
            }
            if let Some(edit) = &request.edit {
                let role = match edit {
                    Edit::Connect { .. } => Role::Component,
                    _ => Role::Parent,
                };
                for id in edit.videos() {
                    ingredients.push(Ingredient {
                        path: video(id),
                        role,
                    });
                }
            }
            let claim = Claim {
                model: self.engine.spec().name.clone(),
                task: describe(request),
                generation,
                ingredients,
            };
            (claim, credentials)
        });
        Marks {
            generation,
            provenance,
        }
    }

    /// Reads the clips `request` starts from.
    fn inputs(&self, request: &JobRequest) -> Result<JobInputs, String> {
        let read = |path: &std::path::Path| {
            himmel_media::read_video(path, &Default::default(), &himmel_core::Silent)
                .map_err(|error| error.to_string())
        };
        let reference = match &request.input_reference {
            Some(name) => Some(read(&self.artifacts.upload_path(name))?),
            None => None,
        };
        let extends_reference = matches!(request.edit, Some(Edit::ExtendReference { .. }));
        // An image is the first frame; a clip is extended or re-styled.
        let (first_frame, uploaded_clip) = match reference {
            Some(video) if video.num_frames() == 1 => (Some(video), None),
            other => (None, other),
        };
        let source = match (&request.remix, &uploaded_clip) {
            (Some(remix), _) => {
                let path = self.artifacts.path(&remix.video_id, Variant::Video);
                let video =
                    read(&path).map_err(|error| format!("the video to remix is gone: {error}"))?;
                Some((video, remix.strength))
            }
            (None, Some(clip)) if !extends_reference => Some((
                clip.clone(),
                request.strength.unwrap_or(DEFAULT_UPLOAD_STRENGTH),
            )),
            _ => None,
        };
        if extends_reference {
            let clip = uploaded_clip.ok_or("extending needs an uploaded clip (input_reference)")?;
            return Ok(JobInputs {
                first_frame: None,
                source: None,
                clips: vec![clip],
            });
        }
        let clips = match &request.edit {
            Some(edit) => edit
                .videos()
                .into_iter()
                .map(|id| {
                    read(&self.artifacts.path(id, Variant::Video))
                        .map_err(|error| format!("video {id} is gone: {error}"))
                })
                .collect::<Result<_, _>>()?,
            None => Vec::new(),
        };
        Ok(JobInputs {
            first_frame,
            source,
            clips,
        })
    }
}

/// The watermark id of job `id`: the same on every attempt (FNV-1a of the id).
fn generation_id(id: &str) -> u32 {
    id.bytes().fold(0x811c_9dc5u32, |hash, byte| {
        (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193)
    })
}

/// The task of `request` in words, for the manifest.
fn describe(request: &JobRequest) -> String {
    let seconds = request.seconds;
    match (&request.edit, &request.remix, &request.input_reference) {
        (Some(Edit::Loop), ..) => format!("a {seconds} s seamless loop"),
        (Some(Edit::Extend { direction, .. } | Edit::ExtendReference { direction }), ..) => {
            let way = match direction {
                crate::job::Direction::Forward => "forward",
                crate::job::Direction::Backward => "backward",
            };
            format!("extended {way} by {seconds} s")
        }
        (Some(Edit::Connect { .. }), ..) => {
            format!("a {seconds} s transition connecting two videos")
        }
        (None, Some(remix), _) => format!("remix at strength {}", remix.strength),
        (None, None, Some(_)) => format!("a {seconds} s video from an uploaded image or clip"),
        (None, None, None) => format!("a {seconds} s video from text"),
    }
}

/// How much video to video changes an uploaded clip when the request does not say.
const DEFAULT_UPLOAD_STRENGTH: f64 = 0.7;

/// What renews one job's lease.
struct LeaseHolder<'a> {
    store: &'a dyn JobStore,
    worker: &'a str,
    id: &'a str,
    lease: Duration,
}

impl LeaseHolder<'_> {
    /// Renews the lease until `finished` closes, and records progress as it changes (at most
    /// every [`PROGRESS_POLL`]); sets `cancelled` if the lease is lost.
    fn keep(&self, percent: &AtomicU8, cancelled: &AtomicBool, finished: &mpsc::Receiver<()>) {
        let every = self.lease / 3;
        let mut last_beat = Instant::now();
        let mut reported = percent.load(Ordering::Relaxed);
        while let Err(mpsc::RecvTimeoutError::Timeout) = finished.recv_timeout(PROGRESS_POLL) {
            let progress = percent.load(Ordering::Relaxed);
            if progress == reported && last_beat.elapsed() < every {
                continue;
            }
            match self
                .store
                .heartbeat(self.id, self.worker, progress, self.lease)
            {
                Ok(Lease::Held) => {
                    last_beat = Instant::now();
                    reported = progress;
                }
                Ok(Lease::Lost) => {
                    cancelled.store(true, Ordering::Relaxed);
                    return;
                }
                // A passing database error: the next beat may succeed before the lease ends.
                Err(_) => {}
            }
        }
    }
}

/// How often progress is looked at while a job runs.
const PROGRESS_POLL: Duration = Duration::from_millis(250);

fn failure(message: String) -> JobError {
    JobError {
        code: "generation_failed".into(),
        message,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::AtomicUsize;

    use super::*;
    use crate::engine::ModelSpec;
    use crate::job::Job;
    use crate::store::{Counts, Order};

    /// A store whose first two leases fail, then stops the worker.
    struct Flaky {
        leases: AtomicUsize,
        stop: Arc<AtomicBool>,
    }

    fn down() -> StoreError {
        StoreError::Database("connection refused".into())
    }

    impl JobStore for Flaky {
        fn create(&self, _: &JobRequest, _: Option<&str>) -> Result<Job, StoreError> {
            Err(down())
        }
        fn get(&self, _: &str) -> Result<Option<Job>, StoreError> {
            Err(down())
        }
        fn list(&self, _: usize, _: Option<&str>, _: Order) -> Result<Vec<Job>, StoreError> {
            Err(down())
        }
        fn delete(&self, _: &str) -> Result<bool, StoreError> {
            Err(down())
        }
        fn lease(&self, _: &str, _: Duration) -> Result<Option<Job>, StoreError> {
            if self.leases.fetch_add(1, Ordering::Relaxed) < 2 {
                return Err(down());
            }
            self.stop.store(true, Ordering::Relaxed);
            Ok(None)
        }
        fn heartbeat(&self, _: &str, _: &str, _: u8, _: Duration) -> Result<Lease, StoreError> {
            Err(down())
        }
        fn complete(&self, _: &str, _: &str, _: &Timing) -> Result<Lease, StoreError> {
            Err(down())
        }
        fn fail(&self, _: &str, _: &str, _: &JobError) -> Result<Lease, StoreError> {
            Err(down())
        }
        fn counts(&self) -> Result<Counts, StoreError> {
            Err(down())
        }
    }

    /// An engine that is never asked to generate here.
    struct Idle(ModelSpec);

    impl Engine for Idle {
        fn spec(&self) -> &ModelSpec {
            &self.0
        }
        fn planned_steps(&self, _: &JobRequest) -> u64 {
            0
        }
        fn generate(
            &mut self,
            _: &JobRequest,
            _: &JobInputs,
            _: crate::engine::Output<'_>,
            _: &dyn Progress,
            _: &AtomicBool,
        ) -> Result<himmel_core::Video, String> {
            Err("no jobs in this test".into())
        }
    }

    #[test]
    fn a_failing_store_is_reported_and_retried() {
        let stop = Arc::new(AtomicBool::new(false));
        let store = Arc::new(Flaky {
            leases: AtomicUsize::new(0),
            stop: stop.clone(),
        });
        let spec = ModelSpec {
            name: "idle".into(),
            size: (64, 64),
            size_multiple: 16,
            max_side: 64,
            fps: 16.0,
            temporal_factor: 4,
            seconds: 1.0,
            max_seconds: 1.0,
            high_noise_expert: false,
            skip_guidance_layers: None,
            skip_guidance: None,
        };
        let data = tempfile::tempdir().unwrap();
        let artifacts = Artifacts::new(data.path()).unwrap();
        let mut worker = Worker::new(store.clone(), Box::new(Idle(spec)), artifacts);
        let reports = Mutex::new(Vec::new());
        worker.run(&stop, Duration::from_millis(1), &|error| {
            reports.lock().unwrap().push(error.to_string());
        });
        assert_eq!(store.leases.load(Ordering::Relaxed), 3);
        assert_eq!(reports.lock().unwrap().len(), 2);
    }
}
