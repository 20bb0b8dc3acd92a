//! Environment -> typed configuration. Fails fast, naming the variable.
//!
//! Names are those of the first Order Service (API.md), so deployments need
//! no change; new settings have clear names and documented defaults. Local
//! defaults let `scripts/run.sh` work without editing anything; production
//! refuses them.

use crate::payments::reconcile::{LONGEST_SESSION_MINUTES, ReconcileSettings};
use std::fmt;
use std::time::Duration;

/// A secret that never prints.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// A connection string whose password never prints (`Debug` shows
/// `scheme://user:***@host/...`); the rest stays readable for operators.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnectionUrl(String);

impl ConnectionUrl {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    fn redacted(&self) -> String {
        let Some((scheme, rest)) = self.0.split_once("://") else {
            return self.0.clone();
        };
        // The userinfo ends at the last '@' before the path.
        let authority_end = rest.find('/').unwrap_or(rest.len());
        match rest[..authority_end].rfind('@') {
            Some(at) => {
                let user = rest[..at].split(':').next().unwrap_or("");
                format!("{scheme}://{user}:***{}", &rest[at..])
            }
            None => self.0.clone(),
        }
    }
}

impl fmt::Debug for ConnectionUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Environment {
    Development,
    Production,
    Test,
}

impl Environment {
    /// The `NODE_ENV` spelling, which is also what traces report as
    /// `deployment.environment`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Development => "development",
            Self::Production => "production",
            Self::Test => "test",
        }
    }
}

/// A variable that is missing or malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("configuration error: {variable}: {reason}")]
pub struct ConfigError {
    pub variable: &'static str,
    pub reason: String,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub environment: Environment,
    pub port: u16,
    /// The only CORS origin: browsers reach the service through the gateway.
    pub api_gateway_url: String,
    /// Base of links in e-mails (`{CLIENT_URL}/orders/{id}/activities`).
    pub client_url: String,
    /// How long a checkout page takes payments, in minutes as Flutterwave
    /// takes it (`CHECKOUT_SESSION_MINUTES`, sent as `session_duration`).
    pub checkout_session_minutes: u32,
    pub jwt_token: Secret,
    pub gateway_jwt_token: Secret,
    pub database_url: ConnectionUrl,
    /// Taken from the path of `DATABASE_URL`.
    pub database_name: String,
    pub rabbitmq_endpoint: ConnectionUrl,
    /// Prepended to every exchange name; lets several environments (or test
    /// runs) share one broker without seeing each other's events.
    pub exchange_prefix: String,
    /// Redis for the Socket.IO adapter (`REDIS_URL`, `redis://` or
    /// `rediss://` for TLS): set it when several instances run, so an emit on
    /// one reaches sockets on the others. Unset: a single instance with the
    /// in-memory adapter.
    pub redis: Option<RedisSettings>,
    pub elastic_search_url: Option<ConnectionUrl>,
    /// Log lines held while Elasticsearch is away (`ELASTIC_LOG_BUFFER_LINES`);
    /// older ones are dropped and counted past it.
    pub elastic_log_buffer: usize,
    pub flutterwave_secret_key: Secret,
    pub flutterwave_api_url: String,
    pub flutterwave_webhook_hash: Secret,
    pub flutterwave_timeout: Duration,
    pub flutterwave_limits: FlutterwaveLimits,
    /// How long a refund Flutterwave reports as pending waits before it is
    /// looked up again (`REFUND_RECHECK_MS`).
    pub refund_recheck: Duration,
    /// Currency of orders whose request names none.
    pub currency: String,
    pub cloudinary: Cloudinary,
    /// Guards `/admin/*` (parked outbox records, replay).
    pub admin_token: Secret,
    pub instance_id: String,
    pub outbox_max_attempts: i32,
    pub outbox_lease: Duration,
    pub outbox_poll_interval: Duration,
    /// Due records one relay round looks at; the aggregates a round starts
    /// are those found among them. At least 1.
    pub outbox_scan_limit: i64,
    /// Aggregates one relay round delivers at once. At least 1.
    pub outbox_concurrency: usize,
    /// Relay rounds delivering and marking at once while the next one
    /// scans, claims and reads. At least 1.
    pub outbox_rounds_in_flight: usize,
    /// Records of one aggregate delivered under one lease before it is
    /// released to whoever scans next. At least 1.
    pub outbox_per_aggregate: i64,
    /// Follow the outbox's change stream, so that records whose instance
    /// died between its commit and its round are found at once rather
    /// than at the next poll. Every commit here hands its aggregates to the
    /// local relay, so that is the stream's only use, and off by default:
    /// end-to-end ran 9–24 % faster without it on SecantusDB.
    pub outbox_watch_changes: bool,
    pub outbox_retention: Duration,
    pub inbox_retention: Duration,
    pub reconcile: ReconcileSettings,
    /// Reviews the consumer holds unacknowledged at once (AMQP prefetch),
    /// which is also how many it applies concurrently. At least 1.
    pub review_prefetch: u16,
    /// Retries of a review that failed for a passing reason (its order does
    /// not exist yet) before it is dead-lettered.
    pub review_max_retries: u32,
    /// How long a failed review waits in the retry queue before its next try.
    pub review_retry_delay: Duration,
    pub enable_apm: bool,
    pub elastic_apm_server_url: Option<String>,
    pub elastic_apm_secret_token: Option<Secret>,
    /// Kept for compatibility with the old service's cookie sessions.
    pub secret_key_one: Secret,
    pub secret_key_two: Secret,
    /// Request rate limits per user and per client IP (`http::rate_limit`).
    pub rate_limits: RateLimitSettings,
    /// How long one request may take before it is answered 503 with the
    /// JSON error (`REQUEST_TIMEOUT_MS`); Socket.IO is not subject to it.
    pub request_timeout: Duration,
}

