//! [`SqliteStore`]: the job store in one SQLite file (the default: embedded, nothing to run).
//! Write transactions are `IMMEDIATE`, so concurrent workers (threads or processes sharing the
//! file) never lease the same job; WAL mode lets readers go on while a worker writes.

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};

use crate::job::{Job, JobError, JobRequest, JobStatus, new_id};
use crate::store::{
    Counts, JobStore, Lease, Order, QueueSettings, StoreError, Timing, now_millis, now_seconds,
    worker_lost,
};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL,
    progress INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    completed_at INTEGER,
    request TEXT NOT NULL,
    error_code TEXT,
    error_message TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    worker TEXT,
    lease_until INTEGER,
    remixed_from TEXT,
    run_seconds REAL,
    steps INTEGER,
    denoise_seconds REAL
);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, seq);
";

const COLUMNS: &str = "id, status, progress, created_at, completed_at, request, error_code, \
                       error_message, attempts, remixed_from";

/// Jobs in an SQLite file.
pub struct SqliteStore {
    connection: Mutex<Connection>,
    settings: QueueSettings,
}

fn database(error: impl std::fmt::Display) -> StoreError {
    StoreError::Database(error.to_string())
}

/// Reads a job from a row of [`COLUMNS`].
fn job_from_row(row: &Row) -> rusqlite::Result<Job> {
    let status: String = row.get(1)?;
    let request: String = row.get(5)?;
    let conversion = |error: String| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, error.into())
    };
    let error_code: Option<String> = row.get(6)?;
    let error_message: Option<String> = row.get(7)?;
    Ok(Job {
        id: row.get(0)?,
        status: JobStatus::parse(&status)
            .ok_or_else(|| conversion(format!("unknown job status {status:?}")))?,
        progress: row.get(2)?,
        created_at: row.get(3)?,
        completed_at: row.get(4)?,
        request: serde_json::from_str::<JobRequest>(&request)
            .map_err(|error| conversion(error.to_string()))?,
        error: error_code.map(|code| JobError {
            code,
            message: error_message.unwrap_or_default(),
        }),
        attempts: row.get(8)?,
        remixed_from: row.get(9)?,
    })
}

impl SqliteStore {
    /// Opens (or creates) the store in the file `path`.
    pub fn open(path: &Path, settings: QueueSettings) -> Result<Self, StoreError> {
        let connection = Connection::open(path)
            .map_err(|error| StoreError::Database(format!("{}: {error}", path.display())))?;
        connection
            .busy_timeout(Duration::from_secs(10))
            .map_err(database)?;
        connection
            .pragma_update(None, "journal_mode", "WAL")
            .map_err(database)?;
        connection.execute_batch(SCHEMA).map_err(database)?;
        Ok(Self {
            connection: Mutex::new(connection),
            settings,
        })
    }

    fn with<T>(
        &self,
        work: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        let mut connection = self
            .connection
            .lock()
            .map_err(|_| StoreError::Database("a thread panicked while using the store".into()))?;
        work(&mut connection).map_err(database)
    }

    fn get_in(connection: &Connection, id: &str) -> rusqlite::Result<Option<Job>> {
        connection
            .query_row(
                &format!("SELECT {COLUMNS} FROM jobs WHERE id = ?1"),
                [id],
                job_from_row,
            )
            .optional()
    }

    /// Sets the end state of a job the worker holds.
    fn finish(
        &self,
        id: &str,
        worker: &str,
        status: JobStatus,
        error: Option<&JobError>,
    ) -> Result<Lease, StoreError> {
        let changed = self.with(|connection| {
            connection.execute(
                "UPDATE jobs SET status = ?1, progress = CASE WHEN ?1 = 'completed' THEN 100 \
                 ELSE progress END, completed_at = ?2, error_code = ?3, error_message = ?4, \
                 lease_until = NULL WHERE id = ?5 AND worker = ?6 AND status = 'in_progress'",
                params![
                    status.as_str(),
                    now_seconds(),
                    error.map(|e| e.code.as_str()),
                    error.map(|e| e.message.as_str()),
                    id,
                    worker
                ],
            )
        })?;
        Ok(if changed == 1 {
            Lease::Held
        } else {
            Lease::Lost
        })
    }
}

impl JobStore for SqliteStore {
    fn create(&self, request: &JobRequest, remixed_from: Option<&str>) -> Result<Job, StoreError> {
        let text = serde_json::to_string(request).map_err(database)?;
        let limit = self.settings.max_queued;
        let id = new_id();
        let created = self.with(|connection| {
            let transaction =
                connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let queued: usize = transaction.query_row(
                "SELECT COUNT(*) FROM jobs WHERE status = 'queued'",
                [],
                |row| row.get(0),
            )?;
            if queued >= limit {
                return Ok(None);
            }
            transaction.execute(
                "INSERT INTO jobs (id, status, created_at, request, remixed_from) \
                 VALUES (?1, 'queued', ?2, ?3, ?4)",
                params![id, now_seconds(), text, remixed_from],
            )?;
            let job = Self::get_in(&transaction, &id)?;
            transaction.commit()?;
            Ok(job)
        })?;
        created.ok_or(StoreError::QueueFull { limit })
    }

