//! Builds the application from a `Config`: connects the stores of the chosen mode, opens the
//! keyset, binds (port 0 works) and runs until told to stop.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use http::HeaderValue;
use tokio::net::TcpListener;

use crate::clock::{SharedClock, SystemClock};
use crate::config::{Config, Mode};
use crate::domain::clients::{load_static_clients, Clients};
use crate::domain::{Passwords, ServiceParts, Services};
use crate::http::pages::Branding;
use crate::http::router::{Listener, Router};
use crate::http::server::{self, ServerLimits};
use crate::http::stack;
use crate::http::state::{AppState, BrowserSettings, CookieSettings, ReadinessCheck};
use crate::http::wellknown::Documents;
use crate::keys::{DirKeyStore, KeyStore, Keys, KeysConfig, MongoKeyStore, RETENTION_LEEWAY};
use crate::metrics::Metrics;
use crate::store::instrumented::Instrumented;
use crate::store::memory::{
    MemoryAuthorize, MemoryClients, MemoryConsents, MemoryDevices, MemoryEvents, MemoryLimits,
    MemoryMail, MemoryReplay, MemorySessions, MemoryUsers, EVENTS_CAPACITY,
};
use crate::store::mongo::MongoStore;
use crate::store::redis::RedisStore;
use crate::store::{
    AuthorizeStore, ClientStore, ConsentStore, DeviceStore, EventStore, LeaseStore, LimitStore,
    MailStore, ReplayStore, SessionStore, UserStore,
};

/// Why the application could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// A listener could not be bound.
    #[error("cannot bind {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A store could not be reached at start-up.
    #[error("cannot connect to {store}: {message}")]
    Store {
        /// `mongodb` or `redis`.
        store: &'static str,
        /// The driver's message.
        message: String,
    },
    /// The keyset could not be loaded or created.
    #[error("keyset: {0}")]
    Keys(String),
    /// A configuration file named by the environment is unusable (`TOKEND_CLIENTS_FILE`); like
    /// a bad variable, `tokend serve` exits 2.
    #[error("{0}")]
    Config(String),
    /// Anything else that stops the start.
    #[error("{0}")]
    Other(String),
}

/// The key schedule of `config`: the algorithms, rotation, prepublication, retention (the
/// longest token lifetime plus the validation leeway), reload interval and RSA size.
pub(crate) fn keys_config(config: &Config) -> KeysConfig {
    KeysConfig {
        algs: config.signing_algs.clone(),
        rotation: config.key_rotation,
        prepublish: config.key_prepublish,
        retention: config.access_ttl.max(config.refresh_ttl) + RETENTION_LEEWAY,
        reload: config.keyset_reload,
        rsa_bits: config.rsa_bits,
    }
}

/// The stores of one mode.
pub struct Backends {
    /// Users (MongoDB in production).
    pub users: Arc<dyn UserStore>,
    /// OAuth clients (MongoDB in production, plus `TOKEND_CLIENTS_FILE`).
    pub clients: Arc<dyn ClientStore>,
    /// Refresh families and revocations (Redis in production).
    pub sessions: Arc<dyn SessionStore>,
    /// Authorization requests, codes and browser sessions (Redis in production).
    pub authorize: Arc<dyn AuthorizeStore>,
    /// Consents (MongoDB in production).
    pub consents: Arc<dyn ConsentStore>,
    /// Device authorizations (Redis in production).
    pub device: Arc<dyn DeviceStore>,
    /// The mail outbox and the tokens its messages carry (MongoDB in production).
    pub mail: Arc<dyn MailStore>,
    /// Account events (MongoDB in production, a bounded ring in embedded mode).
    pub events: Arc<dyn EventStore>,
    /// The signing keyset (MongoDB in production, a directory or memory in embedded mode).
    pub keystore: Arc<dyn KeyStore>,
    /// `None` when this process is the only writer of the keyset (embedded mode).
    pub lease: Option<Arc<dyn LeaseStore>>,
    /// Rate limits and login back-off (Redis in production).
    pub limits: Arc<dyn LimitStore>,
    /// Single-use keys: DPoP proof and client assertion `jti`s (Redis in production).
    pub replay: Arc<dyn ReplayStore>,
    /// `embedded` or `production`: the `mode` of `/readyz` and the logs.
    pub mode_name: &'static str,
}

