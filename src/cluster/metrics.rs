//! The fleet's metrics, in the gateway's registry (exported once a `cluster` is configured).

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts};
use std::sync::LazyLock;

pub struct FleetMetrics {
    pub members: IntGauge,
    pub connected: IntGauge,
    pub config_drift: IntGauge,
    pub sync_errors: IntCounter,
    pub pending: IntGauge,
    pub dropped: IntCounter,
    pub purges: IntCounterVec,
    pub registry_changes: IntCounter,
}

// Definitions are constants: a bad one fails the first test that configures a cluster.
#[allow(clippy::panic)]
fn reg<T: prometheus::core::Collector + Clone + 'static>(
    name: &str,
    m: Result<T, prometheus::Error>,
) -> T {
    let m = m.unwrap_or_else(|e| panic!("metric {name}: {e}"));
    let _ = crate::observe::metrics::METRICS
        .registry
        .register(Box::new(m.clone()));
    m
}

pub static FLEET_METRICS: LazyLock<FleetMetrics> = LazyLock::new(|| {
    let m = new();
    // every result from the start, at 0, so that rates and alerts have a series
    for r in ["published", "applied", "full"] {
        m.purges.with_label_values(&[r]);
    }
    m
});

fn new() -> FleetMetrics {
    FleetMetrics {
        members: reg(
            "portcullis_cluster_members",
            IntGauge::new(
                "portcullis_cluster_members",
                "Live fleet members (this one included) seen in the last sync with Redis",
            ),
        ),
        connected: reg(
            "portcullis_cluster_connected",
            IntGauge::new(
                "portcullis_cluster_connected",
                "1 while the last sync with the fleet's Redis succeeded",
            ),
        ),
        config_drift: reg(
            "portcullis_cluster_config_drift",
            IntGauge::new(
                "portcullis_cluster_config_drift",
                "1 when the live members serve more than one config hash",
            ),
        ),
        sync_errors: reg(
            "portcullis_cluster_sync_errors_total",
            IntCounter::new(
                "portcullis_cluster_sync_errors_total",
                "Failed syncs (connect or round trip) with the fleet's Redis",
            ),
        ),
        pending: reg(
            "portcullis_cluster_pending_operations",
            IntGauge::new(
                "portcullis_cluster_pending_operations",
                "Registrations and purges made here and not yet written to Redis",
            ),
        ),
        dropped: reg(
            "portcullis_cluster_dropped_operations_total",
            IntCounter::new(
                "portcullis_cluster_dropped_operations_total",
                "Queued operations dropped because the queue (cluster.queue) was full",
            ),
        ),
        purges: reg(
            "portcullis_cluster_purges_total",
            IntCounterVec::new(
                Opts::new(
                    "portcullis_cluster_purges_total",
                    "Fleet purges: published here, applied from another member, or a full purge \
                 because the purge log was trimmed past this instance's position",
                ),
                &["result"],
            ),
        ),
        registry_changes: reg(
            "portcullis_cluster_registry_changes_total",
            IntCounter::new(
                "portcullis_cluster_registry_changes_total",
                "Times the shared registry changed an upstream's backends here",
            ),
        ),
    }
}