/// The limits of `http::rate_limit`: GCRA quotas that allow a full minute's
/// worth as a burst, then refill evenly. 0 turns a limit off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitSettings {
    /// Requests per minute per user (the user token's `username`) on `/api/v1/order/**`.
    pub per_user_per_min: u32,
    /// Requests per minute per client IP on unauthenticated paths (webhooks,
    /// health, metrics, admin, docs) and on failed authentications.
    pub per_ip_per_min: u32,
    /// Peers whose `X-Forwarded-For` is believed (a load balancer in front of
    /// the service). Empty: the TCP peer address is the client, whatever the
    /// headers say.
    pub trusted_proxies: Vec<std::net::IpAddr>,
}

/// Where Redis is and how to trust it.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// A secret because the URL may carry a password.
    pub url: Secret,
    /// PEM file of the CA that signed a `rediss://` server's certificate
    /// (`REDIS_CA_FILE`), for a private CA; unset: the system's roots.
    pub ca_file: Option<std::path::PathBuf>,
}

/// The guards around Flutterwave calls (see `payments::resilience`).
#[derive(Debug, Clone, PartialEq)]
pub struct FlutterwaveLimits {
    /// Calls in flight at once.
    pub max_concurrency: usize,
    /// Sustained calls per second (GCRA), and the burst allowed above it.
    pub rate_per_second: u32,
    pub rate_burst: u32,
    /// How long a call may wait for a rate-limit slot before failing fast.
    pub rate_max_wait: Duration,
    /// Failure share (0..1] over the last `breaker_window` calls that opens the breaker.
    pub breaker_failure_rate: f64,
    pub breaker_window: usize,
    /// Calls needed in the window before the rate is judged.
    pub breaker_min_calls: usize,
    /// How long the breaker stays open before letting trial calls through.
    pub breaker_open: Duration,
    /// Extra tries of idempotent reads (verify, refund look-ups).
    pub read_retries: usize,
}

#[derive(Debug, Clone)]
pub struct Cloudinary {
    pub cloud_name: Option<String>,
    pub api_key: Option<String>,
    pub api_secret: Option<Secret>,
    pub api_url: String,
}