impl Backends {
    /// Connects the stores named by the configuration (tests wrap one of them to make it fail).
    pub async fn connect(config: &Config, clock: &SharedClock) -> Result<Backends, StartupError> {
        match &config.mode {
            Mode::Embedded { keys_dir } => Ok(Backends {
                users: Arc::new(MemoryUsers::new()),
                clients: Arc::new(MemoryClients::new()),
                sessions: Arc::new(MemorySessions::new(clock.clone())),
                authorize: Arc::new(MemoryAuthorize::new(clock.clone())),
                consents: Arc::new(MemoryConsents::new()),
                device: Arc::new(MemoryDevices::new(clock.clone())),
                mail: Arc::new(MemoryMail::new()),
                events: Arc::new(MemoryEvents::new(EVENTS_CAPACITY)),
                keystore: Arc::new(DirKeyStore::new(keys_dir.clone())),
                lease: None,
                limits: Arc::new(MemoryLimits::new(clock.clone())),
                replay: Arc::new(MemoryReplay::new(clock.clone())),
                mode_name: "embedded",
            }),
            Mode::Production {
                mongodb_uri,
                mongodb_db,
                redis_url,
                redis_prefix,
                key_encryption_key,
            } => {
                let mongo = MongoStore::connect(&mongodb_uri.0, mongodb_db)
                    .await
                    .map_err(|e| StartupError::Store {
                        store: "mongodb",
                        message: e.to_string(),
                    })?;
                mongo
                    .ensure_indexes()
                    .await
                    .map_err(|e| StartupError::Store {
                        store: "mongodb",
                        message: e.to_string(),
                    })?;
                let redis = RedisStore::connect(&redis_url.0, redis_prefix)
                    .await
                    .map_err(|e| StartupError::Store {
                        store: "redis",
                        message: e.to_string(),
                    })?;
                let keystore = MongoKeyStore::new(mongo.database(), key_encryption_key.0);
                let mongo = Arc::new(mongo);
                let redis = Arc::new(redis);
                Ok(Backends {
                    users: mongo.clone(),
                    clients: mongo.clone(),
                    mail: mongo.clone(),
                    events: mongo.clone(),
                    consents: mongo,
                    sessions: redis.clone(),
                    authorize: redis.clone(),
                    device: redis.clone(),
                    keystore: Arc::new(keystore),
                    limits: redis.clone(),
                    replay: redis.clone(),
                    lease: Some(redis),
                    mode_name: "production",
                })
            }
        }
    }

    /// The same stores behind the metrics layer ([`Instrumented`]), labelled by what holds
    /// them: `memory` in embedded mode, else `mongodb` or `redis`.
    fn instrumented(self, metrics: &Arc<Metrics>) -> Backends {
        let (doc_store, kv_store) = if self.mode_name == "embedded" {
            ("memory", "memory")
        } else {
            ("mongodb", "redis")
        };
        Backends {
            users: Arc::new(Instrumented::new(self.users, doc_store, metrics.clone())),
            clients: Arc::new(Instrumented::new(self.clients, doc_store, metrics.clone())),
            consents: Arc::new(Instrumented::new(self.consents, doc_store, metrics.clone())),
            mail: Arc::new(Instrumented::new(self.mail, doc_store, metrics.clone())),
            events: Arc::new(Instrumented::new(self.events, doc_store, metrics.clone())),
            sessions: Arc::new(Instrumented::new(self.sessions, kv_store, metrics.clone())),
            authorize: Arc::new(Instrumented::new(self.authorize, kv_store, metrics.clone())),
            device: Arc::new(Instrumented::new(self.device, kv_store, metrics.clone())),
            replay: Arc::new(Instrumented::new(self.replay, kv_store, metrics.clone())),
            ..self
        }
    }
}

