//! The access log: one JSON line per request, formatted and written by a writer thread
//! fed through a bounded channel and written in batches (the writer naps 20 ms after each).
//! A request never waits on the log: when the channel is full the line is dropped and
//! counted (`portcullis_access_log_dropped_total`).
//! Files are reopened when rotated away (checked every second) and when the configured
//! path changes on reload.

use super::metrics::METRICS;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::sync::mpsc::{
    sync_channel, Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError,
};
use std::sync::Arc;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

pub struct Record {
    pub time: SystemTime,
    pub request_id: String,
    pub trace_id: String,
    pub client_ip: Option<IpAddr>,
    pub identity: Option<String>,
    pub method: http::Method,
    pub path: String,
    /// The query as forwarded, with the route's `log_redact_query` values replaced.
    pub query: Option<String>,
    pub route: Option<Arc<str>>,
    pub upstream: Option<Arc<str>>,
    pub backend: Option<SocketAddr>,
    pub status: u16,
    pub bytes_in: usize,
    pub bytes_out: usize,
    pub duration_us: u64,
    pub upstream_us: Option<u64>,
    pub retries: u32,
    pub cache: Option<&'static str>,
    /// (policy, remaining, limited)
    pub rate_limit: Option<(Arc<str>, u64, bool)>,
    pub error: Option<String>,
}

/// What the writer receives: a line, or a request to write everything before it.
/// Unboxed: a line costs no allocation; the channel's slots were Record-sized before.
#[allow(clippy::large_enum_variant)]
enum Msg {
    Line(Record),
    Flush(SyncSender<()>),
}

static SINK: OnceLock<SyncSender<Msg>> = OnceLock::new();

/// Set when the process is about to exit: the writer naps 1 ms between batches.
static EXITING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

type Phases = tokio::sync::broadcast::Receiver<pingora_core::server::ExecutionPhase>;

/// Pingora's execution phases, for the writer (see [`watch_phases`]).
static PHASES: std::sync::Mutex<Option<Phases>> = std::sync::Mutex::new(None);

/// Give the writer Pingora's execution phases: once the runtimes shut down (the process
/// exits right after), it naps one millisecond between batches instead of 20, so that the
/// lines of the last requests reach the log.
pub fn watch_phases(rx: Phases) {
    if let Ok(mut p) = PHASES.lock() {
        *p = Some(rx);
    }
}

/// Whether `rx` has announced the runtimes' shutdown (or the end).
fn exiting(rx: &mut Phases) -> bool {
    use pingora_core::server::ExecutionPhase;
    use tokio::sync::broadcast::error::TryRecvError as Phase;
    loop {
        match rx.try_recv() {
            Ok(ExecutionPhase::ShutdownRuntimes | ExecutionPhase::Terminated) => return true,
            Ok(_) | Err(Phase::Lagged(_)) => {}
            Err(Phase::Empty | Phase::Closed) => return false,
        }
    }
}

/// Hand a record to the writer; never blocks.
pub fn submit(r: Record) {
    let Some(tx) = SINK.get() else { return };
    match tx.try_send(Msg::Line(r)) {
        Ok(()) => {}
        Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
            METRICS.access_log_dropped.inc()
        }
    }
}

/// Wait (at most `timeout`) until every line submitted so far is written and flushed:
/// called just before the process exits on its own.
pub fn drain(timeout: Duration) {
    EXITING.store(true, std::sync::atomic::Ordering::Relaxed);
    let Some(tx) = SINK.get() else { return };
    let deadline = std::time::Instant::now() + timeout;
    let (ack_tx, ack_rx) = sync_channel(1);
    let mut msg = Msg::Flush(ack_tx);
    loop {
        match tx.try_send(msg) {
            Ok(()) => break,
            Err(TrySendError::Full(m)) if std::time::Instant::now() < deadline => {
                msg = m;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(_) => return,
        }
    }
    let left = deadline.saturating_duration_since(std::time::Instant::now());
    let _ = ack_rx.recv_timeout(left);
}

pub fn enabled() -> bool {
    SINK.get().is_some()
}

fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // civil from days (Howard Hinnant)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    // `YYYY-MM-DDTHH:MM:SS.mmmZ`, digit by digit (one line per request)
    let mut out = String::with_capacity(24);
    let mut digits = |v: i64, width: usize, sep: char| {
        let v = v.max(0) as u64;
        let mut b = itoa::Buffer::new();
        let s = b.format(v);
        for _ in s.len()..width {
            out.push('0');
        }
        out.push_str(s);
        if sep != '\0' {
            out.push(sep);
        }
    };
    digits(y, 4, '-');
    digits(m, 2, '-');
    digits(day, 2, 'T');
    digits(rem / 3600, 2, ':');
    digits((rem % 3600) / 60, 2, ':');
    digits(rem % 60, 2, '.');
    digits(i64::from(d.subsec_millis()), 3, 'Z');
    out
}

