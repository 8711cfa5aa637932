//! The `portcullis` binary: parses the command line, turns signals into the shutdown future
//! and hands both to [`portcullis::cli::run`]. The grammar, the dispatch and everything else
//! live in the library.

use std::process::ExitCode;

/// mimalloc rather than glibc malloc: malloc/free were ~8% of the gateway's profile under the
/// GET benchmark, and mimalloc cut gateway CPU per call by ~10% there (bench/README.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    portcullis::cli::run(portcullis::cli::parse(), shutdown_signal())
}

/// Resolves on the first SIGINT or SIGTERM; a second one exits at once.
///
/// The listeners are registered once, before the first signal, and reused for the second: a
/// listener registered only after the first signal would miss a second one sent right away,
/// and with the handler installed the default action would not end the process either.
async fn shutdown_signal() {
    let mut signals = Signals::new();
    signals.recv().await;
    tracing::info!("signal received: draining (send again to exit now)");
    tokio::spawn(async move {
        signals.recv().await;
        tracing::warn!("second signal: exiting immediately");
        std::process::exit(130);
    });
}

/// SIGTERM and SIGINT (Ctrl-C elsewhere), listened to from creation on.
struct Signals {
    #[cfg(unix)]
    unix: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl Signals {
    fn new() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let unix = match (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) {
                (Ok(term), Ok(int)) => Some((term, int)),
                _ => None,
            };
            Self { unix }
        }
        #[cfg(not(unix))]
        {
            Self {}
        }
    }

    async fn recv(&mut self) {
        #[cfg(unix)]
        if let Some((term, int)) = &mut self.unix {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}