/// A store as `/readyz` sees it: reachable when its `ping` answers.
struct Pinged<S: ?Sized> {
    name: &'static str,
    store: Arc<S>,
}

#[async_trait::async_trait]
impl ReadinessCheck for Pinged<dyn UserStore> {
    async fn missing(&self) -> Option<String> {
        self.store.ping().await.err().map(|_| self.name.to_string())
    }
}

#[async_trait::async_trait]
impl ReadinessCheck for Pinged<dyn SessionStore> {
    async fn missing(&self) -> Option<String> {
        self.store.ping().await.err().map(|_| self.name.to_string())
    }
}

/// An algorithm's key ring as `/readyz` sees it: ready while a key of it signs.
struct ActiveKey {
    keys: Keys,
    alg: crate::keys::Alg,
}

#[async_trait::async_trait]
impl ReadinessCheck for ActiveKey {
    async fn missing(&self) -> Option<String> {
        (!self.keys.has_active(self.alg)).then(|| format!("keys:{}", self.alg))
    }
}

/// A built, bound application.
pub struct Application {
    listener: TcpListener,
    /// The operational listener of `TOKEND_METRICS_LISTEN`, when set.
    ops_listener: Option<TcpListener>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    state: Arc<AppState>,
    config: Arc<Config>,
}

impl Application {
    /// Builds with the wall clock.
    pub async fn build(config: Config) -> Result<Application, StartupError> {
        Self::build_with(config, Arc::new(SystemClock)).await
    }

    /// Builds with a given clock (tests move time instead of sleeping).
    pub async fn build_with(
        config: Config,
        clock: SharedClock,
    ) -> Result<Application, StartupError> {
        let backends = Backends::connect(&config, &clock).await?;
        Self::build_with_backends(config, clock, backends).await
    }

