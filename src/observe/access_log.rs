//! The access log: one JSON line per request, formatted and written by a writer thread
//! fed through a bounded channel. A request never waits on the log: when the channel is
//! full the line is dropped and counted (`portcullis_access_log_dropped_total`).
//! Files are reopened when rotated away (checked every second) and when the configured
//! path changes on reload.

use super::metrics::METRICS;
use crate::runtime::Runtime;
use once_cell::sync::OnceCell;
use serde_json::{json, Map, Value};
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub struct Record {
    pub time: SystemTime,
    pub request_id: String,
    pub trace_id: String,
    pub client_ip: Option<IpAddr>,
    pub identity: Option<String>,
    pub method: http::Method,
    pub path: String,
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

static SINK: OnceCell<SyncSender<Record>> = OnceCell::new();

/// Hand a record to the writer; never blocks.
pub fn submit(r: Record) {
    let Some(tx) = SINK.get() else { return };
    match tx.try_send(r) {
        Ok(()) => {}
        Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
            METRICS.access_log_dropped.inc()
        }
    }
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
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        d.subsec_millis()
    )
}

pub fn to_json(r: &Record) -> Value {
    let mut m = Map::new();
    m.insert("time".into(), json!(rfc3339(r.time)));
    m.insert("request_id".into(), json!(r.request_id));
    m.insert("trace_id".into(), json!(r.trace_id));
    m.insert(
        "client_ip".into(),
        json!(r.client_ip.map(|i| i.to_string())),
    );
    m.insert("identity".into(), json!(r.identity));
    m.insert("method".into(), json!(r.method.as_str()));
    m.insert("path".into(), json!(r.path));
    m.insert("route".into(), json!(r.route.as_deref()));
    m.insert("upstream".into(), json!(r.upstream.as_deref()));
    m.insert("backend".into(), json!(r.backend.map(|b| b.to_string())));
    m.insert("status".into(), json!(r.status));
    m.insert("bytes_in".into(), json!(r.bytes_in));
    m.insert("bytes_out".into(), json!(r.bytes_out));
    m.insert("duration_ms".into(), json!(r.duration_us as f64 / 1000.0));
    m.insert(
        "upstream_ms".into(),
        json!(r.upstream_us.map(|u| u as f64 / 1000.0)),
    );
    m.insert("retries".into(), json!(r.retries));
    m.insert("cache".into(), json!(r.cache));
    m.insert(
        "rate_limit".into(),
        match &r.rate_limit {
            Some((p, rem, limited)) => {
                json!({ "policy": p.as_ref(), "remaining": rem, "limited": limited })
            }
            None => Value::Null,
        },
    );
    if let Some(e) = &r.error {
        m.insert("error".into(), json!(e));
    }
    Value::Object(m)
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

fn write_line(t: &mut Target, line: &[u8]) {
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

fn run_writer(rx: Receiver<Record>, runtime: Arc<Runtime>) {
    let mut path = runtime.snapshot().config.access_log.path.clone();
    let mut target = open(&path);
    let mut last_check = std::time::Instant::now();
    loop {
        match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(r) => {
                if let Some(t) = target.as_mut() {
                    let mut line = serde_json::to_vec(&to_json(&r)).unwrap_or_default();
                    line.push(b'\n');
                    write_line(t, &line);
                    // write what else is queued before flushing
                    while let Ok(r) = rx.try_recv() {
                        let mut line = serde_json::to_vec(&to_json(&r)).unwrap_or_default();
                        line.push(b'\n');
                        write_line(t, &line);
                    }
                    flush(t);
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        if last_check.elapsed() >= Duration::from_secs(1) {
            last_check = std::time::Instant::now();
            let want = runtime.snapshot().config.access_log.path.clone();
            if want != path || target.as_ref().is_none_or(rotated) {
                if let Some(t) = target.as_mut() {
                    flush(t);
                }
                path = want;
                target = open(&path);
            }
        }
    }
}

/// Start the writer (called from a background service, after daemonisation).
pub fn start(runtime: Arc<Runtime>) {
    let cfg = runtime.snapshot().config.access_log.clone();
    if !cfg.enabled {
        return;
    }
    let (tx, rx) = sync_channel(cfg.buffer.max(16));
    if SINK.set(tx).is_err() {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("access-log".into())
        .spawn(move || run_writer(rx, runtime));
    if let Err(e) = spawned {
        log::error!("access log: cannot start the writer thread: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        let t = std::time::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(rfc3339(t), "2023-11-14T22:13:20.123Z");
    }
}
