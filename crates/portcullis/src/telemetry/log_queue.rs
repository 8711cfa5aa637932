//! Log output off the request path: a formatted line is handed to a bounded queue and one
//! background thread redacts it ([`super::redact`]) and writes it to stderr, batching writes.
//!
//! A call never waits for the terminal, a pipe or journald: when the queue is full the line is
//! dropped and counted, and the writer reports the count in a line of its own as soon as it
//! catches up. Memory stays bounded by the queue's capacity in lines (each line is bounded by
//! the formatter's field sizes).

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Duration;
use tracing_subscriber::fmt::MakeWriter;

/// Lines that may wait for the writer thread.
const CAPACITY: usize = 16 * 1024;

enum Msg {
    Line(Vec<u8>),
    /// Everything sent before this is written; answer on the channel.
    Flush(SyncSender<()>),
}

/// `MakeWriter` whose writers queue each event's bytes for the background thread.
#[derive(Clone)]
pub struct LogQueue {
    tx: SyncSender<Msg>,
    dropped: Arc<AtomicU64>,
}

impl LogQueue {
    /// Start the writer thread over `out` (stderr in the binary).
    pub fn spawn<W: Write + Send + 'static>(out: W) -> io::Result<Self> {
        let (tx, rx) = sync_channel(CAPACITY);
        let dropped = Arc::new(AtomicU64::new(0));
        let d = dropped.clone();
        std::thread::Builder::new()
            .name("portcullis-log".into())
            .spawn(move || write_loop(rx, out, d))?;
        Ok(Self { tx, dropped })
    }

    /// Lines dropped because the queue was full, since start.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Wait (at most `timeout`) until every line queued so far is written.
    pub fn flush(&self, timeout: Duration) {
        let (ack_tx, ack_rx) = sync_channel(1);
        if self.tx.send(Msg::Flush(ack_tx)).is_ok() {
            let _ = ack_rx.recv_timeout(timeout);
        }
    }
}

impl std::fmt::Debug for LogQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogQueue")
            .field("dropped", &self.dropped())
            .finish()
    }
}

fn write_loop<W: Write>(rx: Receiver<Msg>, out: W, dropped: Arc<AtomicU64>) {
    let mut out = super::redact::RedactingWriter::new(io::BufWriter::with_capacity(64 * 1024, out));
    let mut reported = 0u64;
    loop {
        // Block for the first message, then take whatever else is queued before one flush.
        let first = match rx.recv() {
            Ok(m) => m,
            Err(_) => return,
        };
        let mut next = Some(first);
        let mut acks = Vec::new();
        while let Some(m) = next.take() {
            match m {
                Msg::Line(line) => {
                    let _ = out.write_all(&line);
                }
                Msg::Flush(ack) => acks.push(ack),
            }
            next = rx.try_recv().ok();
        }
        let now = dropped.load(Ordering::Relaxed);
        if now > reported {
            let _ = writeln!(
                out,
                r#"{{"level":"WARN","target":"portcullis::telemetry","message":"log lines dropped: the log queue was full","dropped_total":{now}}}"#
            );
            reported = now;
        }
        let _ = out.flush();
        for ack in acks {
            let _ = ack.try_send(());
        }
    }
}

/// One event's bytes, queued when the formatter drops the writer.
pub struct QueuedLine {
    buf: Vec<u8>,
    queue: LogQueue,
}

impl Write for QueuedLine {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for QueuedLine {
    fn drop(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let line = std::mem::take(&mut self.buf);
        match self.queue.tx.try_send(Msg::Line(line)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.queue.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

impl<'a> MakeWriter<'a> for LogQueue {
    type Writer = QueuedLine;
    fn make_writer(&'a self) -> Self::Writer {
        QueuedLine {
            buf: Vec::with_capacity(256),
            queue: self.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, d: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(d);
            Ok(d.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_arrive_redacted_in_order() {
        let sink = Sink::default();
        let q = LogQueue::spawn(sink.clone()).unwrap();
        for i in 0..100 {
            let mut w = q.make_writer();
            writeln!(w, "line {i} token=s3cr3t").unwrap();
        }
        q.flush(Duration::from_secs(5));
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 100);
        assert!(lines[0].starts_with("line 0 ") && lines[99].starts_with("line 99 "));
        assert!(!text.contains("s3cr3t"));
        assert_eq!(q.dropped(), 0);
    }
}