/// Values that only make sense on a developer's machine.
const LOCAL_SECRETS: &[&str] = &[
    "local-jwt-secret",
    "local-gateway-secret",
    "local-secret-one",
    "local-secret-two",
    "local-admin-token",
    "local-webhook-hash",
    "FLWSECK_TEST-local-simulator",
];

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Builds the configuration from any variable source (tests pass a map).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let vars = Vars { lookup: &lookup };
        let environment = match vars.get("NODE_ENV").as_deref() {
            None | Some("development") => Environment::Development,
            Some("production") => Environment::Production,
            Some("test") => Environment::Test,
            Some(other) => {
                return Err(ConfigError {
                    variable: "NODE_ENV",
                    reason: format!("expected development, production or test, got {other:?}"),
                });
            }
        };
        let production = environment == Environment::Production;
        let secret = |name: &'static str, local: &str| -> Result<Secret, ConfigError> {
            match vars.get(name) {
                Some(value) if production && LOCAL_SECRETS.contains(&value.as_str()) => {
                    Err(ConfigError {
                        variable: name,
                        reason: "a local placeholder is not allowed in production".into(),
                    })
                }
                Some(value) => Ok(Secret(value)),
                None if production => Err(ConfigError {
                    variable: name,
                    reason: "required in production".into(),
                }),
                None => Ok(Secret(local.to_string())),
            }
        };
        // A local default would point production at a developer's machine
        // (or at the payment simulator): where things are must be said there.
        let located =
            |name: &'static str, local: &str, schemes: &[&str]| -> Result<String, ConfigError> {
                if production && vars.get(name).is_none() {
                    return Err(ConfigError {
                        variable: name,
                        reason: "required in production".into(),
                    });
                }
                vars.url(name, local, schemes)
            };
        let database_url = located(
            "DATABASE_URL",
            "mongodb://127.0.0.1:27017/gigconnect-order?directConnection=true",
            &["mongodb://", "mongodb+srv://"],
        )?;
        let rabbitmq_endpoint = located(
            "RABBITMQ_ENDPOINT",
            "amqp://guest:guest@127.0.0.1:5672/%2f",
            &["amqp://", "amqps://"],
        )?;
        let flutterwave_api_url = located(
            "FLUTTERWAVE_API_URL",
            "http://127.0.0.1:4010/v3",
            &["http://", "https://"],
        )?
        .trim_end_matches('/')
        .to_string();
        let client_url = located(
            "CLIENT_URL",
            "http://localhost:3000",
            &["http://", "https://"],
        )?;
        let api_gateway_url = located(
            "API_GATEWAY_URL",
            "http://localhost:4000",
            &["http://", "https://"],
        )?;
        let database_name = database_name(&database_url).ok_or(ConfigError {
            variable: "DATABASE_URL",
            reason: "must name the database in its path, e.g. mongodb://host:27017/orders".into(),
        })?;
        // Up to Flutterwave's longest session, which the sweep watches
        // whatever is set here.
        let longest = LONGEST_SESSION_MINUTES;
        let checkout_session_minutes = match vars.parse("CHECKOUT_SESSION_MINUTES", longest)? {
            minutes if (1..=longest).contains(&minutes) => minutes,
            _ => {
                return Err(ConfigError {
                    variable: "CHECKOUT_SESSION_MINUTES",
                    reason: format!("must be from 1 to {longest} (Flutterwave's longest session)"),
                });
            }
        };
        if vars.get("RECONCILE_MAX_AGE_HOURS").is_some() {
            return Err(ConfigError {
                variable: "RECONCILE_MAX_AGE_HOURS",
                reason: "no longer read: checkouts are watched for Flutterwave's longest \
                         session (24 h) plus two RECONCILE_MAX_DELAY_SECS; unset it"
                    .into(),
            });
        }
        let redis = match vars.get("REDIS_URL") {
            None => None,
            Some(_) => {
                let url = vars.url("REDIS_URL", "", &["redis://", "rediss://"])?;
                let tls = url.starts_with("rediss://");
                // redis-rs reads `#insecure` as "skip the certificate checks",
                // which this build leaves out: refused here rather than at
                // connect time with a less clear error.
                if url.contains('#') {
                    return Err(ConfigError {
                        variable: "REDIS_URL",
                        reason: "takes no fragment: certificate checks cannot be turned off \
                                 (#insecure); trust a private CA with REDIS_CA_FILE"
                            .into(),
                    });
                }
                let ca_file = vars.get("REDIS_CA_FILE").map(std::path::PathBuf::from);
                if ca_file.is_some() && !tls {
                    return Err(ConfigError {
                        variable: "REDIS_CA_FILE",
                        reason: "only used with a rediss:// REDIS_URL".into(),
                    });
                }
                Some(RedisSettings {
                    url: Secret(url),
                    ca_file,
                })
            }
        };
        // The sweep shares the Flutterwave rate limit (at least 1 a second)
        // with buyers' checkouts and verifies, who keep at least half of it.
        let flutterwave_rate: u32 = vars.parse("FLUTTERWAVE_RATE_PER_SEC", 20)?;
        let reconcile_rate = vars.count("RECONCILE_RATE_PER_SEC", 5u32)?;
        let sweep_share = flutterwave_rate.max(1).div_ceil(2);
        if reconcile_rate > sweep_share {
            return Err(ConfigError {
                variable: "RECONCILE_RATE_PER_SEC",
                reason: format!(
                    "must be at most {sweep_share}, half of FLUTTERWAVE_RATE_PER_SEC \
                     rounded up: buyers' checkouts and verifies keep the rest"
                ),
            });
        }
        let enable_apm = vars.flag("ENABLE_APM", false)?;
        let elastic_apm_server_url = vars.optional_url("ELASTIC_APM_SERVER_URL")?;
        if enable_apm && elastic_apm_server_url.is_none() {
            return Err(ConfigError {
                variable: "ELASTIC_APM_SERVER_URL",
                reason: "required when ENABLE_APM is on".into(),
            });
        }
        Ok(Self {
            environment,
            port: vars.parse("PORT", 4006)?,
            api_gateway_url,
            client_url,
            checkout_session_minutes,
            jwt_token: secret("JWT_TOKEN", "local-jwt-secret")?,
            gateway_jwt_token: secret("GATEWAY_JWT_TOKEN", "local-gateway-secret")?,
            database_url: ConnectionUrl(database_url),
            database_name,
            rabbitmq_endpoint: ConnectionUrl(rabbitmq_endpoint),
            exchange_prefix: vars.get("AMQP_EXCHANGE_PREFIX").unwrap_or_default(),
            redis,
            elastic_search_url: vars.optional_url("ELASTIC_SEARCH_URL")?.map(ConnectionUrl),
            elastic_log_buffer: vars.parse("ELASTIC_LOG_BUFFER_LINES", 10_000)?,
            flutterwave_secret_key: secret(
                "FLUTTERWAVE_SECRET_KEY",
                "FLWSECK_TEST-local-simulator",
            )?,
            flutterwave_api_url,
            flutterwave_webhook_hash: secret("FLUTTERWAVE_WEBHOOK_HASH", "local-webhook-hash")?,
            flutterwave_timeout: Duration::from_millis(
                vars.parse("FLUTTERWAVE_TIMEOUT_MS", 10_000)?,
            ),
            refund_recheck: Duration::from_millis(vars.count("REFUND_RECHECK_MS", 300_000)?),
            flutterwave_limits: FlutterwaveLimits {
                max_concurrency: vars.parse("FLUTTERWAVE_MAX_CONCURRENCY", 16)?,
                rate_per_second: flutterwave_rate,
                rate_burst: vars.parse("FLUTTERWAVE_RATE_BURST", 20)?,
                rate_max_wait: Duration::from_millis(
                    vars.parse("FLUTTERWAVE_RATE_MAX_WAIT_MS", 1_000)?,
                ),
                breaker_failure_rate: vars.parse("FLUTTERWAVE_BREAKER_FAILURE_RATE", 0.5)?,
                breaker_window: vars.parse("FLUTTERWAVE_BREAKER_WINDOW", 20)?,
                breaker_min_calls: vars.parse("FLUTTERWAVE_BREAKER_MIN_CALLS", 5)?,
                breaker_open: Duration::from_millis(
                    vars.parse("FLUTTERWAVE_BREAKER_OPEN_MS", 30_000)?,
                ),
                read_retries: vars.parse("FLUTTERWAVE_READ_RETRIES", 2)?,
            },
            currency: vars.get("ORDER_CURRENCY").unwrap_or_else(|| "NGN".into()),
            cloudinary: Cloudinary {
                cloud_name: vars.get("CLOUD_NAME"),
                api_key: vars.get("CLOUD_API_KEY"),
                api_secret: vars.get("CLOUD_API_SECRET").map(Secret),
                api_url: vars.url(
                    "CLOUDINARY_API_URL",
                    "https://api.cloudinary.com/v1_1",
                    &["http://", "https://"],
                )?,
            },
            admin_token: secret("ADMIN_TOKEN", "local-admin-token")?,
            instance_id: vars
                .get("INSTANCE_ID")
                .unwrap_or_else(|| format!("order-{}", uuid::Uuid::new_v4().simple())),
            outbox_max_attempts: vars.parse("OUTBOX_MAX_ATTEMPTS", 10)?,
            outbox_lease: Duration::from_secs(vars.parse("OUTBOX_LEASE_SECS", 30)?),
            outbox_poll_interval: Duration::from_millis(vars.parse("OUTBOX_POLL_MS", 500)?),
            outbox_scan_limit: vars.count("OUTBOX_SCAN_LIMIT", 2000)?,
            outbox_concurrency: vars.count("OUTBOX_CONCURRENCY", 32)?,
            outbox_rounds_in_flight: vars.count("OUTBOX_ROUNDS_IN_FLIGHT", 3)?,
            outbox_per_aggregate: vars.count("OUTBOX_PER_AGGREGATE", 100)?,
            outbox_watch_changes: vars.flag("OUTBOX_WATCH_CHANGES", false)?,
            outbox_retention: Duration::from_secs(
                vars.parse::<u64>("OUTBOX_RETENTION_DAYS", 7)? * 86_400,
            ),
            inbox_retention: Duration::from_secs(
                vars.parse::<u64>("INBOX_RETENTION_DAYS", 30)? * 86_400,
            ),
            reconcile: ReconcileSettings {
                interval: Duration::from_millis(vars.parse("RECONCILE_INTERVAL_MS", 30_000)?),
                first_delay: Duration::from_secs(vars.parse("RECONCILE_FIRST_DELAY_SECS", 300)?),
                growth: vars.parse("RECONCILE_GROWTH", 2.0)?,
                max_delay: Duration::from_secs(vars.parse("RECONCILE_MAX_DELAY_SECS", 3_600)?),
                batch: vars.count("RECONCILE_BATCH", 500usize)?,
                concurrency: vars.count("RECONCILE_CONCURRENCY", 4usize)?,
                rate_per_second: reconcile_rate,
            },
            review_prefetch: match vars.parse("REVIEW_PREFETCH", 20u16)? {
                0 => {
                    return Err(ConfigError {
                        variable: "REVIEW_PREFETCH",
                        reason: "must be at least 1 (0 would mean unbounded)".into(),
                    });
                }
                n => n,
            },
            review_max_retries: vars.parse("REVIEW_MAX_RETRIES", 5)?,
            review_retry_delay: Duration::from_millis(vars.parse("REVIEW_RETRY_DELAY_MS", 2_000)?),
            enable_apm,
            elastic_apm_server_url,
            elastic_apm_secret_token: vars.get("ELASTIC_APM_SECRET_TOKEN").map(Secret),
            secret_key_one: secret("SECRET_KEY_ONE", "local-secret-one")?,
            secret_key_two: secret("SECRET_KEY_TWO", "local-secret-two")?,
            rate_limits: RateLimitSettings {
                per_user_per_min: vars.parse("RATE_LIMIT_PER_USER_PER_MIN", 600)?,
                per_ip_per_min: vars.parse("RATE_LIMIT_PER_IP_PER_MIN", 1200)?,
                trusted_proxies: vars.ip_list("TRUSTED_PROXIES")?,
            },
            request_timeout: match vars.parse("REQUEST_TIMEOUT_MS", 30_000u64)? {
                0 => {
                    return Err(ConfigError {
                        variable: "REQUEST_TIMEOUT_MS",
                        reason: "must be at least 1".into(),
                    });
                }
                ms => Duration::from_millis(ms),
            },
        })
    }
}