    /// Builds on already connected stores.
    pub async fn build_with_backends(
        config: Config,
        clock: SharedClock,
        b: Backends,
    ) -> Result<Application, StartupError> {
        let config = Arc::new(config);
        let static_clients = match &config.clients_file {
            Some(path) => {
                load_static_clients(path, &config.signing_algs).map_err(StartupError::Config)?
            }
            None => Vec::new(),
        };
        if b.mode_name == "embedded" {
            tracing::warn!(
                "embedded mode: users, clients and sessions live in memory and are lost at exit; \
                 set TOKEND_MONGODB_URI and TOKEND_REDIS_URL for production mode"
            );
        }
        let metrics = Metrics::new();
        let b = b.instrumented(&metrics);
        let keys = Keys::open(keys_config(&config), b.keystore, b.lease, clock.clone())
            .await
            .map_err(|e| StartupError::Keys(e.to_string()))?;
        let passwords =
            Passwords::new(config.argon2, config.argon2_concurrency, config.argon2_nice)
                .await
                .map_err(|e| StartupError::Other(e.to_string()))?;
        let registry = Arc::new(Clients::new(static_clients, b.clients));
        let documents = Documents::build(&config, registry.static_scopes())
            .map_err(|e| StartupError::Other(e.to_string()))?;
        let (users, sessions) = (b.users, b.sessions);
        let mut readiness_checks: Vec<Arc<dyn ReadinessCheck>> = Vec::new();
        // One ping per server: the authorization and consent stores live on these two.
        if b.mode_name != "embedded" {
            readiness_checks.push(Arc::new(Pinged {
                name: "mongodb",
                store: users.clone(),
            }));
            readiness_checks.push(Arc::new(Pinged {
                name: "redis",
                store: sessions.clone(),
            }));
        }
        for alg in &config.signing_algs {
            readiness_checks.push(Arc::new(ActiveKey {
                keys: keys.clone(),
                alg: *alg,
            }));
        }
        let hello_name = url::Url::parse(&config.issuer)
            .ok()
            .and_then(|u| u.host_str().map(str::to_string))
            .unwrap_or_else(|| "localhost".into());
        let transport = crate::mail::transport(&config.mail.transport, &hello_name)
            .map_err(StartupError::Config)?;
        let jwks_fetch =
            Arc::new(crate::http::fetch::JwksFetcher::new().map_err(StartupError::Other)?);
        let services = Services::build(ServiceParts {
            config: config.clone(),
            clock,
            users,
            clients: registry,
            sessions,
            limits: b.limits,
            replay: b.replay,
            jwks_fetch,
            authorize: b.authorize,
            consents: b.consents,
            device: b.device,
            mail: b.mail,
            events: b.events,
            transport,
            keys,
            passwords,
            metrics: metrics.clone(),
        })
        .map_err(|e| StartupError::Other(e.to_string()))?;
        log_mail_settings(&config);
        services
            .admin
            .bootstrap_admin()
            .await
            .map_err(|e| StartupError::Other(format!("bootstrap admin: {e}")))?;
        let public_cache_control = HeaderValue::from_str(&format!(
            "public, max-age={}",
            config.jwks_max_age.as_secs()
        ))
        .map_err(|e| StartupError::Other(e.to_string()))?;
        let issuer_origin = url::Url::parse(&config.issuer)
            .map(|u| u.origin().ascii_serialization())
            .unwrap_or_default();
        let Services {
            accounts,
            sessions,
            oauth,
            authorize,
            devices,
            admin,
            limits,
            published,
            registration,
            mail,
            verification,
            resets,
            events,
            lifecycle,
        } = services;
        let state = Arc::new(AppState {
            accounts,
            sessions,
            oauth,
            authorize,
            devices,
            browser: BrowserSettings {
                secure: config.issuer.starts_with("https://"),
                branding: Branding {
                    display_name: config.display_name.clone(),
                    logo_url: config.logo_url.clone(),
                },
            },
            admin,
            limits,
            published,
            registration,
            mail,
            verification,
            resets,
            events,
            lifecycle,
            metrics,
            trusted_proxies: config.trusted_proxies.clone(),
            cookies: CookieSettings {
                enabled: config.refresh_cookie,
                host_prefix: config.issuer.starts_with("https://"),
                max_age_secs: config.refresh_ttl.as_secs(),
                issuer_origin,
                allowed_origins: config.cors_origins.clone(),
            },
            body_limit: config.body_limit,
            request_timeout: config.request_timeout,
            public_cache_control,
            documents,
            readiness_checks,
        });
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| StartupError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let ops_listener = match config.metrics_listen {
            None => None,
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| StartupError::Bind { addr, source })?,
            ),
        };
        let tls = match &config.tls {
            None => None,
            Some((cert, key)) => {
                Some(server::tls_acceptor(cert, key).map_err(StartupError::Other)?)
            }
        };
        Ok(Application {
            listener,
            ops_listener,
            tls,
            state,
            config,
        })
    }

    /// The address of the `TOKEND_METRICS_LISTEN` listener, when there is one.
    pub fn ops_addr(&self) -> Option<SocketAddr> {
        self.ops_listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| self.config.listen)
    }

    /// The state the handlers share.
    pub fn state(&self) -> Arc<AppState> {
        self.state.clone()
    }

    /// Serves until `shutdown` resolves, then drains in-flight requests within the grace period.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()> + Send + 'static) {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut maintenance_stop = stop_rx.clone();
        let maintenance = self.state.published.keys().spawn_maintenance(async move {
            let _ = maintenance_stop.changed().await;
        });
        let mut mail_stop = stop_rx.clone();
        let mail_worker = self.state.mail.spawn_worker(async move {
            let _ = mail_stop.changed().await;
        });
        let limits = ServerLimits {
            header_read_timeout: self.config.header_read_timeout,
            idle_timeout: self.config.idle_timeout,
            max_header_bytes: 16 * 1024,
            shutdown_grace: self.config.shutdown_grace,
            max_connections: self.config.max_connections,
            max_connections_per_ip: self.config.max_connections_per_ip,
            trusted_proxies: self.config.trusted_proxies.clone().into(),
        };
        warn_if_descriptors_are_short(self.config.max_connections);
        tracing::info!(
            addr = %self.local_addr(),
            tls = self.tls.is_some(),
            issuer = %self.config.issuer,
            "tokend listening"
        );
        let cors = self.config.cors_origins.clone();
        let ops = match self.ops_listener {
            None => None,
            Some(listener) => {
                let addr = listener.local_addr().ok();
                tracing::info!(addr = ?addr, "metrics, healthz and readyz listening");
                let service =
                    stack::build(Router::new(self.state.clone(), Listener::Ops), Vec::new());
                let mut stop = stop_rx.clone();
                Some(tokio::spawn(server::serve(
                    listener,
                    service,
                    None,
                    limits.clone(),
                    async move {
                        let _ = stop.changed().await;
                    },
                )))
            }
        };
        let listener = if ops.is_some() {
            Listener::Api
        } else {
            Listener::All
        };
        let service = stack::build(Router::new(self.state.clone(), listener), cors);
        server::serve(self.listener, service, self.tls, limits, shutdown).await;
        let _ = stop_tx.send(true);
        if let Some(ops) = ops {
            let _ = ops.await;
        }
        let _ = maintenance.await;
        if let Some(worker) = mail_worker {
            let _ = worker.await;
        }
        // The events of the last requests reach the store before the process ends.
        self.state.events.flush().await;
    }
}

