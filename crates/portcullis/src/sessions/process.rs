//! Launching one worker process for one session, as a careful operator would: the socket is
//! bound in a private directory before the process exists, the command line carries nothing
//! secret, the environment is cleared but for an allowlist and the nonce, the process leads
//! its own group so one signal takes the whole tree, and its output reaches the log redacted
//! and rate-bounded.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::UnixListener;
use tokio::sync::watch;

use super::config::BackendConfig;

/// The environment variable that carries the one-time nonce.
pub const NONCE_ENV: &str = "PORTCULLIS_WORKER_NONCE";

/// Longest line of worker output copied into the log; the rest of the line is cut.
const MAX_LINE: usize = 4096;

/// Unix socket paths are limited to 108 bytes on Linux (`sun_path`), fewer elsewhere.
const MAX_SOCKET_PATH: usize = 100;

/// How a worker process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// It exited with this code.
    Code(i32),
    /// A signal ended it.
    Signal(i32),
    /// Waiting for it failed.
    Unknown,
}

impl Exit {
    /// The documented meaning of a worker exit code, for the fault message.
    pub fn describe(&self) -> String {
        match self {
            Self::Code(0) => "exit code 0 (ok)".into(),
            Self::Code(1) => "exit code 1 (unexpected failure)".into(),
            Self::Code(2) => "exit code 2 (bad arguments)".into(),
            Self::Code(3) => "exit code 3 (unsupported protocol version)".into(),
            Self::Code(4) => "exit code 4 (missing nonce)".into(),
            Self::Code(c) => format!("exit code {c} (undocumented)"),
            Self::Signal(s) => format!("killed by signal {s}"),
            Self::Unknown => "exit status unknown".into(),
        }
    }
}

/// Why a worker could not be launched.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The executable is missing or not executable.
    #[error("executable {0} does not exist or is not executable")]
    NotExecutable(String),
    /// The socket directory or socket could not be made.
    #[error("cannot prepare the session socket: {0}")]
    Socket(String),
    /// The process could not be spawned.
    #[error("cannot spawn the worker: {0}")]
    Spawn(String),
}

/// A session's private directory and its bound socket; removed on drop.
#[derive(Debug)]
pub struct SocketDir {
    dir: PathBuf,
    path: PathBuf,
}

impl SocketDir {
    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Make a fresh 0700 directory under `base` and bind the socket in it.
    pub fn bind(base: &Path) -> Result<(Self, UnixListener), LaunchError> {
        use std::os::unix::fs::DirBuilderExt;
        let name = format!("portcullis-{}", hex::encode(rand::random::<[u8; 12]>()));
        let dir = base.join(name);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| LaunchError::Socket(format!("{}: {e}", dir.display())))?;
        let path = dir.join("w.sock");
        let me = Self { dir, path };
        if me.path.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(LaunchError::Socket(format!(
                "{} is longer than {MAX_SOCKET_PATH} bytes (set sessions.socket_dir)",
                me.path.display()
            )));
        }
        let listener = UnixListener::bind(&me.path)
            .map_err(|e| LaunchError::Socket(format!("{}: {e}", me.path.display())))?;
        Ok((me, listener))
    }
}

impl Drop for SocketDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// A launched worker: its process group and how it ended.
#[derive(Debug, Clone)]
pub struct Worker {
    /// The process id, which is also its process group id.
    pub pid: u32,
    exit: watch::Receiver<Option<Exit>>,
}

