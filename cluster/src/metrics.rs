//! Prometheus metrics of the state plane (`ferromq_cluster_*`). Created at start,
//! refreshed by the node's watcher task, registered by `register_metrics`. Node ids
//! are below 2^53, so they are exact as gauge values. The data plane registers its
//! own metrics (per-peer forwarding) separately.

use prometheus::{Histogram, HistogramOpts, IntGauge, IntGaugeVec, Opts, Registry};

pub struct Metrics {
    pub term: IntGauge,
    pub leader: IntGauge,
    pub commit: IntGauge,
    pub applied: IntGauge,
    pub apply_lag: IntGauge,
    pub proposal_latency: Histogram,
    pub snapshot_bytes: IntGauge,
    pub snapshot_build: prometheus::Gauge,
    pub members: IntGaugeVec,
    pub pending: IntGauge,
}

fn gauge(name: &str, help: &str) -> IntGauge {
    #[allow(clippy::expect_used)]
    IntGauge::new(name, help).expect("static metric definition")
}

impl Metrics {
    pub fn new() -> Self {
        #[allow(clippy::expect_used)]
        Self {
            term: gauge("ferromq_cluster_raft_term", "Current Raft term."),
            leader: gauge(
                "ferromq_cluster_leader_id",
                "Node id of the current leader (0: none).",
            ),
            commit: gauge("ferromq_cluster_commit_index", "Raft commit index."),
            applied: gauge(
                "ferromq_cluster_applied_index",
                "Raft index applied to the state machine.",
            ),
            apply_lag: gauge(
                "ferromq_cluster_apply_lag",
                "Commit index minus applied index.",
            ),
            proposal_latency: Histogram::with_opts(
                HistogramOpts::new(
                    "ferromq_cluster_proposal_duration_seconds",
                    "Time to commit a proposal.",
                )
                .buckets(vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                ]),
            )
            .expect("static metric definition"),
            snapshot_bytes: gauge(
                "ferromq_cluster_snapshot_size_bytes",
                "Size of the last snapshot.",
            ),
            snapshot_build: prometheus::Gauge::new(
                "ferromq_cluster_snapshot_build_duration_seconds",
                "Time the last snapshot build took.",
            )
            .expect("static metric definition"),
            members: IntGaugeVec::new(
                Opts::new("ferromq_cluster_members", "Cluster members by role."),
                &["role"],
            )
            .expect("static metric definition"),
            pending: gauge(
                "ferromq_cluster_pending_proposals",
                "Route/session intents not yet proposed.",
            ),
        }
    }

    pub fn register(&self, r: &Registry) {
        let all: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(self.term.clone()),
            Box::new(self.leader.clone()),
            Box::new(self.commit.clone()),
            Box::new(self.applied.clone()),
            Box::new(self.apply_lag.clone()),
            Box::new(self.proposal_latency.clone()),
            Box::new(self.snapshot_bytes.clone()),
            Box::new(self.snapshot_build.clone()),
            Box::new(self.members.clone()),
            Box::new(self.pending.clone()),
        ];
        for c in all {
            if let Err(e) = r.register(c) {
                tracing::warn!(error = %e, "cluster metric not registered");
            }
        }
    }
}
