//! [`PostgresStore`]: the job store in PostgreSQL, for many workers on many machines. Leasing
//! takes the oldest free job with `FOR UPDATE SKIP LOCKED`, so concurrent workers never wait
//! on each other or share a job.

use std::sync::Mutex;
use std::time::Duration;

use postgres::{Client, NoTls, Row};

use crate::job::{Job, JobError, JobRequest, JobStatus, new_id};
use crate::store::{
    Counts, JobStore, Lease, Order, QueueSettings, StoreError, Timing, now_millis, now_seconds,
    worker_lost,
};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS himmel_jobs (
    seq BIGSERIAL PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL,
    progress INTEGER NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    completed_at BIGINT,
    request TEXT NOT NULL,
    error_code TEXT,
    error_message TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    worker TEXT,
    lease_until BIGINT,
    remixed_from TEXT,
    run_seconds DOUBLE PRECISION,
    steps BIGINT,
    denoise_seconds DOUBLE PRECISION
);
CREATE INDEX IF NOT EXISTS himmel_jobs_by_status ON himmel_jobs (status, seq);
";

const COLUMNS: &str = "id, status, progress, created_at, completed_at, request, error_code, \
                       error_message, attempts, remixed_from";

/// Jobs in a PostgreSQL database.
pub struct PostgresStore {
    client: Mutex<Client>,
    settings: QueueSettings,
}

fn database(error: impl std::fmt::Display) -> StoreError {
    StoreError::Database(error.to_string())
}

/// Reads a job from a row of [`COLUMNS`].
fn job_from_row(row: &Row) -> Result<Job, StoreError> {
    let status: String = row.try_get(1).map_err(database)?;
    let request: String = row.try_get(5).map_err(database)?;
    let error_code: Option<String> = row.try_get(6).map_err(database)?;
    let error_message: Option<String> = row.try_get(7).map_err(database)?;
    let progress: i32 = row.try_get(2).map_err(database)?;
    let attempts: i32 = row.try_get(8).map_err(database)?;
    Ok(Job {
        id: row.try_get(0).map_err(database)?,
        status: JobStatus::parse(&status)
            .ok_or_else(|| database(format!("unknown job status {status:?}")))?,
        progress: progress.clamp(0, 100) as u8,
        created_at: row.try_get(3).map_err(database)?,
        completed_at: row.try_get(4).map_err(database)?,
        request: serde_json::from_str::<JobRequest>(&request).map_err(database)?,
        error: error_code.map(|code| JobError {
            code,
            message: error_message.unwrap_or_default(),
        }),
        attempts: attempts.max(0) as u32,
        remixed_from: row.try_get(9).map_err(database)?,
    })
}

impl PostgresStore {
    /// Connects to `url` (`postgres://user:password@host/database`, or `host=... user=...`)
    /// and creates the table if it is missing.
    pub fn open(url: &str, settings: QueueSettings) -> Result<Self, StoreError> {
        let mut client = Client::connect(url, NoTls).map_err(|error| {
            StoreError::Database(format!("cannot connect to PostgreSQL: {error}"))
        })?;
        client.batch_execute(SCHEMA).map_err(database)?;
        Ok(Self {
            client: Mutex::new(client),
            settings,
        })
    }

    fn with<T>(
        &self,
        work: impl FnOnce(&mut Client) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut client = self
            .client
            .lock()
            .map_err(|_| StoreError::Database("a thread panicked while using the store".into()))?;
        work(&mut client)
    }

    /// Sets the end state of a job the worker holds.
    fn finish(
        &self,
        id: &str,
        worker: &str,
        status: JobStatus,
        error: Option<&JobError>,
    ) -> Result<Lease, StoreError> {
        let changed = self.with(|client| {
            client
                .execute(
                    "UPDATE himmel_jobs SET status = $1, progress = CASE WHEN $1 = 'completed' \
                     THEN 100 ELSE progress END, completed_at = $2, error_code = $3, \
                     error_message = $4, lease_until = NULL \
                     WHERE id = $5 AND worker = $6 AND status = 'in_progress'",
                    &[
                        &status.as_str(),
                        &now_seconds(),
                        &error.map(|e| e.code.as_str()),
                        &error.map(|e| e.message.as_str()),
                        &id,
                        &worker,
                    ],
                )
                .map_err(database)
        })?;
        Ok(if changed == 1 {
            Lease::Held
        } else {
            Lease::Lost
        })
    }
}