impl Worker {
    /// Send SIGKILL to the whole process group (the worker and everything it started that
    /// stayed in its group). Harmless when the group is already gone.
    pub fn kill_tree(&self) {
        if let Some(pid) = i32::try_from(self.pid)
            .ok()
            .and_then(rustix::process::Pid::from_raw)
        {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
    }

    /// How it ended, if it has.
    pub fn exit(&self) -> Option<Exit> {
        self.exit.borrow().clone()
    }

    /// Wait until it has exited, at most `limit`.
    pub async fn wait(&self, limit: Duration) -> Option<Exit> {
        let mut rx = self.exit.clone();
        let r = tokio::time::timeout(limit, async {
            rx.wait_for(|e| e.is_some()).await.map(|e| e.clone())
        })
        .await;
        match r {
            Ok(Ok(e)) => e,
            _ => self.exit(),
        }
    }

    /// Wait until it has exited.
    pub async fn exited(&self) -> Exit {
        let mut rx = self.exit.clone();
        let seen = rx.wait_for(|e| e.is_some()).await.map(|e| e.clone());
        match seen {
            Ok(e) => e.unwrap_or(Exit::Unknown),
            Err(_) => self.exit().unwrap_or(Exit::Unknown),
        }
    }

    /// Kill the tree and wait (at most `limit`) for the worker to be reaped.
    pub async fn kill_and_wait(&self, limit: Duration) -> Option<Exit> {
        self.kill_tree();
        self.wait(limit).await
    }
}

/// What a launch needs besides the backend.
#[derive(Debug)]
pub struct Launch<'a> {
    /// The session id (argv).
    pub session_id: &'a str,
    /// The socket (argv).
    pub socket: &'a Path,
    /// The one-time nonce (environment only).
    pub nonce: &'a str,
    /// Lines per second of output copied to the log.
    pub lines_per_second: u32,
}

/// The argv of a worker: the operator's command, then exactly the three arguments of the
/// protocol. Safe to log: it carries no secret.
pub fn argv(backend: &BackendConfig, session_id: &str, socket: &Path) -> Vec<String> {
    let mut v = backend.command.clone();
    v.extend([
        "--session-id".into(),
        session_id.into(),
        "--socket".into(),
        socket.display().to_string(),
        "--protocol-version".into(),
        portcullis_link::worker::PROTOCOL_VERSION.to_string(),
    ]);
    v
}

fn executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Spawn the worker of `l.session_id`. The socket must already be bound.
pub fn spawn(backend: &BackendConfig, l: &Launch<'_>) -> Result<Worker, LaunchError> {
    let argv = argv(backend, l.session_id, l.socket);
    let exe = &argv[0];
    if !executable(Path::new(exe)) {
        return Err(LaunchError::NotExecutable(exe.clone()));
    }
    let mut cmd = tokio::process::Command::new(exe);
    cmd.args(&argv[1..])
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own group: the group id is its pid, and one signal reaches its whole tree.
        .process_group(0)
        .kill_on_drop(true);
    for name in &backend.env {
        if let Some(v) = std::env::var_os(name) {
            cmd.env(name, v);
        }
    }
    cmd.env(NONCE_ENV, l.nonce);
    if let Some(dir) = &backend.working_dir {
        cmd.current_dir(dir);
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| LaunchError::Spawn(format!("{exe}: {e}")))?;
    let Some(pid) = child.id() else {
        return Err(LaunchError::Spawn(format!("{exe}: exited at once")));
    };
    let session: Arc<str> = l.session_id.into();
    let nonce: Arc<str> = l.nonce.into();
    let budget = Arc::new(OutputBudget::new(l.lines_per_second));
    if let Some(out) = child.stdout.take() {
        tokio::spawn(copy_output(
            out,
            "stdout",
            session.clone(),
            nonce.clone(),
            budget.clone(),
        ));
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(copy_output(err, "stderr", session.clone(), nonce, budget));
    }
    let (tx, rx) = watch::channel(None);
    tokio::spawn(async move {
        use std::os::unix::process::ExitStatusExt;
        let exit = match child.wait().await {
            Ok(s) => match (s.code(), s.signal()) {
                (Some(c), _) => Exit::Code(c),
                (None, Some(sig)) => Exit::Signal(sig),
                _ => Exit::Unknown,
            },
            Err(_) => Exit::Unknown,
        };
        tracing::debug!(session = %session, pid, exit = %exit.describe(), "worker exited");
        let _ = tx.send(Some(exit));
    });
    Ok(Worker { pid, exit: rx })
}

/// A per-worker budget of log lines per second, shared by its stdout and stderr.
#[derive(Debug)]
struct OutputBudget {
    per_second: u32,
    state: std::sync::Mutex<(tokio::time::Instant, u32, u64)>,
}

impl OutputBudget {
    fn new(per_second: u32) -> Self {
        Self {
            per_second,
            state: std::sync::Mutex::new((tokio::time::Instant::now(), 0, 0)),
        }
    }