/// Says once at start-up where mail goes (never the SMTP URL: it may hold a password) and what
/// the configuration means for verification and `TOKEND_ADMIN_EMAILS`.
fn log_mail_settings(config: &Config) {
    use crate::config::{EmailVerification, MailTransport};
    match &config.mail.transport {
        MailTransport::Smtp(s) => {
            tracing::info!(host = %s.host, port = s.port, "mail goes out through SMTP")
        }
        MailTransport::Dir(d) => {
            tracing::info!(dir = %d.display(), "mail is written as .eml files (no SMTP server)")
        }
        MailTransport::Off => tracing::warn!(
            "no TOKEND_SMTP_URL or TOKEND_MAIL_DIR: no mail is sent, so no address can be verified"
        ),
    }
    let verifies = config.mail.verification != EmailVerification::Off
        && !matches!(config.mail.transport, MailTransport::Off);
    if !config.admin_emails.is_empty() && !verifies {
        tracing::warn!(
            "TOKEND_ADMIN_EMAILS grants admin only when its owner verifies the address, and \
             addresses are not verified with this configuration: it grants nothing"
        );
    }
}

/// The accept loop waits at `TOKEND_MAX_CONNECTIONS`; below that, a smaller open-file limit makes
/// accepts fail instead (they back off and retry), so say so once at start-up.
fn warn_if_descriptors_are_short(max_connections: usize) {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
    if let Some(limit) = limit.and_then(|l| usize::try_from(l).ok()) {
        if limit < max_connections {
            tracing::warn!(
                open_files = limit,
                max_connections,
                "the open-file limit (ulimit -n) is below TOKEND_MAX_CONNECTIONS; \
                 raise it, or lower TOKEND_MAX_CONNECTIONS"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::keys::DEFAULT_RSA_BITS;

    #[test]
    fn the_configured_key_schedule_keeps_the_key_rings_defaults() {
        let config = Config::from_env(&HashMap::<String, String>::new()).unwrap();
        let keys = keys_config(&config);
        assert_eq!(keys.rsa_bits, DEFAULT_RSA_BITS);
        assert_eq!(keys.retention, config.refresh_ttl + RETENTION_LEEWAY);
        keys.validate().unwrap();
    }
}