/// `123.456` from microseconds: milliseconds with three decimals.
fn write_ms(out: &mut Vec<u8>, us: u64) {
    let mut b = itoa::Buffer::new();
    out.extend_from_slice(b.format(us / 1000).as_bytes());
    out.push(b'.');
    let frac = us % 1000;
    out.extend_from_slice(match frac {
        0..=9 => b"00",
        10..=99 => b"0",
        _ => b"",
    });
    out.extend_from_slice(b.format(frac).as_bytes());
}

fn write_num(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

/// Append one JSON line for `r` to `out`, field by field (no intermediate map).
pub fn write_line(r: &Record, out: &mut Vec<u8>) {
    fn s(out: &mut Vec<u8>, v: &str) {
        let _ = serde_json::to_writer(&mut *out, v);
    }
    fn opt(out: &mut Vec<u8>, v: Option<&str>) {
        match v {
            Some(v) => s(out, v),
            None => out.extend_from_slice(b"null"),
        }
    }
    out.extend_from_slice(b"{\"time\":");
    s(out, &rfc3339(r.time));
    out.extend_from_slice(b",\"request_id\":");
    s(out, &r.request_id);
    out.extend_from_slice(b",\"trace_id\":");
    s(out, &r.trace_id);
    out.extend_from_slice(b",\"client_ip\":");
    match r.client_ip {
        Some(ip) => {
            out.push(b'"');
            out.extend_from_slice(crate::hdr::ip_header(ip).as_bytes());
            out.push(b'"');
        }
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"identity\":");
    opt(out, r.identity.as_deref());
    out.extend_from_slice(b",\"method\":");
    s(out, r.method.as_str());
    out.extend_from_slice(b",\"path\":");
    s(out, &r.path);
    out.extend_from_slice(b",\"query\":");
    opt(out, r.query.as_deref());
    out.extend_from_slice(b",\"route\":");
    opt(out, r.route.as_deref());
    out.extend_from_slice(b",\"upstream\":");
    opt(out, r.upstream.as_deref());
    out.extend_from_slice(b",\"backend\":");
    match r.backend {
        Some(b) => {
            out.push(b'"');
            out.extend_from_slice(crate::hdr::socket_addr_header(b).as_bytes());
            out.push(b'"');
        }
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"status\":");
    write_num(out, u64::from(r.status));
    out.extend_from_slice(b",\"bytes_in\":");
    write_num(out, r.bytes_in as u64);
    out.extend_from_slice(b",\"bytes_out\":");
    write_num(out, r.bytes_out as u64);
    out.extend_from_slice(b",\"duration_ms\":");
    write_ms(out, r.duration_us);
    out.extend_from_slice(b",\"upstream_ms\":");
    match r.upstream_us {
        Some(u) => write_ms(out, u),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"retries\":");
    write_num(out, u64::from(r.retries));
    out.extend_from_slice(b",\"cache\":");
    opt(out, r.cache);
    out.extend_from_slice(b",\"rate_limit\":");
    match &r.rate_limit {
        Some((p, rem, limited)) => {
            out.extend_from_slice(b"{\"policy\":");
            s(out, p);
            out.extend_from_slice(b",\"remaining\":");
            write_num(out, *rem);
            out.extend_from_slice(if *limited {
                b",\"limited\":true}"
            } else {
                b",\"limited\":false}"
            });
        }
        None => out.extend_from_slice(b"null"),
    }
    if let Some(e) = &r.error {
        out.extend_from_slice(b",\"error\":");
        s(out, e);
    }
    out.extend_from_slice(b"}\n");
}

enum Target {
    Stdout(std::io::BufWriter<std::io::Stdout>),
    File {
        path: String,
        out: std::io::BufWriter<std::fs::File>,
        ino: u64,
    },
}

fn open(path: &str) -> Option<Target> {
    if path == "stdout" || path == "-" {
        return Some(Target::Stdout(std::io::BufWriter::with_capacity(
            64 * 1024,
            std::io::stdout(),
        )));
    }
    match std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        Ok(f) => {
            use std::os::unix::fs::MetadataExt;
            let ino = f.metadata().map(|m| m.ino()).unwrap_or(0);
            Some(Target::File {
                path: path.to_string(),
                out: std::io::BufWriter::with_capacity(64 * 1024, f),
                ino,
            })
        }
        Err(e) => {
            log::error!("access log: cannot open {path}: {e}");
            None
        }
    }
}

fn rotated(t: &Target) -> bool {
    use std::os::unix::fs::MetadataExt;
    match t {
        Target::File { path, ino, .. } => std::fs::metadata(path)
            .map(|m| m.ino() != *ino)
            .unwrap_or(true),
        Target::Stdout(_) => false,
    }
}

fn write_out(t: &mut Target, line: &[u8]) {
    let r = match t {
        Target::Stdout(w) => w.write_all(line),
        Target::File { out, .. } => out.write_all(line),
    };
    if let Err(e) = r {
        log::warn!("access log write failed: {e}");
    }
}

fn flush(t: &mut Target) {
    let _ = match t {
        Target::Stdout(w) => w.flush(),
        Target::File { out, .. } => out.flush(),
    };
}

