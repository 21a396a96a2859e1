//! Node configuration: every setting with its unit, default and checks.
//!
//! The same names are the `ringkv start` flags (`--data-dir`) and the keys of the TOML config
//! file (`data-dir = "..."`). Precedence: flag, then config file, then default.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use thiserror::Error;

/// A setting that is out of range or inconsistent with another.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    /// `partitions` is not a power of two in range.
    #[error("partitions must be a power of two from 1 to {max}, not {got}")]
    Partitions {
        /// Value given.
        got: u32,
        /// Largest allowed.
        max: u32,
    },
    /// A size or count that must be positive is 0.
    #[error("{name} must be at least 1")]
    Zero {
        /// The setting's name.
        name: &'static str,
    },
    /// `chunk-bytes` leaves no room in a frame for the rest of a request.
    #[error("chunk-bytes ({value}) must be at most max-frame-bytes ({frame}) minus 1024 bytes for the rest of the request")]
    ValueOverFrame {
        /// chunk-bytes.
        value: usize,
        /// max-frame-bytes.
        frame: usize,
    },
    /// A cluster node has no cookie.
    #[error("a cluster node needs a cookie: set RINGKV_COOKIE or `cookie` in the config file")]
    NoCookie,
    /// `capacity` is 0 or the phi threshold is not positive.
    #[error("{0}")]
    Cluster(String),
    /// A size limit does not fit inside the one that must carry it.
    #[error("{inner} ({inner_value}) must be at most {outer} ({outer_value}) minus {slack} bytes: {why}")]
    LimitOrder {
        /// The smaller setting's name.
        inner: &'static str,
        /// Its value.
        inner_value: usize,
        /// The larger setting's name.
        outer: &'static str,
        /// Its value.
        outer_value: usize,
        /// Bytes the larger one needs beyond the smaller one.
        slack: usize,
        /// Why the order matters.
        why: &'static str,
    },
    /// The TLS settings do not fit together.
    #[error("{0}")]
    Tls(String),
    /// `metrics-listen` is the client or cluster address.
    #[error("metrics-listen ({addr}) must differ from listen and cluster-addr")]
    MetricsAddr {
        /// metrics-listen.
        addr: SocketAddr,
    },
    /// `initial-map-bytes` is over `max-map-bytes`.
    #[error("initial-map-bytes ({initial}) must be at most max-map-bytes ({max})")]
    MapSizes {
        /// initial-map-bytes.
        initial: usize,
        /// max-map-bytes.
        max: usize,
    },
}

