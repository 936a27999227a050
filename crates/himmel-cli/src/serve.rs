//! `himmel serve`: the OpenAI-compatible Videos API with in-process workers; `himmel worker`:
//! more workers on the same queue.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use candle_core::Device;
use clap::Args;
use himmel_pipeline::mini;
use himmel_pipeline::{ModelSource, Precision};

use crate::device::DeviceChoice;
use crate::generate::DtypeArg;
use himmel_safety::provenance::Credentials;
use himmel_serve::api::{ServerState, router};
use himmel_serve::artifacts::Artifacts;
use himmel_serve::engine::{Engine, MiniEngine, WanEngine};
use himmel_serve::postgres_store::PostgresStore;
use himmel_serve::sqlite::SqliteStore;
use himmel_serve::store::{JobStore, QueueSettings};
use himmel_serve::worker::Worker;

/// The job database's file in the data directory.
const DATABASE_FILE: &str = "himmel.db";

/// How often an idle worker looks for a job.
const IDLE_POLL: Duration = Duration::from_millis(200);

/// Options shared by `serve` and `worker`.
#[derive(Args)]
pub struct QueueArgs {
    /// Data directory: the job database (himmel.db, unless --db names another) and the
    /// finished videos (workers on other machines need it shared).
    #[arg(long, default_value = "himmel-data")]
    data: PathBuf,
    /// The job database: a PostgreSQL URL (`postgres://user:password@host/database`, or
    /// `host=... user=... dbname=...`) for workers on many machines; by default an SQLite
    /// file in the data directory.
    #[arg(long)]
    db: Option<String>,
    /// The model served: `himmel-mini` (the built-in default), a himmel-mini folder, or a
    /// Wan 2.1 diffusers folder (served under its folder's name).
    #[arg(long)]
    model: Option<PathBuf>,
    /// A Wan model's compute precision (transformer and text encoder; the VAE runs in f32);
    /// int8 quantises the transformer blocks' products and keeps the rest in bf16.
    #[arg(long, value_enum, default_value_t = DtypeArg::Bf16)]
    dtype: DtypeArg,
    /// Longest video accepted, in seconds.
    #[arg(long, default_value_t = 20.0)]
    max_seconds: f64,
    /// Most jobs waiting at once; more are answered 429 with Retry-After.
    #[arg(long, default_value_t = 64)]
    max_queued: usize,
    /// How often a job may be started before it fails (a worker that dies loses its lease).
    #[arg(long, default_value_t = 3)]
    max_attempts: u32,
    /// Seconds a job stays leased to a worker without a heartbeat (beats come every third of
    /// it); a dead worker's job is taken over after this long.
    #[arg(long, default_value_t = 30.0)]
    lease_seconds: f64,
    #[command(flatten)]
    marks: crate::marks::MarkArgs,
}

/// Arguments of `himmel serve`.
#[derive(Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8000")]
    listen: String,
    /// Workers in this process (0: separate `himmel worker` processes do the work).
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// An API key clients must send as `Authorization: Bearer KEY` (repeatable; also
    /// HIMMEL_API_KEYS, comma-separated). Without keys the API is open: listen on loopback.
    #[arg(long = "api-key", env = "HIMMEL_API_KEYS", value_delimiter = ',')]
    api_keys: Vec<String>,
    /// A prompt policy file that extends or relaxes the default policy.
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
    #[command(flatten)]
    queue: QueueArgs,
}

/// Arguments of `himmel worker`.
#[derive(Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    queue: QueueArgs,
}

struct Queue {
    store: Arc<dyn JobStore>,
    artifacts: Artifacts,
    model: ServedModel,
    lease: Duration,
    /// What signs the videos' C2PA manifests (none with --no-c2pa).
    credentials: Option<Credentials>,
}

/// The model a queue's workers load.
#[derive(Clone)]
enum ServedModel {
    Mini(PathBuf),
    Wan {
        root: PathBuf,
        name: String,
        precision: Precision,
    },
}

fn choose_model(model: Option<&Path>, dtype: DtypeArg) -> Result<ServedModel> {
    let mini_dir = match model {
        Some(path) if path.as_os_str() != mini::BUILTIN_NAME || path.exists() => {
            if mini::is_mini_dir(path) {
                return Ok(ServedModel::Mini(path.to_path_buf()));
            }
            if !path.join("model_index.json").is_file() {
                bail!(
                    "{} is neither a himmel-mini folder nor a Wan diffusers folder (no model_index.json)",
                    path.display()
                );
            }
            let name = path
                .file_name()
                .map_or_else(|| "wan".into(), |name| name.to_string_lossy().into_owned());
            return Ok(ServedModel::Wan {
                root: path.to_path_buf(),
                name,
                precision: dtype.precision(),
            });
        }
        _ => mini::builtin_dir(),
    };
    if !mini::is_mini_dir(&mini_dir) {
        bail!(
            "the built-in model is not in {}; set {} to the folder that holds himmel-mini",
            mini_dir.display(),
            mini::MODELS_ENV
        );
    }
    Ok(ServedModel::Mini(mini_dir))
}