/// After writing a batch the writer naps this long before it listens again. Requests
/// arriving meanwhile queue without waking it: under load it wakes about 50 times a second,
/// not once per request (a futex wake and a context switch each). An idle writer is woken by
/// the next line and writes it at once.
const BATCH_INTERVAL: Duration = Duration::from_millis(20);

fn run_writer(rx: Receiver<Msg>, current: LogConfig) {
    let mut path = current().path;
    let mut target = open(&path);
    let mut last_check = std::time::Instant::now();
    let mut line = Vec::with_capacity(128 * 1024);
    let mut phases = PHASES.lock().ok().and_then(|mut p| p.take());
    let mut interval = BATCH_INTERVAL;
    // flush requests seen in this batch, acknowledged once it is written
    let mut acks: Vec<SyncSender<()>> = Vec::new();
    loop {
        let first = match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(m) => Some(m),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        line.clear();
        let got = first.is_some();
        let mut next = first;
        let mut disconnected = false;
        while let Some(m) = next.take() {
            match m {
                Msg::Line(r) => {
                    if let Some(t) = target.as_mut() {
                        write_line(&r, &mut line);
                        if line.len() > 64 * 1024 {
                            write_out(t, &line);
                            line.clear();
                        }
                    }
                }
                Msg::Flush(ack) => acks.push(ack),
            }
            match rx.try_recv() {
                Ok(m) => next = Some(m),
                Err(TryRecvError::Empty) => {}
                Err(TryRecvError::Disconnected) => disconnected = true,
            }
        }
        if let Some(t) = target.as_mut() {
            if !line.is_empty() {
                write_out(t, &line);
            }
            if !line.is_empty() || !acks.is_empty() {
                flush(t);
            }
        }
        for ack in acks.drain(..) {
            let _ = ack.try_send(());
        }
        if disconnected {
            return;
        }
        if last_check.elapsed() >= Duration::from_secs(1) {
            last_check = std::time::Instant::now();
            let want = current().path;
            if want != path || target.as_ref().is_none_or(rotated) {
                if let Some(t) = target.as_mut() {
                    flush(t);
                }
                path = want;
                target = open(&path);
            }
        }
        if phases.as_mut().is_some_and(exiting)
            || EXITING.load(std::sync::atomic::Ordering::Relaxed)
        {
            interval = Duration::from_millis(1);
            phases = None;
        }
        if got {
            std::thread::sleep(interval);
        }
    }
}

/// The access-log settings of the config being served now; the writer asks once a second
/// so that a reload can move the file.
pub type LogConfig = Box<dyn Fn() -> crate::config::AccessLogConfig + Send>;

/// The writer's end of the queue between [`prepare`] and [`start`].
static PENDING: std::sync::Mutex<Option<Receiver<Msg>>> = std::sync::Mutex::new(None);

/// Open the queue before the listeners start, so that no request is served while lines
/// would still be dropped; they wait there (bounded by `buffer`) until the writer starts.
pub fn prepare(cfg: &crate::config::AccessLogConfig) {
    if !cfg.enabled {
        return;
    }
    let (tx, rx) = sync_channel(cfg.buffer.max(16));
    if SINK.set(tx).is_err() {
        return;
    }
    if let Ok(mut p) = PENDING.lock() {
        *p = Some(rx);
    }
}

/// Start the writer on the queue [`prepare`] opened (called from a background service,
/// after daemonisation: a thread started before the fork would not survive it).
pub fn start(current: LogConfig) {
    let Some(rx) = PENDING.lock().ok().and_then(|mut p| p.take()) else {
        return;
    };
    let spawned = std::thread::Builder::new()
        .name("access-log".into())
        .spawn(move || run_writer(rx, current));
    if let Err(e) = spawned {
        log::error!("access log: cannot start the writer thread: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_json() {
        let r = Record {
            time: std::time::UNIX_EPOCH,
            request_id: "id\"1".into(),
            trace_id: "t".into(),
            client_ip: Some("10.0.0.1".parse().unwrap()),
            identity: None,
            method: http::Method::GET,
            path: "/a\\b".into(),
            query: Some("a=1".into()),
            route: Some("r".into()),
            upstream: None,
            backend: Some("127.0.0.1:80".parse().unwrap()),
            status: 200,
            bytes_in: 1,
            bytes_out: 2,
            duration_us: 1500,
            upstream_us: Some(1000),
            retries: 0,
            cache: Some("HIT"),
            rate_limit: Some(("p".into(), 3, false)),
            error: None,
        };
        let mut out = Vec::new();
        write_line(&r, &mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["request_id"], "id\"1");
        assert_eq!(v["path"], "/a\\b");
        assert_eq!(v["duration_ms"], 1.5);
        assert_eq!(v["rate_limit"]["remaining"], 3);
        assert_eq!(v["upstream"], serde_json::Value::Null);
        assert!(out.ends_with(b"}\n"));
    }

    #[test]
    fn timestamps() {
        let t = std::time::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(rfc3339(t), "2023-11-14T22:13:20.123Z");
    }
}
