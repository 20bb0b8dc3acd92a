//! The suite's own world: a MongoDB-wire server and a RabbitMQ node of its
//! own, a fault proxy in front of each (the service reaches them only
//! through the proxies), and the Flutterwave simulator. Started once per
//! run; each fault gets its own database and exchange prefix on it.

use crate::infra::mongo::OwnMongo;
use crate::infra::proxy::FaultProxy;
use crate::infra::rabbit::OwnRabbit;
use crate::infra::redis::OwnRedis;
use flutterwave_sim::{SimHandle, Simulator};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub const JWT_SECRET: &str = "chaos-jwt-secret";
pub const GATEWAY_SECRET: &str = "chaos-gateway-secret";
pub const FLUTTERWAVE_KEY: &str = "FLWSECK_TEST-chaos";
pub const WEBHOOK_HASH: &str = "chaos-webhook-hash";

pub struct Stack {
    pub dir: PathBuf,
    pub mongo: OwnMongo,
    pub rabbit: OwnRabbit,
    /// Carries Socket.IO emits between instances.
    pub redis: OwnRedis,
    pub db_proxy: FaultProxy,
    pub broker_proxy: FaultProxy,
    pub sim: SimHandle,
}

impl Stack {
    pub async fn start(dir: &Path) -> Result<Self, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mongo = OwnMongo::start(&dir.join("mongo"))
            .await
            .map_err(|e| format!("database: {e}"))?;
        let rabbit = OwnRabbit::start(&dir.join("rabbit"))
            .await
            .map_err(|e| format!("broker: {e}"))?;
        let redis = OwnRedis::start(&dir.join("redis"))
            .await
            .map_err(|e| format!("redis: {e}"))?;
        let db_proxy = FaultProxy::start(loopback(mongo.port()))
            .await
            .map_err(|e| format!("database proxy: {e}"))?;
        let broker_proxy = FaultProxy::start(loopback(rabbit.port()))
            .await
            .map_err(|e| format!("broker proxy: {e}"))?;
        let sim = Simulator::new(FLUTTERWAVE_KEY)
            .start(loopback(0))
            .await
            .map_err(|e| format!("simulator: {e}"))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            mongo,
            rabbit,
            redis,
            db_proxy,
            broker_proxy,
            sim,
        })
    }

    /// The database as the suite reads it: directly, never through the proxy.
    pub fn direct_db_url(&self, db: &str) -> String {
        self.mongo.url(db)
    }

    /// What a service instance is started with: every dependency through
    /// its proxy, short leases and sweeps so that faults resolve quickly.
    pub fn instance_env(&self, db: &str, prefix: &str) -> BTreeMap<String, String> {
        let db_url = format!(
            "mongodb://{}/{db}?directConnection=true",
            self.db_proxy.addr()
        );
        let amqp_url = format!("amqp://guest:guest@{}/%2f", self.broker_proxy.addr());
        [
            ("NODE_ENV", "test".to_string()),
            ("DATABASE_URL", db_url),
            ("RABBITMQ_ENDPOINT", amqp_url),
            ("AMQP_EXCHANGE_PREFIX", prefix.to_string()),
            ("REDIS_URL", self.redis.url()),
            ("JWT_TOKEN", JWT_SECRET.to_string()),
            ("GATEWAY_JWT_TOKEN", GATEWAY_SECRET.to_string()),
            ("FLUTTERWAVE_API_URL", self.sim.base_url()),
            ("FLUTTERWAVE_SECRET_KEY", FLUTTERWAVE_KEY.to_string()),
            ("FLUTTERWAVE_WEBHOOK_HASH", WEBHOOK_HASH.to_string()),
            ("FLUTTERWAVE_TIMEOUT_MS", "2000".to_string()),
            ("OUTBOX_LEASE_SECS", "3".to_string()),
            ("OUTBOX_POLL_MS", "200".to_string()),
            ("RECONCILE_INTERVAL_MS", "1000".to_string()),
            ("RECONCILE_FIRST_DELAY_SECS", "3".to_string()),
            ("RECONCILE_MAX_DELAY_SECS", "5".to_string()),
            ("REVIEW_RETRY_DELAY_MS", "500".to_string()),
            ("RATE_LIMIT_PER_USER_PER_MIN", "0".to_string()),
            ("RATE_LIMIT_PER_IP_PER_MIN", "0".to_string()),
            ("RUST_LOG", "warn".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// Heals every fault the suite can leave behind, whatever happened.
    pub async fn heal(&mut self) {
        self.db_proxy.set_mode(crate::infra::proxy::ProxyMode::Pass);
        self.broker_proxy
            .set_mode(crate::infra::proxy::ProxyMode::Pass);
        self.sim
            .sim()
            .set_faults(flutterwave_sim::Faults::default());
        let _ = self.rabbit.set_disk_alarm(false).await;
    }

    pub async fn stop(self) {
        self.sim.shutdown().await;
        self.db_proxy.stop().await;
        self.broker_proxy.stop().await;
        self.rabbit.stop().await;
        self.redis.stop().await;
        self.mongo.stop().await;
    }
}

pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}
