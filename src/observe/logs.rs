//! The process log (env_logger, `RUST_LOG`, default `info`), with a few of Pingora's
//! messages moved to the level they deserve, so that the log at the default level shows
//! only what needs attention. Only WARN and ERROR records from `pingora*` targets are
//! looked at (and formatted for the comparison): rare, off the request path.

use log::{Level, Log, Metadata, Record};

/// (target prefix, message prefix, level it is logged at instead, why).
const DEMOTED: &[(&str, &str, Level)] = &[
    // pingora-cache serialises cached headers without a zstd dictionary unless given one;
    // none is the intended setup for an in-memory cache (logged once, at start-up)
    (
        "pingora_cache",
        "no header compression dictionary loaded",
        Level::Debug,
    ),
    // `-u`: the new process polls the upgrade socket every second until the old one is
    // told (SIGQUIT) to hand over; waiting is the normal course of an upgrade. A hand-over
    // that never comes fails the start with its own error.
    (
        "pingora_core::server::transfer_fd",
        "No incoming socket transfer",
        Level::Debug,
    ),
    // a client's failed TLS (or HTTP/2) handshake: scanners, old clients, plain HTTP sent
    // to the TLS port; the client's problem, not the gateway's
    (
        "pingora_core::services::listening",
        "Downstream handshake error",
        Level::Debug,
    ),
    (
        "pingora_core::services::listening",
        "Downstream handshake timeout",
        Level::Debug,
    ),
    ("pingora_core::apps", "H2 handshake error", Level::Debug),
];

struct Quiet {
    inner: env_logger::Logger,
}

fn demoted(r: &Record) -> Option<Level> {
    if r.level() > Level::Warn || !r.target().starts_with("pingora") {
        return None;
    }
    let owned;
    let msg = match r.args().as_str() {
        Some(s) => s,
        None => {
            owned = r.args().to_string();
            owned.as_str()
        }
    };
    DEMOTED
        .iter()
        .find(|(t, m, _)| r.target().starts_with(t) && msg.starts_with(m))
        .map(|d| d.2)
}

impl Log for Quiet {
    fn enabled(&self, m: &Metadata) -> bool {
        self.inner.enabled(m)
    }

    fn log(&self, r: &Record) {
        let Some(level) = demoted(r) else {
            return self.inner.log(r);
        };
        let meta = Metadata::builder().level(level).target(r.target()).build();
        if self.inner.enabled(&meta) {
            self.inner.log(
                &Record::builder()
                    .metadata(meta)
                    .args(*r.args())
                    .module_path(r.module_path())
                    .file(r.file())
                    .line(r.line())
                    .build(),
            );
        }
    }

    fn flush(&self) {
        self.inner.flush()
    }
}

/// Install the process logger (once, first thing in `main`).
pub fn init() {
    let inner =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).build();
    let max = inner.filter();
    if log::set_boxed_logger(Box::new(Quiet { inner })).is_ok() {
        log::set_max_level(max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn level_of(target: &str, level: Level, msg: std::fmt::Arguments) -> Option<Level> {
        demoted(
            &Record::builder()
                .target(target)
                .level(level)
                .args(msg)
                .build(),
        )
    }

    #[test]
    fn only_the_listed_messages_move() {
        assert_eq!(
            level_of(
                "pingora_core::server::transfer_fd",
                Level::Error,
                format_args!("No incoming socket transfer, sleep {}s and try again", 1)
            ),
            Some(Level::Debug)
        );
        assert_eq!(
            level_of(
                "pingora_proxy",
                Level::Error,
                format_args!("Fail to proxy: {}", "x")
            ),
            None
        );
        // an INFO record is never looked at
        assert_eq!(
            level_of(
                "pingora_cache::meta",
                Level::Info,
                format_args!("no header compression dictionary loaded")
            ),
            None
        );
    }
}