impl JobStore for PostgresStore {
    fn create(&self, request: &JobRequest, remixed_from: Option<&str>) -> Result<Job, StoreError> {
        let text = serde_json::to_string(request).map_err(database)?;
        let limit = self.settings.max_queued;
        let id = new_id();
        self.with(|client| {
            let mut transaction = client.transaction().map_err(database)?;
            // One creator at a time, so the limit holds under concurrent requests.
            transaction
                .execute("LOCK TABLE himmel_jobs IN SHARE ROW EXCLUSIVE MODE", &[])
                .map_err(database)?;
            let queued: i64 = transaction
                .query_one(
                    "SELECT COUNT(*) FROM himmel_jobs WHERE status = 'queued'",
                    &[],
                )
                .and_then(|row| row.try_get(0))
                .map_err(database)?;
            if queued as usize >= limit {
                return Err(StoreError::QueueFull { limit });
            }
            let row = transaction
                .query_one(
                    &format!(
                        "INSERT INTO himmel_jobs (id, status, created_at, request, remixed_from) \
                         VALUES ($1, 'queued', $2, $3, $4) RETURNING {COLUMNS}"
                    ),
                    &[&id, &now_seconds(), &text, &remixed_from],
                )
                .map_err(database)?;
            let job = job_from_row(&row)?;
            transaction.commit().map_err(database)?;
            Ok(job)
        })
    }

    fn get(&self, id: &str) -> Result<Option<Job>, StoreError> {
        self.with(|client| {
            client
                .query_opt(
                    &format!("SELECT {COLUMNS} FROM himmel_jobs WHERE id = $1"),
                    &[&id],
                )
                .map_err(database)?
                .as_ref()
                .map(job_from_row)
                .transpose()
        })
    }

    fn list(
        &self,
        limit: usize,
        after: Option<&str>,
        order: Order,
    ) -> Result<Vec<Job>, StoreError> {
        let (compare, direction) = match order {
            Order::Ascending => (">", "ASC"),
            Order::Descending => ("<", "DESC"),
        };
        self.with(|client| {
            let start: Option<i64> = match after {
                Some(id) => client
                    .query_opt("SELECT seq FROM himmel_jobs WHERE id = $1", &[&id])
                    .map_err(database)?
                    .map(|row| row.try_get(0))
                    .transpose()
                    .map_err(database)?,
                None => None,
            };
            let bound = match (start, order) {
                (Some(seq), _) => seq,
                (None, Order::Ascending) => i64::MIN,
                (None, Order::Descending) => i64::MAX,
            };
            client
                .query(
                    &format!(
                        "SELECT {COLUMNS} FROM himmel_jobs WHERE seq {compare} $1 \
                         ORDER BY seq {direction} LIMIT $2"
                    ),
                    &[&bound, &(limit as i64)],
                )
                .map_err(database)?
                .iter()
                .map(job_from_row)
                .collect()
        })
    }

    fn delete(&self, id: &str) -> Result<bool, StoreError> {
        self.with(|client| {
            client
                .execute("DELETE FROM himmel_jobs WHERE id = $1", &[&id])
                .map_err(database)
        })
        .map(|deleted| deleted == 1)
    }

