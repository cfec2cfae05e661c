//! The `gateway` binary: reads the config, picks the runtime, runs until SIGTERM or Ctrl-C, and
//! reloads on SIGHUP.

use std::path::PathBuf;
use std::process::ExitCode;

use gateway::{Config, Gateway};

/// Exit status for a usage or config error (BSD `EX_USAGE`).
const EX_USAGE: u8 = 64;

const USAGE: &str = "usage: gateway [--check] --config PATH   (or GATEWAY_CONFIG=PATH)";

fn main() -> ExitCode {
    let mut check = false;
    let mut path: Option<PathBuf> = std::env::var_os("GATEWAY_CONFIG").map(PathBuf::from);
    let mut args = std::env::args_os().skip(1);
    while let Some(arg) = args.next() {
        match arg.to_str() {
            Some("--check") => check = true,
            Some("--config") => match args.next() {
                Some(p) => path = Some(PathBuf::from(p)),
                None => return usage("--config needs a path"),
            },
            Some("--help" | "-h") => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            _ => return usage(&format!("unknown argument {arg:?}")),
        }
    }
    let Some(path) = path else {
        return usage("no config file given");
    };
    let config = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("Invalid configuration in {}: {e}", path.display());
            return ExitCode::from(EX_USAGE);
        }
    };
    if check {
        println!("{}: ok", path.display());
        return ExitCode::SUCCESS;
    }

    // Built here, before the runtime: the OTLP exporter runs on its own thread, and the guard
    // is dropped after the runtime so the last spans are flushed.
    let _telemetry = platform_telemetry::init("gateway");
    let tracing = platform_telemetry::export_configured();

    // One worker runs on a current-thread runtime: no work stealing, no cross-thread wakeups,
    // the closest match to one nginx or HAProxy worker.
    let workers = config
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let runtime = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("Failed to start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(config, path, tracing)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gateway: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config, path: PathBuf, tracing: bool) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};

    let gateway = Gateway::build_with_path(config, Some(path))
        .await?
        .with_tracing(tracing);
    tracing::info!(
        message = "Gateway listening.",
        listen = %gateway.local_addr(),
        admin = %gateway.admin_addr()
    );
    let shared = gateway.shared();
    let mut hangup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            // Errors are logged by `reload`; the old config keeps serving.
            let _ = shared.reload();
        }
    });
    let mut terminate = signal(SignalKind::terminate())?;
    gateway
        .run(async move {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        })
        .await
}

fn usage(problem: &str) -> ExitCode {
    eprintln!("gateway: {problem}\n{USAGE}");
    ExitCode::from(EX_USAGE)
}
