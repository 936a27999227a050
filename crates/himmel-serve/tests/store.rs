//! The job store's contract, on both backends (SQLite, and PostgreSQL at the server named by
//! `HIMMEL_TEST_POSTGRES`, which `.ci/run` starts): creation, listing and deletion; leases
//! that are exclusive, renewed by heartbeats and taken over when a worker dies; a limit on
//! attempts; back-pressure; concurrent workers; and jobs that survive a restart.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use himmel_serve::job::{JobError, JobRequest, JobStatus};
use himmel_serve::postgres_store::PostgresStore;
use himmel_serve::sqlite::SqliteStore;
use himmel_serve::store::{JobStore, Lease, Order, QueueSettings, StoreError, Timing};

/// Where a test's jobs live; every `open` is another connection to the same jobs.
enum Backend {
    Sqlite(tempfile::TempDir),
    Postgres(String),
}

impl Backend {
    fn sqlite() -> Self {
        Self::Sqlite(tempfile::tempdir().unwrap())
    }

    /// A fresh schema of its own in the test server's database.
    fn postgres() -> Self {
        let url = std::env::var("HIMMEL_TEST_POSTGRES").expect(
            "set HIMMEL_TEST_POSTGRES to a PostgreSQL connection string (bash .ci/run starts one)",
        );
        let schema = format!("test_{}", &himmel_serve::job::new_id()[6..]);
        let mut client = ::postgres::Client::connect(&url, ::postgres::NoTls).unwrap();
        client
            .batch_execute(&format!("CREATE SCHEMA {schema}"))
            .unwrap();
        Self::Postgres(format!("{url} options='-c search_path={schema}'"))
    }

    fn open(&self, settings: QueueSettings) -> Box<dyn JobStore> {
        match self {
            Self::Sqlite(dir) => {
                Box::new(SqliteStore::open(&dir.path().join("jobs.db"), settings).unwrap())
            }
            Self::Postgres(url) => Box::new(PostgresStore::open(url, settings).unwrap()),
        }
    }
}

/// Runs each named contract test on both backends.
macro_rules! on_both_backends {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(#[test] fn $test() { super::$test(&super::Backend::sqlite()) })*
        }
        mod postgres {
            $(#[test] fn $test() { super::$test(&super::Backend::postgres()) })*
        }
    };
}

on_both_backends!(
    jobs_are_created_listed_and_deleted,
    leases_are_exclusive_renewed_and_taken_over_when_a_worker_dies,
    a_job_that_keeps_losing_its_worker_fails_with_the_reason,
    a_full_queue_refuses_new_jobs,
    concurrent_workers_never_share_a_job,
    jobs_survive_a_restart,
);

fn request(prompt: &str) -> JobRequest {
    JobRequest {
        prompt: prompt.into(),
        negative_prompt: String::new(),
        model: "himmel-mini".into(),
        width: 64,
        height: 64,
        seconds: 1.0,
        seed: 7,
        steps: None,
        guidance: None,
        shift: None,
        boundary: None,
        expert_guidance: None,
        skip_guidance: None,
        input_reference: None,
        strength: None,
        remix: None,
        edit: None,
    }
}

const LONG: Duration = Duration::from_secs(60);

fn jobs_are_created_listed_and_deleted(backend: &Backend) {
    let store = backend.open(QueueSettings::default());
    let ids: Vec<String> = (0..5)
        .map(|i| {
            store
                .create(&request(&format!("clip {i}")), None)
                .unwrap()
                .id
        })
        .collect();
    let job = store.get(&ids[2]).unwrap().unwrap();
    assert_eq!(
        (job.status, job.progress, job.request.prompt.as_str()),
        (JobStatus::Queued, 0, "clip 2")
    );
    let page = store.list(2, None, Order::Descending).unwrap();
    assert_eq!(
        page.iter().map(|j| &j.id).collect::<Vec<_>>(),
        [&ids[4], &ids[3]]
    );
    let next = store.list(2, Some(&ids[3]), Order::Descending).unwrap();
    assert_eq!(
        next.iter().map(|j| &j.id).collect::<Vec<_>>(),
        [&ids[2], &ids[1]]
    );
    let oldest = store.list(10, Some(&ids[2]), Order::Ascending).unwrap();
    assert_eq!(oldest.len(), 2);
    assert!(store.delete(&ids[0]).unwrap());
    assert!(!store.delete(&ids[0]).unwrap());
    assert!(store.get(&ids[0]).unwrap().is_none());
    assert_eq!(store.counts().unwrap().queued, 4);
}