struct Vars<'a> {
    lookup: &'a dyn Fn(&str) -> Option<String>,
}

impl Vars<'_> {
    /// A set, non-blank value; blank counts as unset, as in most `.env` files.
    fn get(&self, name: &str) -> Option<String> {
        (self.lookup)(name)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    }

    fn parse<T: std::str::FromStr>(
        &self,
        name: &'static str,
        default: T,
    ) -> Result<T, ConfigError> {
        match self.get(name) {
            None => Ok(default),
            Some(raw) => raw.parse().map_err(|_| ConfigError {
                variable: name,
                reason: format!("{raw:?} is not a valid value"),
            }),
        }
    }

    /// A count of at least 1 (0 would stall the relay).
    fn count<T: std::str::FromStr + PartialOrd + From<u8>>(
        &self,
        name: &'static str,
        default: T,
    ) -> Result<T, ConfigError> {
        let value = self.parse(name, default)?;
        if value < T::from(1) {
            return Err(ConfigError {
                variable: name,
                reason: "must be at least 1".into(),
            });
        }
        Ok(value)
    }

    fn flag(&self, name: &'static str, default: bool) -> Result<bool, ConfigError> {
        match self.get(name).as_deref() {
            None => Ok(default),
            Some("0") | Some("false") => Ok(false),
            Some("1") | Some("true") => Ok(true),
            Some(other) => Err(ConfigError {
                variable: name,
                reason: format!("expected 0/1/true/false, got {other:?}"),
            }),
        }
    }

    fn url(
        &self,
        name: &'static str,
        default: &str,
        schemes: &[&str],
    ) -> Result<String, ConfigError> {
        let value = self.get(name).unwrap_or_else(|| default.to_string());
        if schemes.iter().any(|s| value.starts_with(s)) && value.len() > 8 {
            Ok(value)
        } else {
            Err(ConfigError {
                variable: name,
                reason: format!("must start with one of {}", schemes.join(", ")),
            })
        }
    }

    /// A comma-separated list of IP addresses; unset is empty.
    fn ip_list(&self, name: &'static str) -> Result<Vec<std::net::IpAddr>, ConfigError> {
        let Some(raw) = self.get(name) else {
            return Ok(Vec::new());
        };
        raw.split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(|item| {
                item.parse().map_err(|_| ConfigError {
                    variable: name,
                    reason: format!("{item:?} is not an IP address"),
                })
            })
            .collect()
    }

    fn optional_url(&self, name: &'static str) -> Result<Option<String>, ConfigError> {
        match self.get(name) {
            None => Ok(None),
            Some(_) => self.url(name, "", &["http://", "https://"]).map(Some),
        }
    }
}

