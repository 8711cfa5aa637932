//! `progress-worker`: run by the gateway, one process per session (see the crate's library).

fn main() -> std::process::ExitCode {
    progress_worker::worker().main()
}