fn leases_are_exclusive_renewed_and_taken_over_when_a_worker_dies(backend: &Backend) {
    let store = backend.open(QueueSettings::default());
    let id = store.create(&request("a ball"), None).unwrap().id;
    let job = store
        .lease("a", Duration::from_millis(300))
        .unwrap()
        .unwrap();
    assert_eq!(
        (job.id.as_str(), job.status, job.attempts),
        (id.as_str(), JobStatus::InProgress, 1)
    );
    assert!(store.lease("b", LONG).unwrap().is_none());
    assert_eq!(
        store
            .heartbeat(&id, "a", 40, Duration::from_millis(300))
            .unwrap(),
        Lease::Held
    );
    assert_eq!(store.get(&id).unwrap().unwrap().progress, 40);
    // Worker a dies: once its lease runs out, b takes the job over and a has lost it.
    std::thread::sleep(Duration::from_millis(400));
    let taken = store.lease("b", LONG).unwrap().unwrap();
    assert_eq!((taken.id.as_str(), taken.attempts), (id.as_str(), 2));
    assert_eq!(store.heartbeat(&id, "a", 50, LONG).unwrap(), Lease::Lost);
    let timing = Timing {
        run_seconds: 2.5,
        steps: 20,
        denoise_seconds: 2.0,
    };
    assert_eq!(
        store.complete(&id, "a", &Timing::default()).unwrap(),
        Lease::Lost
    );
    assert_eq!(store.complete(&id, "b", &timing).unwrap(), Lease::Held);
    let done = store.get(&id).unwrap().unwrap();
    assert_eq!((done.status, done.progress), (JobStatus::Completed, 100));
    assert_eq!(store.counts().unwrap().timing, timing);
    assert!(done.completed_at.is_some());
    // Deleting a running job takes the lease away.
    let other = store.create(&request("a cube"), None).unwrap().id;
    store.lease("c", LONG).unwrap().unwrap();
    store.delete(&other).unwrap();
    assert_eq!(store.heartbeat(&other, "c", 10, LONG).unwrap(), Lease::Lost);
}

fn a_job_that_keeps_losing_its_worker_fails_with_the_reason(backend: &Backend) {
    let settings = QueueSettings {
        max_attempts: 2,
        ..QueueSettings::default()
    };
    let store = backend.open(settings);
    let id = store.create(&request("a ball"), None).unwrap().id;
    for worker in ["a", "b"] {
        assert!(
            store
                .lease(worker, Duration::from_millis(50))
                .unwrap()
                .is_some()
        );
        std::thread::sleep(Duration::from_millis(80));
    }
    assert!(store.lease("c", LONG).unwrap().is_none());
    let failed = store.get(&id).unwrap().unwrap();
    assert_eq!(failed.status, JobStatus::Failed);
    let error = failed.error.unwrap();
    assert_eq!(error.code, "worker_lost");
    assert!(
        error.message.contains("started 2 times"),
        "{}",
        error.message
    );
    // A failure reported by the worker is kept with its message.
    let next = store.create(&request("a cube"), None).unwrap().id;
    store.lease("d", LONG).unwrap().unwrap();
    let reason = JobError {
        code: "generation_failed".into(),
        message: "out of memory".into(),
    };
    assert_eq!(store.fail(&next, "d", &reason).unwrap(), Lease::Held);
    assert_eq!(store.get(&next).unwrap().unwrap().error, Some(reason));
}

fn a_full_queue_refuses_new_jobs(backend: &Backend) {
    let settings = QueueSettings {
        max_queued: 2,
        ..QueueSettings::default()
    };
    let store = backend.open(settings);
    store.create(&request("one"), None).unwrap();
    store.create(&request("two"), None).unwrap();
    let full = store.create(&request("three"), None).unwrap_err();
    assert!(matches!(full, StoreError::QueueFull { limit: 2 }), "{full}");
    // A leased job no longer waits, so there is room again.
    store.lease("a", LONG).unwrap().unwrap();
    store.create(&request("three"), None).unwrap();
}

fn concurrent_workers_never_share_a_job(backend: &Backend) {
    let settings = QueueSettings {
        max_queued: 100,
        max_attempts: 3,
    };
    let store = backend.open(settings);
    for i in 0..40 {
        store.create(&request(&format!("clip {i}")), None).unwrap();
    }
    let done = Arc::new(Mutex::new(Vec::new()));
    std::thread::scope(|scope| {
        for worker in 0..4 {
            let done = done.clone();
            scope.spawn(move || {
                // A connection of its own, as another process would have.
                let store = backend.open(settings);
                let name = format!("worker {worker}");
                while let Some(job) = store.lease(&name, LONG).unwrap() {
                    assert_eq!(
                        store.complete(&job.id, &name, &Timing::default()).unwrap(),
                        Lease::Held
                    );
                    done.lock().unwrap().push(job.id);
                }
            });
        }
    });
    let done = done.lock().unwrap();
    assert_eq!(done.len(), 40);
    assert_eq!(done.iter().collect::<HashSet<_>>().len(), 40);
    assert_eq!(store.counts().unwrap().completed, 40);
}

fn jobs_survive_a_restart(backend: &Backend) {
    let (waiting, running) = {
        let store = backend.open(QueueSettings::default());
        let running = store.create(&request("running"), None).unwrap().id;
        let waiting = store.create(&request("waiting"), None).unwrap().id;
        store
            .lease("gone", Duration::from_millis(100))
            .unwrap()
            .unwrap();
        (waiting, running)
    };
    std::thread::sleep(Duration::from_millis(150));
    let store = backend.open(QueueSettings::default());
    // The job whose worker went away with the old process comes back first, then the other.
    let first = store.lease("new", LONG).unwrap().unwrap();
    let second = store.lease("new", LONG).unwrap().unwrap();
    assert_eq!((first.id, second.id), (running, waiting));
    assert!(store.lease("new", LONG).unwrap().is_none());
}