    /// May one more line be logged now? Returns the lines suppressed since the last one.
    fn take(&self) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = tokio::time::Instant::now();
        if now.duration_since(s.0) >= Duration::from_secs(1) {
            s.0 = now;
            s.1 = 0;
        }
        if s.1 >= self.per_second {
            s.2 += 1;
            return None;
        }
        s.1 += 1;
        Some(std::mem::take(&mut s.2))
    }
}

async fn copy_output(
    mut r: impl tokio::io::AsyncRead + Unpin,
    stream: &'static str,
    session: Arc<str>,
    nonce: Arc<str>,
    budget: Arc<OutputBudget>,
) {
    let mut buf = vec![0u8; 8192];
    let mut line: Vec<u8> = Vec::with_capacity(256);
    let mut cut = false;
    let emit = |line: &[u8], cut: bool| {
        let Some(suppressed) = budget.take() else {
            return;
        };
        let text = String::from_utf8_lossy(line);
        let text = text.replace(&*nonce, "***");
        let text = crate::telemetry::redact::redact(&text);
        tracing::info!(session = %session, stream, suppressed, truncated = cut, line = %text, "worker output");
    };
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        for &b in &buf[..n] {
            if b == b'\n' {
                emit(&line, cut);
                line.clear();
                cut = false;
            } else if line.len() < MAX_LINE {
                line.push(b);
            } else {
                cut = true;
            }
        }
    }
    if !line.is_empty() {
        emit(&line, cut);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv_carries_only_the_protocol_arguments_after_the_command() {
        let b = BackendConfig::new(vec!["/bin/w".into(), "--mode".into(), "x".into()]);
        assert_eq!(
            argv(&b, "n.1", Path::new("/tmp/d/w.sock")),
            [
                "/bin/w",
                "--mode",
                "x",
                "--session-id",
                "n.1",
                "--socket",
                "/tmp/d/w.sock",
                "--protocol-version",
                "1"
            ]
        );
    }

    #[test]
    fn exit_codes_are_described_as_documented() {
        assert_eq!(Exit::Code(4).describe(), "exit code 4 (missing nonce)");
        assert_eq!(Exit::Signal(9).describe(), "killed by signal 9");
    }

    #[tokio::test]
    async fn the_socket_directory_is_private_and_removed_on_drop() {
        use std::os::unix::fs::PermissionsExt;
        let base = tempfile::tempdir().unwrap();
        let (dir, _l) = SocketDir::bind(base.path()).unwrap();
        let parent = dir.path().parent().unwrap().to_path_buf();
        let mode = std::fs::metadata(&parent).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        assert!(dir.path().exists());
        drop(dir);
        assert!(!parent.exists());
    }

    #[derive(Clone, Default)]
    struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn worker_output_reaches_the_log_with_the_session_id_and_without_the_nonce() {
        let captured = Captured::default();
        let c = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || c.clone())
            .with_ansi(false)
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let nonce = "0f1e2d3c4b5a69788796a5b4c3d2e1f0";
        let long = "x".repeat(MAX_LINE + 10);
        let text = format!("starting with {nonce} in hand\npassword=hunter2\n{long}\nlast");
        copy_output(
            text.as_bytes(),
            "stderr",
            "node.s1".into(),
            nonce.into(),
            Arc::new(OutputBudget::new(100)),
        )
        .await;
        let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        assert!(!log.contains(nonce), "{log}");
        assert!(!log.contains("hunter2"), "{log}");
        assert!(log.contains("starting with *** in hand"), "{log}");
        assert_eq!(log.matches("session=node.s1").count(), 4, "{log}");
        assert!(log.contains("truncated=true"), "{log}");
        assert!(!log.contains(&long), "a line is cut at 4 KiB");
    }

    #[tokio::test(start_paused = true)]
    async fn output_is_bounded_per_second() {
        let b = OutputBudget::new(2);
        assert_eq!(b.take(), Some(0));
        assert_eq!(b.take(), Some(0));
        assert_eq!(b.take(), None);
        assert_eq!(b.take(), None);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(b.take(), Some(2));
    }
}
