//! `himmel`: Himmel's command line. It parses arguments, wires the library crates together,
//! and prints one clear error (exit code 1) when something goes wrong.

mod bench;
mod compare;
mod convert;
mod device;
mod eval;
mod generate;
mod info;
mod marks;
mod policy;
mod progress;
mod serve;
mod train;
mod verify;
mod world;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Himmel: local-first video generation.
#[derive(Parser)]
#[command(name = "himmel", version, about, long_about = None)]
struct Cli {
    /// Print no progress.
    #[arg(long, short, global = true)]
    quiet: bool,

    /// Where the models run (generate, serve, worker, eval, train, bench): cpu, cuda or cuda:N
    /// (CUDA needs a himmel built with `--features cuda`).
    #[arg(long, global = true, default_value = "cpu")]
    device: device::DeviceChoice,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate a video from a text prompt with the built-in himmel-mini or a Wan 2.1 model.
    Generate(Box<generate::GenerateArgs>),
    /// Convert a video or image between formats, optionally trimming, resizing and retiming it.
    Convert(convert::ConvertArgs),
    /// Print a video's frame count, size, frame rate and duration.
    Info(info::InfoArgs),
    /// The procedural physics world: sample captioned clips, expand prompts.
    World(world::WorldArgs),
    /// Score a himmel-mini model on held-out prompts with the world scorer.
    Eval(eval::EvalArgs),
    /// Train himmel-mini: the autoencoder, then the denoiser and its text encoder.
    Train(train::TrainArgs),
    /// Serve OpenAI's Videos API (`/v1/videos`) with a durable job queue and workers.
    Serve(serve::ServeArgs),
    /// Work the queue of a `himmel serve` data directory from another process.
    Worker(serve::WorkerArgs),
    /// The prompt policy: check a prompt, or measure the policy on labelled prompts.
    Policy(policy::PolicyArgs),
    /// Time a named workload (e.g. `media`: encode and decode speed of every format).
    Bench(bench::BenchArgs),
    /// Find Himmel's marks in a video: the C2PA manifest and the invisible watermark (exit
    /// status 0 marked, 3 unmarked, 4 manifest fails validation).
    Verify(verify::VerifyArgs),
}

/// Fixes the thread count candle asks for before any thread starts: its default, one per
/// physical core, counted once. candle 0.11 reads `RAYON_NUM_THREADS`, and without it parses
/// /proc/cpuinfo again for every matrix product: a fifth of the time of a small model's
/// training step went there.
fn settle_thread_count() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let threads = num_cpus::get_physical().max(1);
        // SAFETY: called first thing in `main`, while this is the process's only thread.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", threads.to_string()) };
    }
}

/// Has glibc keep freed memory for the next allocation instead of handing it back to the
/// system (large blocks mapped afresh for every allocation, the heap's free top trimmed): the
/// VAE frees and allocates tens of megabytes per frame and layer, and faulting those pages in
/// again cost its decode 7% of its time, for 2% more peak memory (BENCHMARKS.md). A server
/// holds on to memory up to its peak between jobs.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called while this is the only thread.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

/// Runs a compute-bound command on a thread of rayon's global pool, so that the kernels'
/// parallel loops inside it split their work there rather than each handing it over to the
/// pool and waiting: with one thread (`RAYON_NUM_THREADS=1`) they run inline, where the
/// hand-overs took a tenth of a training step. The pool's threads get the main thread's stack
/// size (candle's backward pass walks the graph recursively).
fn on_compute_pool<T: Send>(command: impl FnOnce() -> T + Send) -> T {
    // Fails only if the pool already exists, and then it is used as it is.
    let _ = rayon::ThreadPoolBuilder::new()
        .stack_size(8 << 20)
        .build_global();
    rayon::scope(|_| command())
}

fn main() -> ExitCode {
    settle_thread_count();
    keep_freed_memory();
    let cli = Cli::parse();
    let progress = progress::TerminalProgress::new(cli.quiet);
    let device = cli.device;
    let result = match cli.command {
        Command::Generate(args) => generate::run(&args, device, cli.quiet, &progress),
        Command::Convert(args) => convert::run(&args, &progress),
        Command::Info(args) => info::run(&args, &progress),
        Command::Bench(args) => bench::run(&args, device),
        Command::World(args) => world::run(&args, &progress),
        Command::Eval(args) => on_compute_pool(|| eval::run(&args, device, cli.quiet)),
        Command::Train(args) => on_compute_pool(|| train::run_command(&args, device, cli.quiet)),
        Command::Serve(args) => serve::serve(&args, device),
        Command::Policy(args) => policy::run(&args),
        Command::Worker(args) => serve::work(&args, device),
        Command::Verify(args) => match verify::run(&args, &progress) {
            Ok(status) => return status,
            Err(error) => Err(error),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