/// Configuration of one node. Field names in kebab-case are the flag and config-file names.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct NodeConfig {
    /// Directory holding the node's data (`data/`, one LMDB env holding every partition, plus `system/` and `hints/`).
    /// Default `./ringkv-data`.
    pub data_dir: PathBuf,
    /// Address the client (msgpack TCP) listener binds. Port 0 picks a free port; the bound
    /// address is printed on stdout. Default `127.0.0.1:7379`.
    pub listen: SocketAddr,
    /// Address of the Prometheus metrics endpoint (`GET /metrics`, HTTP/1.1, text format
    /// 0.0.4). Port 0 picks a free port; the bound address is printed on stdout
    /// (`ringkv: metrics on http://ADDR/metrics`). Default none: no endpoint and no
    /// metrics kept.
    pub metrics_listen: Option<SocketAddr>,
    /// Address where Rust services connect as ractor_cluster client nodes
    /// (`ringkv_client::actor::KvRef`) with the cluster cookie, to call this node's
    /// KvGateway in typed actor messages. Port 0 picks a free port; the bound address is
    /// printed on stdout (`ringkv: actor clients on ADDR`). Needs `cluster-addr`. With
    /// cluster TLS, clients must present a certificate of the cluster CA naming them.
    /// Default none.
    pub actor_listen: Option<SocketAddr>,
    /// Number of partitions Q: a power of two, fixed when the data directory is created.
    /// Default 64.
    pub partitions: u32,
    /// Largest frame a client may send or receive, bytes (the 4-byte length prefix not
    /// counted). Default 8 MiB.
    pub max_frame_bytes: usize,
    /// Largest value, bytes: values longer than `chunk-bytes` are stored in chunks (see
    /// `ringkv_storage::large`), so this bounds a streamed upload, not a frame. Default 1 GiB.
    pub max_value_bytes: usize,
    /// Values longer than this are **large**: stored as a manifest plus chunks of this many
    /// bytes, and streamed by the `put_chunk` and `get_range` ops. Also the most bytes of one
    /// `put_chunk`. At least 4096; a record (`max-record-bytes`) must hold one. Default
    /// 1 MiB, or half of `max-frame-bytes` if that is less (see [`NodeConfig::chunk_limit`]).
    pub chunk_bytes: Option<usize>,
    /// A streamed upload that receives no frame for this long is ended (`upload_timeout`)
    /// and its chunks are left to garbage collection, ms. Default 30000.
    pub upload_idle_ms: u64,
    /// The chunks of a large version that no replica's record refers to are deleted once
    /// they are older than this, ms; an upload must commit within half of it. It bounds how
    /// long a hint or a paused node may still carry a manifest that refers to them. Default
    /// 3600000 (1 h).
    pub chunk_grace_ms: u64,
    /// Most streamed uploads open on one client connection. Default 4.
    pub max_uploads: usize,
    /// Largest stored record of one key, bytes: every sibling's value, the version vector
    /// and the encoding. A write or a merge that would make a record larger fails with
    /// `record_too_large`, so no record is ever too large for a client answer or a cluster
    /// message. At least `max-value-bytes` + 4096; at most `max-frame-bytes` - 4096 and
    /// `max-cluster-frame-bytes` - 65536. Default: 6 MiB, or less where a smaller
    /// `max-frame-bytes` or `max-cluster-frame-bytes` needs it (see
    /// [`NodeConfig::record_limit`]).
    pub max_record_bytes: Option<usize>,
    /// Largest message between two nodes, bytes: the inbound frame limit of the cluster
    /// transport (ractor_cluster closes the whole session between two nodes on a bigger
    /// frame, so ringkv never sends one). Batches of replica traffic stop at
    /// `max-record-bytes`. Default 16 MiB.
    pub max_cluster_frame_bytes: usize,
    /// Node-wide budget of client request and answer bytes in flight: frames being
    /// received, requests being served and answers not yet written. A request that arrives
    /// while the budget is spent is answered `overloaded`. Default 256 MiB.
    pub max_in_flight_bytes: usize,
    /// Once the first byte of a client frame has arrived, the rest must arrive within this
    /// many milliseconds, or the connection is closed. Default 10000.
    pub frame_timeout_ms: u64,
    /// A client connection with no request in flight and no byte received for this many
    /// milliseconds is closed; 0 keeps idle connections open forever. Default 600000
    /// (10 min).
    pub idle_timeout_ms: u64,
    /// Most client connections open at once; more are answered with an error and closed.
    /// Default 1024.
    pub max_connections: usize,
    /// Most requests in flight on one connection; the server stops reading from a connection
    /// that has this many unanswered. Default 1024.
    pub max_in_flight: usize,
    /// Default time limit of a request, milliseconds. Default 5000.
    pub request_timeout_ms: u64,
    /// Most siblings one key may hold. Default 100.
    pub max_siblings: usize,
    /// Most writes (of all partitions) the data env's writer commits in one LMDB transaction.
    /// Default 1024.
    pub max_batch: usize,
    /// LMDB map size the node's data env (every partition) starts with, bytes. Default 64 MiB.
    pub initial_map_bytes: usize,
    /// LMDB map size the node's data env (every partition together) may grow to, bytes.
    /// Default 64 GiB.
    pub max_map_bytes: usize,
    /// Restarts allowed per actor type within `restart-window-ms` (Erlang/OTP's
    /// intensity); one more and the failure escalates (past the node supervisor's budget the
    /// node stops with exit status 3). Default 5.
    pub restart_max: usize,
    /// The sliding window of `restart-max`, ms (OTP's period). Default 10000.
    pub restart_window_ms: u64,
    /// Most seconds a shutdown waits for in-flight requests. Default 10.
    pub shutdown_grace_secs: u64,
    /// Node name, unique in the cluster and stable across restarts: it is the node's identity
    /// in the layout. Default: the cluster address, or `local` without one.
    pub name: Option<String>,
    /// Address of the cluster transport (ractor_cluster), `HOST:PORT`. Without it the node
    /// runs alone. Default none.
    pub cluster_addr: Option<SocketAddr>,
    /// Cluster addresses of existing members to join through (`--join`, repeatable). Without
    /// it a fresh node starts a new cluster of its own. Default none.
    pub join: Vec<String>,
    /// Failure domain (rack, availability zone): replicas of a partition go to distinct zones
    /// when there are enough. Default `default`.
    pub zone: String,
    /// Relative capacity: nodes hold partition replicas in proportion to it. Default 1.
    pub capacity: u32,
    /// Shared cluster secret. Only from the config file or the `RINGKV_COOKIE` environment
    /// variable, never a flag (flags show in `ps`). Required with `cluster-addr`.
    pub cookie: Option<String>,
    /// Period of heartbeats and gossip rounds, ms. Default 500.
    pub heartbeat_ms: u64,
    /// Phi above which a peer is suspected down (Cassandra's `phi_convict_threshold`).
    /// Default 8.
    pub phi_threshold: f64,
    /// Silence the failure detector tolerates on top of the observed heartbeat intervals
    /// before phi rises (Akka's `acceptable-heartbeat-pause`), ms. With 500 ms heartbeats and
    /// the default 1000, a silent peer is suspected after about 2 s. Default 1000.
    pub acceptable_pause_ms: u64,
    /// Accept the `inject_fault` protocol op, which panics actors on purpose (for tests of
    /// supervision). Never enable it in production. Default false.
    pub fault_injection: bool,
    /// Period of hinted handoff rounds: each round delivers the hints this node holds to
    /// their owners that are reachable, ms. Default 1000.
    pub handoff_interval_ms: u64,
    /// Period of anti-entropy rounds: each round compares the Merkle trees of every partition
    /// this node holds with the other replicas and exchanges the differing keys, ms. 0
    /// disables anti-entropy. Default 10000.
    pub repair_interval_ms: u64,
    /// Tombstones younger than this are never purged, even when every replica holds them, ms.
    /// It bounds how long a hint or a paused node may carry an older version of a deleted
    /// key. Default 3600000 (1 h).
    pub tombstone_grace_ms: u64,
    /// The most the wall clocks of any two nodes of the cluster may differ, ms: an assumption
    /// the operator keeps (NTP), not something ringkv measures. A value's time to live is
    /// counted on the clock of the node that coordinates its write, and every node judges
    /// expiry by its own clock, so an expired value may still read as live for up to this
    /// long on a node whose clock is behind; expired values are purged only
    /// `tombstone-grace-ms` plus this after their expiry, so that no node sees a purged value
    /// as live. Default 1000.
    pub max_clock_skew_ms: u64,
    /// Most partition transfers this node receives at once after a layout change (each
    /// streams from one source at a time); the others wait, queued. Default 2.
    pub transfer_concurrency: usize,
    /// Bytes per second all of this node's incoming partition transfers together may pull
    /// (a token bucket over the records' bytes; bursts of a tenth of a second's worth). At
    /// least 1: there is no unlimited setting, because an unthrottled transfer shares the
    /// node pair's one cluster connection and the data env's writer with client traffic.
    /// Default 67108864 (64 MiB/s: about half of a 1 Gb/s link, and well under what the
    /// group-committing writer absorbs, so client writes keep most of both; a 100 GB node
    /// refills in about 27 minutes).
    pub transfer_max_bytes_per_sec: u64,
    /// PEM file of the client listener's certificate chain (leaf first). With `tls-key`, the
    /// client listener speaks only TLS 1.2/1.3 (rustls); without, plain TCP. Default none.
    pub tls_cert: Option<PathBuf>,
    /// PEM file of the private key of `tls-cert` (PKCS#8, PKCS#1 or SEC1). Default none.
    pub tls_key: Option<PathBuf>,
    /// PEM file of the CA certificates that sign client certificates: with it, a client must
    /// present a certificate signed by one of them (mutual TLS). Needs `tls-cert`. Default
    /// none.
    pub tls_client_ca: Option<PathBuf>,
    /// A TLS handshake (client or cluster) that has not finished this long after the
    /// connection was accepted or dialled is abandoned and its connection closed, ms. Each
    /// handshake runs in its own task, so a stalled one delays no other connection.
    /// Default 5000.
    pub tls_handshake_timeout_ms: u64,
    /// PEM file of the cluster CA: with it, every connection between nodes is mutual TLS,
    /// both ends presenting a certificate signed by this CA, and a peer must be named in its
    /// certificate (a DNS subject alternative name equal to its node name). The cookie stays
    /// a second factor. Default none (plain TCP between nodes).
    pub cluster_tls_ca: Option<PathBuf>,
    /// PEM file of this node's certificate chain for the cluster links: a DNS subject
    /// alternative name must be the node's `name`. Default: `tls-cert`.
    pub cluster_tls_cert: Option<PathBuf>,
    /// PEM file of the private key of `cluster-tls-cert`. Default: `tls-key`.
    pub cluster_tls_key: Option<PathBuf>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./ringkv-data"),
            listen: SocketAddr::from(([127, 0, 0, 1], 7379)),
            metrics_listen: None,
            actor_listen: None,
            partitions: 64,
            max_frame_bytes: 8 << 20,
            max_value_bytes: 1 << 30,
            chunk_bytes: None,
            upload_idle_ms: 30_000,
            chunk_grace_ms: 3_600_000,
            max_uploads: 4,
            max_record_bytes: None,
            max_cluster_frame_bytes: 16 << 20,
            max_in_flight_bytes: 256 << 20,
            frame_timeout_ms: 10_000,
            idle_timeout_ms: 600_000,
            max_connections: 1024,
            max_in_flight: 1024,
            request_timeout_ms: 5000,
            max_siblings: 100,
            max_batch: 1024,
            initial_map_bytes: 64 << 20,
            max_map_bytes: 64 << 30,
            restart_max: 5,
            restart_window_ms: 10_000,
            shutdown_grace_secs: 10,
            fault_injection: false,
            name: None,
            cluster_addr: None,
            join: Vec::new(),
            zone: "default".into(),
            capacity: 1,
            cookie: None,
            heartbeat_ms: 500,
            phi_threshold: 8.0,
            acceptable_pause_ms: 1000,
            handoff_interval_ms: 1000,
            repair_interval_ms: 10_000,
            tombstone_grace_ms: 3_600_000,
            max_clock_skew_ms: 1000,
            transfer_concurrency: 2,
            transfer_max_bytes_per_sec: 64 << 20,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            tls_handshake_timeout_ms: 5000,
            cluster_tls_ca: None,
            cluster_tls_cert: None,
            cluster_tls_key: None,
        }
    }
}

