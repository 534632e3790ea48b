//! Start-up and shutdown: build everything (binding the listener), then run until stopped.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use eventlog::EventLog;
use eventlog::jetstream::JetStreamLog;
use eventlog::sqlite::SqliteLog;
use poem::EndpointExt;
use projector::{Progress, ReadModels};
use search::SearchIndex;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::chat::auth::{self, Auth};
use crate::chat::{Chat, Presence, Search};
use crate::config::Settings;
use crate::live::hub::HubSettings;
use crate::ops::health::Readiness;
use crate::ops::metered_log::{Failures, MeteredLog};
use crate::ops::monitor::{Change, Watched};

/// A built server: storage open, listener bound, not yet serving.
pub struct App {
    settings: Settings,
    acceptor: TcpListener,
    addr: SocketAddr,
    /// The admin listener (`CHAT_ADMIN_LISTEN`), when configured.
    admin: Option<(TcpListener, SocketAddr)>,
    log: Arc<dyn EventLog>,
    models: ReadModels,
    progress_tx: projector::Advance,
    chat: Arc<Chat>,
    readiness: Readiness,
    presence: Presence,
    nats: Option<async_nats::Client>,
    search_index: SearchIndex,
    search_tx: watch::Sender<u64>,
    search: Search,
    failures: Arc<Failures>,
    alerts: observability::Alerts,
    /// The one follower of the log whose events every consumer here shares.
    follower: Follower,
}

type Follower = std::pin::Pin<Box<dyn Future<Output = eventlog::Result<()>> + Send>>;

/// Opens the search index for `log` (rebuilt from it when missing, of another version, or
/// ahead of it).
async fn open_search(settings: &Settings, log: &dyn EventLog) -> anyhow::Result<SearchIndex> {
    let head = log.head().await?;
    let path = settings.search_path();
    tokio::task::spawn_blocking(move || SearchIndex::open_for_log(path, head))
        .await?
        .context("cannot open the search index")
}

/// The opened storage: the log, the read models and, on the scale-out backend, the NATS
/// connection (for presence and typing across nodes).
struct Storage {
    log: Arc<dyn EventLog>,
    models: ReadModels,
    /// The NATS connection, when JetStream is the backend.
    nats: Option<async_nats::Client>,
    /// Tells the backend's event-id index (JetStream, KurrentDB) which log to follow: the
    /// node's shared follower (see `App::build`), so each event reaches the node once.
    index_from: Option<IndexFrom>,
}

type IndexFrom = Box<dyn FnOnce(std::sync::Weak<dyn EventLog>) + Send>;

#[cfg(feature = "kurrentdb")]
async fn open_kurrentdb(settings: &Settings) -> anyhow::Result<(Arc<dyn EventLog>, IndexFrom)> {
    let url = settings.kurrentdb_url.clone().unwrap_or_default();
    let mut options = eventlog::kurrentdb::Options::new(url, settings.kurrentdb_index_path());
    options.index_feed = eventlog::jetstream::IndexFeed::Given;
    tracing::info!(prefix = %options.stream_prefix, "event log: KurrentDB");
    let log = eventlog::kurrentdb::KurrentLog::connect(options)
        .await
        .context("cannot open the KurrentDB event log")?;
    let index = log.clone();
    Ok((
        Arc::new(log),
        Box::new(move |source| index.index_from(source)),
    ))
}

#[cfg(not(feature = "kurrentdb"))]
async fn open_kurrentdb(_: &Settings) -> anyhow::Result<(Arc<dyn EventLog>, IndexFrom)> {
    anyhow::bail!(
        "CHAT_KURRENTDB_URL is set but this chatd was built without KurrentDB support \
         (cargo build --release --features kurrentdb)"
    )
}

