//! The metrics of the connections to providers: how many are open, how often a call waited
//! because the pool was at its bound, and how often a request the provider never processed
//! was sent again.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeploymentLabels {
    deployment: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProtocolLabels {
    /// `h1` or `h2`.
    protocol: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    /// `refused_stream`, `goaway`, `closed_connection` or `stale_connection`.
    reason: &'static str,
}

/// Pool waits from 1ms to about 30s, doubling.
fn wait_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

pub struct UpstreamMetrics {
    connections: Family<ProtocolLabels, Gauge>,
    waits: Family<DeploymentLabels, Counter>,
    wait_seconds: Family<DeploymentLabels, Histogram, fn() -> Histogram>,
    resends: Family<ReasonLabels, Counter>,
}

impl UpstreamMetrics {
    pub(super) fn register(registry: &mut Registry) -> UpstreamMetrics {
        let connections = Family::default();
        registry.register(
            "upstream_connections",
            "Connections to providers open, by protocol (h1, h2)",
            connections.clone(),
        );
        let waits = Family::default();
        registry.register(
            "upstream_pool_waits",
            "Requests that waited for a connection because the pool to their provider was at router_settings.pool_max_connections (HTTP/1.1) or pool_max_http2_connections (HTTP/2), every connection at the provider's stream limit: the router's saturation, never counted against the deployment",
            waits.clone(),
        );
        let wait_seconds: Family<DeploymentLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(wait_histogram);
        registry.register(
            "upstream_pool_wait_seconds",
            "How long those requests waited, whether they then got a connection or their deadline passed",
            wait_seconds.clone(),
        );
        let resends = Family::default();
        registry.register(
            "upstream_resends",
            "Requests the provider never processed, sent again at once on another connection without counting a retry, by reason: refused_stream (RST_STREAM REFUSED_STREAM), goaway (above a GOAWAY's last stream id), closed_connection or stale_connection (closed before the request was written)",
            resends.clone(),
        );
        UpstreamMetrics {
            connections,
            waits,
            wait_seconds,
            resends,
        }
    }

    pub fn connection_opened(&self, protocol: &'static str) {
        self.connections
            .get_or_create(&ProtocolLabels { protocol })
            .inc();
    }

    pub fn connection_closed(&self, protocol: &'static str) {
        self.connections
            .get_or_create(&ProtocolLabels { protocol })
            .dec();
    }

    /// A request of `deployment` started waiting at the pool's bound.
    pub fn pool_wait(&self, deployment: &str) {
        self.waits
            .get_or_create(&DeploymentLabels {
                deployment: deployment.to_string(),
            })
            .inc();
    }

    /// It waited `secs`.
    pub fn pool_waited(&self, deployment: &str, secs: f64) {
        self.wait_seconds
            .get_or_create(&DeploymentLabels {
                deployment: deployment.to_string(),
            })
            .observe(secs);
    }

    pub fn resend(&self, reason: &'static str) {
        self.resends.get_or_create(&ReasonLabels { reason }).inc();
    }
}