fn open_queue(args: &QueueArgs) -> Result<Queue> {
    if !(args.max_seconds.is_finite() && args.max_seconds > 0.0) {
        bail!(
            "--max-seconds must be a positive number, got {}",
            args.max_seconds
        );
    }
    if !(args.lease_seconds.is_finite() && args.lease_seconds >= 0.3) {
        bail!(
            "--lease-seconds must be at least 0.3, got {}",
            args.lease_seconds
        );
    }
    std::fs::create_dir_all(&args.data)
        .with_context(|| format!("creating the data directory {}", args.data.display()))?;
    let settings = QueueSettings {
        max_queued: args.max_queued,
        max_attempts: args.max_attempts,
    };
    let store: Arc<dyn JobStore> = match args.db.as_deref() {
        Some(url) if is_postgres(url) => Arc::new(PostgresStore::open(url, settings)?),
        Some(path) => Arc::new(SqliteStore::open(Path::new(path), settings)?),
        None => Arc::new(SqliteStore::open(&args.data.join(DATABASE_FILE), settings)?),
    };
    let artifacts = Artifacts::new(&args.data)
        .with_context(|| format!("creating {}", args.data.join("videos").display()))?;
    let model = choose_model(args.model.as_deref(), args.dtype)?;
    // Workers sharing the data directory share the local signing pair too.
    let (credentials, note) = args.marks.credentials(&args.data.join("c2pa"))?;
    if let Some(note) = note {
        eprintln!("{note}");
    }
    Ok(Queue {
        store,
        artifacts,
        model,
        lease: Duration::from_secs_f64(args.lease_seconds),
        credentials,
    })
}

/// Whether `db` names a PostgreSQL database rather than an SQLite file.
fn is_postgres(db: &str) -> bool {
    db.starts_with("postgres://") || db.starts_with("postgresql://") || db.contains("host=")
}

fn load_engine(model: &ServedModel, max_seconds: f64, device: &Device) -> Result<Box<dyn Engine>> {
    Ok(match model {
        ServedModel::Mini(dir) => Box::new(MiniEngine::load(dir, max_seconds, device)?),
        ServedModel::Wan {
            root,
            name,
            precision,
        } => Box::new(WanEngine::load(
            &ModelSource::Folder(root.clone()),
            name,
            *precision,
            max_seconds,
            device,
        )?),
    })
}

/// Runs `count` workers on threads until `stop` is set; the first uses `loaded` if given.
fn spawn_workers(
    queue: &Queue,
    count: usize,
    max_seconds: f64,
    device: &Device,
    stop: &Arc<AtomicBool>,
    mut loaded: Option<Box<dyn Engine>>,
) -> Result<Vec<std::thread::JoinHandle<()>>> {
    (0..count)
        .map(|_| {
            let engine = match loaded.take() {
                Some(engine) => engine,
                None => load_engine(&queue.model, max_seconds, device)?,
            };
            let mut worker = Worker::new(queue.store.clone(), engine, queue.artifacts.clone())
                .with_lease(queue.lease)
                .with_credentials(queue.credentials.clone());
            let stop = stop.clone();
            Ok(std::thread::spawn(move || {
                worker.run(&stop, IDLE_POLL, &|error| {
                    eprintln!("warning: worker: {error}; retrying");
                });
            }))
        })
        .collect()
}

/// Serves the API until Ctrl-C or SIGTERM, then lets running jobs finish.
pub fn serve(args: &ServeArgs, device: DeviceChoice) -> Result<()> {
    let device = device.open()?;
    let policy = crate::policy::load(args.policy.as_deref())?;
    let queue = open_queue(&args.queue)?;
    let engine = load_engine(&queue.model, args.queue.max_seconds, &device)?;
    let spec = engine.spec().clone();
    let state = Arc::new(ServerState {
        store: queue.store.clone(),
        artifacts: queue.artifacts.clone(),
        models: vec![spec],
        api_keys: args
            .api_keys
            .iter()
            .map(|key| key.trim().to_string())
            .filter(|key| !key.is_empty())
            .collect(),
        policy,
    });
    let stop = Arc::new(AtomicBool::new(false));
    let workers = spawn_workers(
        &queue,
        args.workers,
        args.queue.max_seconds,
        &device,
        &stop,
        Some(engine),
    )?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        eprintln!("listening on http://{}", listener.local_addr()?);
        axum::serve(listener, router(state))
            .with_graceful_shutdown(shutdown_signal())
            .await
            .context("the server stopped")
    })?;
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        let _ = worker.join();
    }
    Ok(())
}

/// Works the queue until Ctrl-C or SIGTERM.
pub fn work(args: &WorkerArgs, device: DeviceChoice) -> Result<()> {
    let device = device.open()?;
    let queue = open_queue(&args.queue)?;
    let stop = Arc::new(AtomicBool::new(false));
    let workers = spawn_workers(&queue, 1, args.queue.max_seconds, &device, &stop, None)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(shutdown_signal());
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        let _ = worker.join();
    }
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
}