async fn open_storage(settings: &Settings) -> anyhow::Result<Storage> {
    // Before `secure` re-protects it: a secret others could read must be replaced, not hidden.
    crate::datadir::check_secret_file(&settings.data_dir.join(auth::SECRET_FILE))?;
    crate::datadir::secure(&settings.data_dir)?;
    let (log, nats, index_from): (Arc<dyn EventLog>, _, Option<IndexFrom>) = match settings
        .jetstream()
    {
        _ if settings.kurrentdb_url.is_some() => {
            let (log, index_from) = open_kurrentdb(settings).await?;
            (log, None, Some(index_from))
        }
        Some(mut options) => {
            options.index_feed = eventlog::jetstream::IndexFeed::Given;
            tracing::info!(url = %eventlog::jetstream::redact_url(&options.url), stream = %options.stream, "event log: NATS JetStream");
            let log = JetStreamLog::connect(options)
                .await
                .context("cannot open the JetStream event log")?;
            let (nats, index) = (log.client().clone(), log.clone());
            (
                Arc::new(log),
                Some(nats),
                Some(Box::new(move |source| index.index_from(source))),
            )
        }
        None => (
            Arc::new(
                SqliteLog::open(settings.events_path())
                    .await
                    .context("cannot open the event log")?,
            ),
            None,
            None,
        ),
    };
    let path = settings.read_models_path();
    let nice = settings.projector_nice;
    let open = |path: std::path::PathBuf| async move {
        tokio::task::spawn_blocking(move || ReadModels::open(path, nice))
            .await?
            .context("cannot open the read models")
    };
    let mut models = open(path.clone()).await?;
    // Read models ahead of the log belong to another (or a restored older) log: the events
    // they claim to have seen are not these. Rebuild rather than silently skip new events.
    let (checkpoint, head) = (models.checkpoint().await?, log.head().await?);
    if checkpoint > head {
        tracing::warn!(
            checkpoint,
            head,
            "read models are ahead of the event log; rebuilding them"
        );
        drop(models);
        ReadModels::delete(&path)?;
        models = open(path).await?;
    }
    Ok(Storage {
        log,
        models,
        nats,
        index_from,
    })
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl App {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        if settings.nats.url.is_some() && settings.kurrentdb_url.is_some() {
            anyhow::bail!("set CHAT_NATS_URL or CHAT_KURRENTDB_URL, not both");
        }
        if (settings.nats.url.is_some() || settings.kurrentdb_url.is_some())
            && settings.jwt_secret.is_none()
        {
            anyhow::bail!(
                "CHAT_JWT_SECRET must be set when CHAT_NATS_URL or CHAT_KURRENTDB_URL is: every \
                 node must sign and check tokens with the same secret"
            );
        }
        crate::ops::metrics::install();
        let failures = Arc::new(Failures::default());
        let Storage {
            log,
            models,
            nats,
            index_from,
        } = open_storage(&settings).await?;
        let log = MeteredLog::wrap(log, failures.clone());
        // The projector, the search indexer and the hub follow the log through one follower.
        let (shared, follower) =
            eventlog::follow::Shared::start(log, eventlog::follow::DEFAULT_CAPACITY).await?;
        let log: Arc<dyn EventLog> = shared;
        // The backend's event-id index follows the same follower: one subscription per node.
        if let Some(index_from) = index_from {
            index_from(Arc::downgrade(&log));
        }
        let follower: Follower = Box::pin(follower);
        let search_index = open_search(&settings, log.as_ref()).await?;
        let secret =
            auth::load_or_create_secret(&settings.data_dir, settings.jwt_secret.as_deref())?;
        if secret.len() < crate::datadir::SHORT_SECRET {
            tracing::warn!(
                characters = secret.len(),
                "the JWT secret is short: use at least {} random characters \
                 (`openssl rand -base64 32`)",
                crate::datadir::SHORT_SECRET
            );
        }
        let auth = Auth::new(
            &secret,
            settings.access_token_ttl(),
            settings.refresh_token_ttl_days,
            (settings.argon2_memory_kib, settings.argon2_iterations),
        )?
        .with_hashing(settings.limits.hash_concurrency, settings.hash_wait());
        let (progress_tx, progress) = Progress::new();
        let head_at_start = log.head().await?;
        let presence = Presence::default();
        let chat = Arc::new(Chat::new(
            log.clone(),
            models.clone(),
            progress.clone(),
            auth,
            presence.clone(),
            crate::limits::Limits::new(&settings.limits, settings.ws_rate),
        ));
        let (acceptor, addr) = bind(settings.listen).await?;
        let admin = match settings.admin_listen {
            Some(listen) => Some(bind(listen).await?),
            None => None,
        };
        let (search_tx, indexed) = Progress::new();
        let search_tx = watch::Sender::from(search_tx);
        let search = Search::new(chat.clone(), search_index.clone(), indexed.clone());
        let readiness = Readiness {
            log: log.clone(),
            progress,
            head_at_start,
            indexed,
        };
        Ok(Self {
            settings,
            acceptor,
            addr,
            admin,
            log,
            models,
            progress_tx,
            chat,
            readiness,
            presence,
            nats,
            search_index,
            search_tx,
            search,
            failures,
            alerts: observability::Alerts::disabled(),
            follower,
        })
    }

    /// Where the alert rules post (Slack, when configured); off by default.
    pub fn with_alerts(mut self, alerts: observability::Alerts) -> Self {
        self.alerts = alerts;
        self
    }

    /// The bound address (useful with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The admin listener's bound address, when `CHAT_ADMIN_LISTEN` is set.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(|(_, addr)| *addr)
    }

    /// Serves until `shutdown` resolves (or a background task fails), then stops accepting,
    /// lets in-flight requests finish, flushes the log and stops the projector.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Self {
            settings,
            acceptor,
            addr,
            admin,
            log,
            models,
            progress_tx,
            chat,
            readiness,
            presence,
            nats,
            search_index,
            search_tx,
            search,
            failures,
            alerts,
            follower,
        } = self;
        let failed = CancellationToken::new();
        let stop_follower = CancellationToken::new();
        let follower = supervise(
            "log follower",
            {
                let stop = stop_follower.clone();
                async move {
                    tokio::select! {
                        () = stop.cancelled() => Ok(()),
                        followed = follower => followed,
                    }
                }
            },
            failed.clone(),
        );
        let stop_projector = CancellationToken::new();
        let stop_live = CancellationToken::new();

        let hub_settings = HubSettings {
            queue: settings.ws_queue,
            offline_grace: settings.presence_grace(),
            peers: nats.map(|client| {
                crate::live::peers::Peers::new(
                    client,
                    format!("{}.live", settings.nats.subject_prefix),
                    settings.node_name(),
                )
            }),
            failures: failures.clone(),
            auth: chat.auth().clone(),
            shards: settings
                .hub_shards
                .unwrap_or_else(crate::config::default_hub_shards),
        };
        let (hub, hub_run) = crate::live::hub::start(
            log.clone(),
            &models,
            presence,
            hub_settings,
            stop_live.clone(),
        )
        .await?;
        let monitor = supervise(
            "monitor",
            crate::ops::monitor::run(
                Watched {
                    log: log.clone(),
                    projections: vec![
                        ("read_model", progress_tx.subscribe()),
                        ("search", search_tx.subscribe()),
                        ("hub", hub.position()),
                    ],
                    failures,
                    thresholds: settings.alert_thresholds(),
                },
                move |change| match change {
                    Change::Raise {
                        key,
                        title,
                        message,
                    } => {
                        tracing::warn!(alert = %key, %title, "{message}");
                        alerts.raise(
                            key,
                            observability::Alert {
                                title,
                                message,
                                severity: observability::Severity::Critical,
                                details: Vec::new(),
                                error_chain: Vec::new(),
                                trace_id: None,
                            },
                        );
                    }
                    Change::Resolve { key, message } => {
                        tracing::info!(alert = %key, "resolved: {message}");
                        alerts.resolve(key);
                    }
                },
                // Stops with live delivery, when draining starts: from then on the hub
                // (deliberately) falls behind and must not page anyone.
                stop_live.clone(),
            ),
            failed.clone(),
        );
        let projector = supervise(
            "projector",
            projector::run(log.clone(), models, progress_tx, stop_projector.clone()),
            failed.clone(),
        );
        let hub_task = supervise("hub", hub_run, failed.clone());
        let indexer = supervise(
            "search indexer",
            search::run(
                log.clone(),
                search_index,
                search_tx,
                stop_projector.clone(),
                settings.search_indexer(),
            ),
            failed.clone(),
        );

        // The admin listener stops accepting when the public one starts draining.
        let admin_stopped = CancellationToken::new();
        let connection_limits = settings.connection_limits();
        let admin_server = admin.map(|(acceptor, addr)| {
            tracing::info!(%addr, "admin listening");
            let app = crate::http::admin_routes(readiness.clone());
            let stop = admin_stopped.clone();
            tokio::spawn(crate::http::server::serve(
                acceptor,
                app.map_to_response().boxed(),
                async move { stop.cancelled().await },
                Duration::from_secs(1),
                connection_limits,
            ))
        });
        tracing::info!(%addr, data_dir = %settings.data_dir.display(), "listening");
        let app = crate::http::routes(chat, hub, readiness, &settings, search);
        let stop = {
            let failed = failed.clone();
            let admin_stopped = admin_stopped.clone();
            async move {
                tokio::select! {
                    () = shutdown => tracing::info!("shutdown requested"),
                    () = failed.cancelled() => {}
                }
                // Live connections would otherwise hold the drain open: close them now (with
                // a code that tells clients to resume elsewhere or later).
                stop_live.cancel();
                admin_stopped.cancel();
            }
        };
        let served = crate::http::server::serve(
            acceptor,
            app.map_to_response().boxed(),
            stop,
            Duration::from_secs(settings.shutdown_grace_secs),
            connection_limits,
        )
        .await;

        admin_stopped.cancel();
        // No request is in flight any more. Stop the projector (it resumes from its checkpoint
        // next time), then close the log, which finishes and syncs any append still queued.
        stop_projector.cancel();
        let projected = projector.await.context("projector supervisor failed");
        let indexed = indexer.await.context("search indexer supervisor failed");
        let hub_result = hub_task.await.context("hub supervisor failed");
        let monitored = monitor.await.context("monitor supervisor failed");
        stop_follower.cancel();
        let followed = follower.await.context("log follower supervisor failed");
        log.close().await;
        let admin_served = match admin_server {
            Some(task) => task.await.context("admin server task failed")?,
            None => Ok(()),
        };
        tracing::info!("stopped");
        served.context("server failed")?;
        admin_served.context("admin server failed")?;
        projected??;
        indexed??;
        hub_result??;
        monitored??;
        followed??;
        Ok(())
    }
}