/// `mongodb://host:port/name?opts` -> `name`.
fn database_name(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let path = rest.split_once('/')?.1;
    let name = path.split('?').next()?.trim();
    (!name.is_empty()).then(|| name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|name| map.get(name).cloned())
    }

    #[test]
    fn local_defaults_need_nothing() {
        let config = config(&[]).expect("defaults");
        assert_eq!(config.port, 4006);
        assert_eq!(config.database_name, "gigconnect-order");
        assert_eq!(config.environment, Environment::Development);
    }

    #[test]
    fn a_malformed_variable_is_named() {
        let error = config(&[("PORT", "eighty")]).unwrap_err();
        assert_eq!(error.variable, "PORT");
        assert!(error.to_string().starts_with("configuration error: PORT:"));
        assert_eq!(
            config(&[("RABBITMQ_ENDPOINT", "localhost")])
                .unwrap_err()
                .variable,
            "RABBITMQ_ENDPOINT"
        );
        assert_eq!(
            config(&[("DATABASE_URL", "mongodb://host:27017")])
                .unwrap_err()
                .variable,
            "DATABASE_URL"
        );
        assert_eq!(
            config(&[("NODE_ENV", "staging")]).unwrap_err().variable,
            "NODE_ENV"
        );
    }

    /// Where production's dependencies are; none is defaulted there.
    const LOCATIONS: [(&str, &str); 5] = [
        ("DATABASE_URL", "mongodb://db.internal:27017/orders"),
        (
            "RABBITMQ_ENDPOINT",
            "amqps://orders:pw@mq.internal:5671/%2f",
        ),
        ("FLUTTERWAVE_API_URL", "https://api.flutterwave.com/v3"),
        ("CLIENT_URL", "https://gigconnect.example"),
        ("API_GATEWAY_URL", "https://gateway.gigconnect.example"),
    ];

    #[test]
    fn production_refuses_placeholders_and_missing_secrets() {
        let production = |extra: &[(&'static str, &'static str)]| {
            let mut vars = vec![("NODE_ENV", "production")];
            vars.extend(LOCATIONS);
            vars.extend_from_slice(extra);
            config(&vars)
        };
        assert_eq!(production(&[]).unwrap_err().variable, "JWT_TOKEN");
        let error = production(&[("JWT_TOKEN", "local-jwt-secret")]).unwrap_err();
        assert_eq!(error.variable, "JWT_TOKEN");
        assert!(error.reason.contains("placeholder"));
    }

    #[test]
    fn production_requires_where_its_dependencies_are() {
        for (missing, _) in LOCATIONS {
            let mut vars = vec![("NODE_ENV", "production")];
            vars.extend(LOCATIONS.into_iter().filter(|(name, _)| *name != missing));
            let error = config(&vars).unwrap_err();
            assert_eq!(error.variable, missing);
            assert_eq!(error.reason, "required in production");
        }
        // Elsewhere the local defaults stand in.
        assert!(config(&[("NODE_ENV", "test")]).is_ok());
    }

    #[test]
    fn review_consumer_settings_have_defaults_and_bounds() {
        let defaults = config(&[]).expect("defaults");
        assert_eq!(defaults.review_prefetch, 20);
        assert_eq!(defaults.review_max_retries, 5);
        assert_eq!(defaults.review_retry_delay, Duration::from_secs(2));
        assert_eq!(
            config(&[("REVIEW_PREFETCH", "0")]).unwrap_err().variable,
            "REVIEW_PREFETCH"
        );
        assert_eq!(
            config(&[("REVIEW_RETRY_DELAY_MS", "soon")])
                .unwrap_err()
                .variable,
            "REVIEW_RETRY_DELAY_MS"
        );
    }

    #[test]
    fn outbox_batch_settings_have_defaults_and_bounds() {
        let defaults = config(&[]).expect("defaults");
        assert_eq!(
            (
                defaults.outbox_scan_limit,
                defaults.outbox_concurrency,
                defaults.outbox_rounds_in_flight,
                defaults.outbox_per_aggregate
            ),
            (2000, 32, 3, 100)
        );
        assert!(!defaults.outbox_watch_changes);
        let set = config(&[
            ("OUTBOX_SCAN_LIMIT", "500"),
            ("OUTBOX_CONCURRENCY", "64"),
            ("OUTBOX_ROUNDS_IN_FLIGHT", "1"),
            ("OUTBOX_PER_AGGREGATE", "10"),
            ("OUTBOX_WATCH_CHANGES", "true"),
        ])
        .expect("set");
        assert!(set.outbox_watch_changes);
        assert_eq!(
            (
                set.outbox_scan_limit,
                set.outbox_concurrency,
                set.outbox_rounds_in_flight,
                set.outbox_per_aggregate
            ),
            (500, 64, 1, 10)
        );
        for variable in [
            "OUTBOX_SCAN_LIMIT",
            "OUTBOX_CONCURRENCY",
            "OUTBOX_ROUNDS_IN_FLIGHT",
            "OUTBOX_PER_AGGREGATE",
        ] {
            assert_eq!(config(&[(variable, "0")]).unwrap_err().variable, variable);
            assert_eq!(config(&[(variable, "-3")]).unwrap_err().variable, variable);
        }
        assert_eq!(
            config(&[("OUTBOX_WATCH_CHANGES", "no")])
                .unwrap_err()
                .variable,
            "OUTBOX_WATCH_CHANGES"
        );
    }

    #[test]
    fn the_checkout_session_and_the_sweep_pace_are_checked() {
        let defaults = config(&[]).expect("defaults");
        assert_eq!(defaults.checkout_session_minutes, 1_440);
        assert_eq!(
            (
                defaults.reconcile.concurrency,
                defaults.reconcile.rate_per_second
            ),
            (4, 5)
        );
        let set = config(&[
            ("CHECKOUT_SESSION_MINUTES", "90"),
            ("RECONCILE_CONCURRENCY", "2"),
            ("RECONCILE_RATE_PER_SEC", "8"),
        ])
        .expect("set");
        assert_eq!(set.checkout_session_minutes, 90);
        assert_eq!(
            (set.reconcile.concurrency, set.reconcile.rate_per_second),
            (2, 8)
        );
        for (variable, value) in [
            ("CHECKOUT_SESSION_MINUTES", "0"),
            ("CHECKOUT_SESSION_MINUTES", "1441"),
            ("RECONCILE_CONCURRENCY", "0"),
            ("RECONCILE_RATE_PER_SEC", "0"),
            ("RECONCILE_RATE_PER_SEC", "11"),
            // Replaced by the session: a setting that no longer acts must not
            // look as if it did.
            ("RECONCILE_MAX_AGE_HOURS", "48"),
        ] {
            assert_eq!(
                config(&[(variable, value)]).unwrap_err().variable,
                variable,
                "{variable}={value}"
            );
        }
    }

    #[test]
    fn redis_is_optional_and_checked() {
        assert!(config(&[]).expect("defaults").redis.is_none());
        assert!(
            config(&[("REDIS_URL", " ")])
                .expect("blank")
                .redis
                .is_none()
        );
        let set = config(&[("REDIS_URL", "redis://:pw@127.0.0.1:6379")]).expect("set");
        assert_eq!(
            set.redis.as_ref().map(|r| r.url.expose()),
            Some("redis://:pw@127.0.0.1:6379")
        );
        assert!(!format!("{set:?}").contains(":pw@"));
        let tls = config(&[
            ("REDIS_URL", "rediss://127.0.0.1:6380"),
            ("REDIS_CA_FILE", "/etc/ssl/redis-ca.pem"),
        ])
        .expect("tls");
        let tls = tls.redis.expect("redis");
        assert_eq!(tls.url.expose(), "rediss://127.0.0.1:6380");
        assert_eq!(
            tls.ca_file.as_deref(),
            Some(std::path::Path::new("/etc/ssl/redis-ca.pem"))
        );
        for (vars, variable) in [
            (vec![("REDIS_URL", "127.0.0.1:6379")], "REDIS_URL"),
            (
                vec![
                    ("REDIS_URL", "redis://127.0.0.1:6379"),
                    ("REDIS_CA_FILE", "/ca.pem"),
                ],
                "REDIS_CA_FILE",
            ),
            (
                vec![("REDIS_URL", "rediss://h:6380/#insecure")],
                "REDIS_URL",
            ),
        ] {
            assert_eq!(config(&vars).unwrap_err().variable, variable, "{vars:?}");
        }
    }

    #[test]
    fn rate_limits_and_timeout_have_defaults_and_are_checked() {
        let defaults = config(&[]).expect("defaults");
        assert_eq!(defaults.rate_limits.per_user_per_min, 600);
        assert_eq!(defaults.rate_limits.per_ip_per_min, 1200);
        assert!(defaults.rate_limits.trusted_proxies.is_empty());
        assert_eq!(defaults.request_timeout, Duration::from_secs(30));
        let set = config(&[("TRUSTED_PROXIES", "10.0.0.1, ::1")]).expect("proxies");
        assert_eq!(set.rate_limits.trusted_proxies.len(), 2);
        for (name, value) in [
            ("TRUSTED_PROXIES", "10.0.0.1,gateway"),
            ("RATE_LIMIT_PER_USER_PER_MIN", "-1"),
            ("REQUEST_TIMEOUT_MS", "0"),
        ] {
            assert_eq!(config(&[(name, value)]).unwrap_err().variable, name);
        }
    }

    #[test]
    fn apm_is_off_by_default_and_needs_a_server_when_on() {
        let defaults = config(&[]).expect("defaults");
        assert!(!defaults.enable_apm);
        assert!(defaults.elastic_apm_server_url.is_none());
        let error = config(&[("ENABLE_APM", "1")]).unwrap_err();
        assert_eq!(error.variable, "ELASTIC_APM_SERVER_URL");
        assert!(error.reason.contains("ENABLE_APM"), "{error}");
        assert_eq!(
            config(&[("ENABLE_APM", "yes")]).unwrap_err().variable,
            "ENABLE_APM"
        );
        assert_eq!(
            config(&[("ENABLE_APM", "1"), ("ELASTIC_APM_SERVER_URL", "apm:8200")])
                .unwrap_err()
                .variable,
            "ELASTIC_APM_SERVER_URL"
        );
        let on = config(&[
            ("ENABLE_APM", "true"),
            ("ELASTIC_APM_SERVER_URL", "http://apm:8200"),
            ("ELASTIC_APM_SECRET_TOKEN", "apm-token-value"),
        ])
        .expect("apm on");
        assert!(on.enable_apm);
        assert_eq!(
            on.elastic_apm_server_url.as_deref(),
            Some("http://apm:8200")
        );
        assert_eq!(
            on.elastic_apm_secret_token.as_ref().map(Secret::expose),
            Some("apm-token-value")
        );
        assert!(!format!("{on:?}").contains("apm-token-value"));
        // A server without the switch is allowed: the switch alone turns export on.
        let off = config(&[("ELASTIC_APM_SERVER_URL", "http://apm:8200")]).expect("apm off");
        assert!(!off.enable_apm);
    }

    #[test]
    fn secrets_never_print() {
        let config = config(&[
            ("JWT_TOKEN", "super-secret-value"),
            (
                "DATABASE_URL",
                "mongodb://app:db-pass-1@db:27017/orders?authSource=admin",
            ),
            ("RABBITMQ_ENDPOINT", "amqp://app:mq-pass-2@mq:5672/%2f"),
            ("ELASTIC_SEARCH_URL", "https://elastic:es-pass-3@es:9200"),
        ])
        .expect("config");
        let printed = format!("{config:?}");
        for secret in ["super-secret-value", "db-pass-1", "mq-pass-2", "es-pass-3"] {
            assert!(!printed.contains(secret), "{secret} printed");
        }
        // What an operator needs to see stays.
        assert!(printed.contains("mongodb://app:***@db:27017/orders"));
        assert_eq!(
            config.rabbitmq_endpoint.expose(),
            "amqp://app:mq-pass-2@mq:5672/%2f"
        );
    }

    #[test]
    fn a_url_without_credentials_prints_as_it_is() {
        let url = ConnectionUrl::new("mongodb://db:27017/orders");
        assert_eq!(format!("{url:?}"), "\"mongodb://db:27017/orders\"");
        let at_in_path = ConnectionUrl::new("http://es:9200/logs@x");
        assert_eq!(format!("{at_in_path:?}"), "\"http://es:9200/logs@x\"");
    }
}