    fn get(&self, id: &str) -> Result<Option<Job>, StoreError> {
        self.with(|connection| Self::get_in(connection, id))
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
        self.with(|connection| {
            let start: Option<i64> = match after {
                Some(id) => connection
                    .query_row("SELECT seq FROM jobs WHERE id = ?1", [id], |row| row.get(0))
                    .optional()?,
                None => None,
            };
            let bound = match (start, order) {
                (Some(seq), _) => seq,
                (None, Order::Ascending) => i64::MIN,
                (None, Order::Descending) => i64::MAX,
            };
            let mut statement = connection.prepare(&format!(
                "SELECT {COLUMNS} FROM jobs WHERE seq {compare} ?1 ORDER BY seq {direction} LIMIT ?2"
            ))?;
            let rows = statement.query_map(params![bound, limit as i64], job_from_row)?;
            rows.collect()
        })
    }

    fn delete(&self, id: &str) -> Result<bool, StoreError> {
        self.with(|connection| connection.execute("DELETE FROM jobs WHERE id = ?1", [id]))
            .map(|deleted| deleted == 1)
    }

    fn lease(&self, worker: &str, lease: Duration) -> Result<Option<Job>, StoreError> {
        let max_attempts = self.settings.max_attempts;
        self.with(|connection| {
            let transaction =
                connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let now = now_millis();
            loop {
                let next: Option<(String, u32)> = transaction
                    .query_row(
                        "SELECT id, attempts FROM jobs WHERE status = 'queued' \
                         OR (status = 'in_progress' AND lease_until < ?1) ORDER BY seq LIMIT 1",
                        [now],
                        |row| Ok((row.get(0)?, row.get(1)?)),
                    )
                    .optional()?;
                let Some((id, attempts)) = next else {
                    transaction.commit()?;
                    return Ok(None);
                };
                if attempts >= max_attempts {
                    transaction.execute(
                        "UPDATE jobs SET status = 'failed', completed_at = ?1, \
                         error_code = 'worker_lost', error_message = ?2, lease_until = NULL \
                         WHERE id = ?3",
                        params![now_seconds(), worker_lost(attempts), id],
                    )?;
                    continue;
                }
                transaction.execute(
                    "UPDATE jobs SET status = 'in_progress', worker = ?1, lease_until = ?2, \
                     attempts = attempts + 1 WHERE id = ?3",
                    params![worker, now + lease.as_millis() as i64, id],
                )?;
                let job = Self::get_in(&transaction, &id)?;
                transaction.commit()?;
                return Ok(job);
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
        let changed = self.with(|connection| {
            connection.execute(
                "UPDATE jobs SET lease_until = ?1, progress = ?2 \
                 WHERE id = ?3 AND worker = ?4 AND status = 'in_progress'",
                params![
                    now_millis() + lease.as_millis() as i64,
                    progress,
                    id,
                    worker
                ],
            )
        })?;
        Ok(if changed == 1 {
            Lease::Held
        } else {
            Lease::Lost
        })
    }

    fn complete(&self, id: &str, worker: &str, timing: &Timing) -> Result<Lease, StoreError> {
        let lease = self.finish(id, worker, JobStatus::Completed, None)?;
        self.with(|connection| {
            connection.execute(
                "UPDATE jobs SET run_seconds = ?1, steps = ?2, denoise_seconds = ?3 \
                 WHERE id = ?4 AND worker = ?5",
                params![
                    timing.run_seconds,
                    timing.steps as i64,
                    timing.denoise_seconds,
                    id,
                    worker
                ],
            )
        })?;
        Ok(lease)
    }

    fn fail(&self, id: &str, worker: &str, error: &JobError) -> Result<Lease, StoreError> {
        self.finish(id, worker, JobStatus::Failed, Some(error))
    }

    fn counts(&self) -> Result<Counts, StoreError> {
        self.with(|connection| {
            let mut statement =
                connection.prepare("SELECT status, COUNT(*) FROM jobs GROUP BY status")?;
            let timing = connection.query_row(
                "SELECT COALESCE(SUM(run_seconds), 0), COALESCE(SUM(steps), 0), \
                 COALESCE(SUM(denoise_seconds), 0) FROM jobs WHERE status = 'completed'",
                [],
                |row| {
                    Ok(Timing {
                        run_seconds: row.get(0)?,
                        steps: row.get::<_, i64>(1)?.max(0) as u64,
                        denoise_seconds: row.get(2)?,
                    })
                },
            )?;
            let mut counts = Counts {
                timing,
                ..Counts::default()
            };
            let rows = statement.query_map([], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, usize>(1)?))
            })?;
            for row in rows {
                let (status, count) = row?;
                counts.record(&status, count);
            }
            Ok(counts)
        })
    }
}