/// Binds a listener on `addr` (port 0 picks a free one); returns it with its bound address.
async fn bind(addr: SocketAddr) -> anyhow::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let bound = listener
        .local_addr()
        .context("listener has no socket address")?;
    Ok((listener, bound))
}

/// Runs a long-lived task; an error or a panic is logged and cancels `failed`, which stops the
/// server (serving with a dead projector or hub would look healthy and be wrong).
fn supervise<E: Into<anyhow::Error>>(
    name: &'static str,
    task: impl Future<Output = Result<(), E>> + Send + 'static,
    failed: CancellationToken,
) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    tokio::spawn(async move {
        let result =
            match futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(task)).await {
                Ok(result) => result.map_err(Into::into),
                Err(_) => Err(anyhow::anyhow!("{name} panicked")),
            };
        if let Err(e) = &result {
            tracing::error!(task = name, error = %e, "background task stopped; shutting down");
            failed.cancel();
        }
        result
    })
}

/// `chatd rebuild`: deletes the read models and the search index and replays the whole log
/// into new ones. Returns the position replayed up to.
pub async fn rebuild(settings: &Settings) -> anyhow::Result<u64> {
    ReadModels::delete(&settings.read_models_path())?;
    SearchIndex::delete(&settings.search_path())?;
    let Storage { log, models, .. } = open_storage(settings).await?;
    let index = open_search(settings, log.as_ref()).await?;
    let head = log.head().await?;
    let (tx, progress) = Progress::new();
    let (search_tx, indexed) = Progress::new();
    let search_tx = watch::Sender::from(search_tx);
    let stop = CancellationToken::new();
    let runner = tokio::spawn(projector::run(log.clone(), models, tx, stop.clone()));
    let indexer = tokio::spawn(search::run(
        log.clone(),
        index,
        search_tx,
        stop.clone(),
        settings.search_indexer(),
    ));
    let day = Duration::from_secs(24 * 3600);
    let waited = progress.wait_for(head, day).await;
    let indexed_waited = indexed.wait_for(head, day).await;
    stop.cancel();
    runner.await.context("projector task panicked")??;
    indexer.await.context("search indexer task panicked")??;
    waited?;
    indexed_waited?;
    log.close().await;
    tracing::info!(position = head, "read models and search index rebuilt");
    Ok(head)
}