    fn lease(&self, worker: &str, lease: Duration) -> Result<Option<Job>, StoreError> {
        let max_attempts = self.settings.max_attempts as i32;
        self.with(|client| {
            let mut transaction = client.transaction().map_err(database)?;
            let now = now_millis();
            loop {
                let next = transaction
                    .query_opt(
                        "SELECT id, attempts FROM himmel_jobs WHERE status = 'queued' \
                         OR (status = 'in_progress' AND lease_until < $1) \
                         ORDER BY seq LIMIT 1 FOR UPDATE SKIP LOCKED",
                        &[&now],
                    )
                    .map_err(database)?;
                let Some(next) = next else {
                    transaction.commit().map_err(database)?;
                    return Ok(None);
                };
                let id: String = next.try_get(0).map_err(database)?;
                let attempts: i32 = next.try_get(1).map_err(database)?;
                if attempts >= max_attempts {
                    transaction
                        .execute(
                            "UPDATE himmel_jobs SET status = 'failed', completed_at = $1, \
                             error_code = 'worker_lost', error_message = $2, lease_until = NULL \
                             WHERE id = $3",
                            &[&now_seconds(), &worker_lost(attempts), &id],
                        )
                        .map_err(database)?;
                    continue;
                }
                let row = transaction
                    .query_one(
                        &format!(
                            "UPDATE himmel_jobs SET status = 'in_progress', worker = $1, \
                             lease_until = $2, attempts = attempts + 1 WHERE id = $3 \
                             RETURNING {COLUMNS}"
                        ),
                        &[&worker, &(now + lease.as_millis() as i64), &id],
                    )
                    .map_err(database)?;
                let job = job_from_row(&row)?;
                transaction.commit().map_err(database)?;
                return Ok(Some(job));
            }
        })
    }

    fn heartbeat(
        &self,
        id: &str,
        worker: &str,
        progress: u8,
        lease: Duration,
    ) -> Result<Lease, StoreError> {
        let changed = self.with(|client| {
            client
                .execute(
                    "UPDATE himmel_jobs SET lease_until = $1, progress = $2 \
                     WHERE id = $3 AND worker = $4 AND status = 'in_progress'",
                    &[
                        &(now_millis() + lease.as_millis() as i64),
                        &i32::from(progress),
                        &id,
                        &worker,
                    ],
                )
                .map_err(database)
        })?;
        Ok(if changed == 1 {
            Lease::Held
        } else {
            Lease::Lost
        })
    }

    fn complete(&self, id: &str, worker: &str, timing: &Timing) -> Result<Lease, StoreError> {
        let lease = self.finish(id, worker, JobStatus::Completed, None)?;
        self.with(|client| {
            client
                .execute(
                    "UPDATE himmel_jobs SET run_seconds = $1, steps = $2, denoise_seconds = $3 \
                     WHERE id = $4 AND worker = $5",
                    &[
                        &timing.run_seconds,
                        &(timing.steps as i64),
                        &timing.denoise_seconds,
                        &id,
                        &worker,
                    ],
                )
                .map_err(database)
        })?;
        Ok(lease)
    }

    fn fail(&self, id: &str, worker: &str, error: &JobError) -> Result<Lease, StoreError> {
        self.finish(id, worker, JobStatus::Failed, Some(error))
    }

    fn counts(&self) -> Result<Counts, StoreError> {
        self.with(|client| {
            let rows = client
                .query(
                    "SELECT status, COUNT(*) FROM himmel_jobs GROUP BY status",
                    &[],
                )
                .map_err(database)?;
            let totals = client
                .query_one(
                    "SELECT COALESCE(SUM(run_seconds), 0), COALESCE(SUM(steps), 0)::BIGINT, \
                     COALESCE(SUM(denoise_seconds), 0) FROM himmel_jobs WHERE status = 'completed'",
                    &[],
                )
                .map_err(database)?;
            let steps: i64 = totals.try_get(1).map_err(database)?;
            let mut counts = Counts {
                timing: Timing {
                    run_seconds: totals.try_get(0).map_err(database)?,
                    steps: steps.max(0) as u64,
                    denoise_seconds: totals.try_get(2).map_err(database)?,
                },
                ..Counts::default()
            };
            for row in rows {
                let status: String = row.try_get(0).map_err(database)?;
                let count: i64 = row.try_get(1).map_err(database)?;
                let count = count as usize;
                counts.record(&status, count);
            }
            Ok(counts)
        })
    }
}