impl NodeConfig {
    /// The node's name: `name`, else the cluster address, else `local`.
    pub fn node_name(&self) -> String {
        match (&self.name, &self.cluster_addr) {
            (Some(n), _) => n.clone(),
            (None, Some(a)) => a.to_string(),
            (None, None) => "local".into(),
        }
    }

    /// The chunk size in force: `chunk-bytes` if set, else 1 MiB or half of
    /// `max-frame-bytes` if that is less (never below 4096).
    pub fn chunk_limit(&self) -> usize {
        self.chunk_bytes
            .unwrap_or_else(|| (1usize << 20).min(self.max_frame_bytes / 2).max(4096))
    }

    /// The record limit in force: `max-record-bytes` if set, else 6 MiB lowered to fit
    /// `max-frame-bytes` - 4096 and `max-cluster-frame-bytes` - 65536 (but never below
    /// `chunk-bytes` + 4096).
    pub fn record_limit(&self) -> usize {
        self.max_record_bytes.unwrap_or_else(|| {
            (6usize << 20)
                .min(self.max_frame_bytes.saturating_sub(4096))
                .min(self.max_cluster_frame_bytes.saturating_sub(65536))
                .max(self.chunk_limit() + 4096)
        })
    }

    /// Checks every setting and their relations.
    ///
    /// # Errors
    /// The first [`ConfigError`] found.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let max = crate::ring::MAX_PARTITIONS;
        if !self.partitions.is_power_of_two() || self.partitions > max {
            return Err(ConfigError::Partitions {
                got: self.partitions,
                max,
            });
        }
        for (name, v) in [
            ("max-frame-bytes", self.max_frame_bytes),
            ("max-value-bytes", self.max_value_bytes),
            ("chunk-bytes", self.chunk_limit()),
            ("upload-idle-ms", self.upload_idle_ms as usize),
            ("chunk-grace-ms", self.chunk_grace_ms as usize),
            ("max-uploads", self.max_uploads),
            ("max-connections", self.max_connections),
            ("max-in-flight", self.max_in_flight),
            ("request-timeout-ms", self.request_timeout_ms as usize),
            ("max-siblings", self.max_siblings),
            ("max-batch", self.max_batch),
            ("initial-map-bytes", self.initial_map_bytes),
            ("handoff-interval-ms", self.handoff_interval_ms as usize),
            ("max-record-bytes", self.record_limit()),
            ("restart-window-ms", self.restart_window_ms as usize),
            ("max-cluster-frame-bytes", self.max_cluster_frame_bytes),
            ("max-in-flight-bytes", self.max_in_flight_bytes),
            ("frame-timeout-ms", self.frame_timeout_ms as usize),
            ("transfer-concurrency", self.transfer_concurrency),
            (
                "transfer-max-bytes-per-sec",
                self.transfer_max_bytes_per_sec.min(usize::MAX as u64) as usize,
            ),
        ] {
            if v == 0 {
                return Err(ConfigError::Zero { name });
            }
        }
        if self.chunk_limit() < 4096 {
            return Err(ConfigError::Cluster(format!(
                "chunk-bytes ({}) must be at least 4096",
                self.chunk_limit()
            )));
        }
        if self.chunk_limit() + 1024 > self.max_frame_bytes {
            return Err(ConfigError::ValueOverFrame {
                value: self.chunk_limit(),
                frame: self.max_frame_bytes,
            });
        }
        let order = |inner, inner_value: usize, outer, outer_value: usize, slack, why| {
            if inner_value.saturating_add(slack) > outer_value {
                Err(ConfigError::LimitOrder {
                    inner,
                    inner_value,
                    outer,
                    outer_value,
                    slack,
                    why,
                })
            } else {
                Ok(())
            }
        };
        order(
            "chunk-bytes",
            self.chunk_limit(),
            "max-record-bytes",
            self.record_limit(),
            4096,
            "a record must hold at least one chunk, or one small value of the largest size",
        )?;
        order(
            "max-record-bytes",
            self.record_limit(),
            "max-frame-bytes",
            self.max_frame_bytes,
            4096,
            "a get answer carries a whole record",
        )?;
        order(
            "max-record-bytes",
            self.record_limit(),
            "max-cluster-frame-bytes",
            self.max_cluster_frame_bytes,
            65536,
            "a replica message carries a whole record",
        )?;
        order(
            "max-frame-bytes",
            self.max_frame_bytes,
            "max-in-flight-bytes",
            self.max_in_flight_bytes,
            0,
            "the budget must admit at least one frame of the largest size",
        )?;
        if self.cluster_addr.is_some() && self.cookie.as_deref().is_none_or(str::is_empty) {
            return Err(ConfigError::NoCookie);
        }
        if let Some(addr) = self.actor_listen {
            if self.cluster_addr.is_none() {
                return Err(ConfigError::Cluster(
                    "actor-listen needs cluster-addr (client nodes join the cluster transport)"
                        .into(),
                ));
            }
            if addr.port() != 0
                && (addr == self.listen
                    || Some(addr) == self.cluster_addr
                    || Some(addr) == self.metrics_listen)
            {
                return Err(ConfigError::Cluster(format!(
                    "actor-listen ({addr}) must differ from listen, cluster-addr and metrics-listen"
                )));
            }
        }
        if self
            .node_name()
            .starts_with(ringkv_proto::CLIENT_NAME_PREFIX)
        {
            return Err(ConfigError::Cluster(format!(
                "node names may not start with {:?}: it marks client nodes",
                ringkv_proto::CLIENT_NAME_PREFIX
            )));
        }
        if self.capacity == 0 {
            return Err(ConfigError::Cluster("capacity must be at least 1".into()));
        }
        if self.phi_threshold.is_nan() || self.phi_threshold <= 0.0 {
            return Err(ConfigError::Cluster(
                "phi-threshold must be positive".into(),
            ));
        }
        if self.heartbeat_ms == 0 {
            return Err(ConfigError::Zero {
                name: "heartbeat-ms",
            });
        }
        if let Some(addr) = self.metrics_listen {
            if addr.port() != 0 && (addr == self.listen || Some(addr) == self.cluster_addr) {
                return Err(ConfigError::MetricsAddr { addr });
            }
        }
        if self.initial_map_bytes > self.max_map_bytes {
            return Err(ConfigError::MapSizes {
                initial: self.initial_map_bytes,
                max: self.max_map_bytes,
            });
        }
        self.validate_tls()
    }

    /// The TLS settings' dependencies on one another (the files themselves are read at
    /// start).
    fn validate_tls(&self) -> Result<(), ConfigError> {
        let tls = |why: String| Err(ConfigError::Tls(why));
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return tls("tls-cert and tls-key go together: set both or neither".into());
        }
        if self.tls_client_ca.is_some() && self.tls_cert.is_none() {
            return tls("tls-client-ca needs tls-cert and tls-key".into());
        }
        if self.tls_handshake_timeout_ms == 0 {
            return Err(ConfigError::Zero {
                name: "tls-handshake-timeout-ms",
            });
        }
        if self.cluster_tls_cert.is_some() != self.cluster_tls_key.is_some() {
            return tls(
                "cluster-tls-cert and cluster-tls-key go together: set both or neither".into(),
            );
        }
        let cluster_files = self.cluster_tls_cert.is_some() || self.cluster_tls_key.is_some();
        if cluster_files && self.cluster_tls_ca.is_none() {
            return tls("cluster-tls-cert needs cluster-tls-ca (the cluster CA)".into());
        }
        if self.cluster_tls_ca.is_some() {
            if self.cluster_tls_cert.is_none() && self.tls_cert.is_none() {
                return tls(
                    "cluster-tls-ca needs this node's certificate: cluster-tls-cert and \
                     cluster-tls-key, or tls-cert and tls-key"
                        .into(),
                );
            }
            let name = self.node_name();
            if !is_dns_name(&name) {
                return tls(format!(
                    "with cluster-tls-ca the node name must be a DNS name (letters, digits, \
                     '-' and '.'), as in its certificate; {name:?} is not: set `name`"
                ));
            }
        }
        Ok(())
    }
}

/// True if `name` is a DNS host name as a certificate's subject alternative name carries it:
/// dot-separated labels of ASCII letters, digits and `-`, each 1 to 63 bytes, not starting
/// or ending with `-`, 253 bytes at most.
pub fn is_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_settings_are_checked() {
        let files = |c: &str| Some(PathBuf::from(c));
        let ok = NodeConfig {
            tls_cert: files("c.pem"),
            tls_key: files("k.pem"),
            tls_client_ca: files("ca.pem"),
            cluster_tls_ca: files("ca.pem"),
            name: Some("n1".into()),
            ..Default::default()
        };
        ok.validate().unwrap();
        for bad in [
            NodeConfig {
                tls_key: None,
                ..ok.clone()
            },
            NodeConfig {
                tls_cert: None,
                tls_key: None,
                ..ok.clone()
            },
            NodeConfig {
                name: Some("n_1".into()),
                ..ok.clone()
            },
            NodeConfig {
                cluster_tls_ca: None,
                cluster_tls_cert: files("c.pem"),
                cluster_tls_key: files("k.pem"),
                ..ok.clone()
            },
            NodeConfig {
                tls_handshake_timeout_ms: 0,
                ..ok.clone()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
        assert!(is_dns_name("node-1.rack2"));
        assert!(!is_dns_name("127.0.0.1:7000") && !is_dns_name("-a") && !is_dns_name(""));
    }

    #[test]
    fn defaults_are_valid() {
        NodeConfig::default().validate().unwrap();
    }

    #[test]
    fn bad_settings_are_named() {
        let c = NodeConfig {
            partitions: 48,
            ..Default::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("power of two"));
        let c = NodeConfig {
            chunk_bytes: Some(8 << 20),
            ..Default::default()
        };
        assert!(matches!(
            c.validate(),
            Err(ConfigError::ValueOverFrame { .. })
        ));
    }

    #[test]
    fn metrics_listen_is_an_address_of_its_own() {
        let listen = NodeConfig::default().listen;
        let c = NodeConfig {
            metrics_listen: Some(listen),
            ..Default::default()
        };
        assert_eq!(c.validate(), Err(ConfigError::MetricsAddr { addr: listen }));
        let c = NodeConfig {
            metrics_listen: Some("127.0.0.1:9100".parse().unwrap()),
            ..Default::default()
        };
        c.validate().unwrap();
    }

    #[test]
    fn record_limit_sits_between_value_and_frames() {
        let c = NodeConfig {
            max_record_bytes: Some(1 << 20),
            ..Default::default()
        };
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("chunk-bytes") && e.contains("max-record-bytes"),
            "{e}"
        );
        let c = NodeConfig {
            max_record_bytes: Some(8 << 20),
            ..Default::default()
        };
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("max-frame-bytes"), "{e}");
        let c = NodeConfig {
            max_frame_bytes: 64 << 20,
            max_record_bytes: Some(16 << 20),
            ..Default::default()
        };
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("max-cluster-frame-bytes"), "{e}");
    }
}
