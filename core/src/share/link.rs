//! The process's connection to Redis: one task that writes this instance's pins, applies the
//! other instances' pins, and survives Redis going away.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;
use futures_util::StreamExt;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, IntoConnectionInfo, RedisResult};
use tokio::sync::Notify;

use super::table::SharedTable;
use super::wire::{self, Message};
use crate::config::RedisConfig;
use crate::observe::metrics::SharedMetrics;

/// Pins waiting to be written; when Redis is away longer than this many new pins take, the
/// oldest are dropped (counted in `plugboard_redis_pins_dropped_total`): their instance keeps
/// them, only the others do not learn them.
const QUEUE: usize = 65_536;
/// Longest wait for a connection, and for an answer to one command or pipeline.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(1);
/// Reconnection back-off, doubling from the first to the last.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(2));
/// Keys asked for per `SCAN` step and `MGET`.
const SCAN_COUNT: usize = 1000;

/// A pin to write to Redis and publish.
pub struct Write {
    pub service: Arc<str>,
    pub table: String,
    pub hash: u64,
    pub backend: Arc<str>,
    pub ttl: Duration,
}

/// What the shared tables of one process have in common: the Redis settings, the write
/// queue, and the tables to feed (weak: a table lives as long as its service version).
pub struct Link {
    cfg: RedisConfig,
    /// Tells this instance's messages from the others'.
    id: u64,
    queue: ArrayQueue<Write>,
    wake: Notify,
    tables: Mutex<Vec<Weak<SharedTable>>>,
    /// Tables registered so far: the task loads pins only when this moved.
    registered: AtomicU64,
    metrics: SharedMetrics,
}

impl Link {
    pub fn new(cfg: &RedisConfig, metrics: SharedMetrics) -> Arc<Link> {
        Arc::new(Link {
            cfg: cfg.clone(),
            id: fastrand::u64(..),
            queue: ArrayQueue::new(QUEUE),
            wake: Notify::new(),
            tables: Mutex::new(Vec::new()),
            registered: AtomicU64::new(0),
            metrics,
        })
    }

    pub fn config(&self) -> &RedisConfig {
        &self.cfg
    }

    pub(super) fn register(&self, table: &Arc<SharedTable>) {
        let mut tables = self.tables.lock().expect("tables lock");
        tables.retain(|t| t.strong_count() > 0);
        tables.push(Arc::downgrade(table));
        self.registered.fetch_add(1, Ordering::Release);
        // A table made by a reload loads what Redis holds at the next tick.
        self.wake.notify_one();
    }

    /// Queues a new pin (from the request path: never blocks, never allocates beyond the
    /// pin itself).
    pub(super) fn push(&self, w: Write) {
        if self.queue.force_push(w).is_some() {
            self.metrics.dropped.inc();
        }
        self.wake.notify_one();
    }

    fn tables(&self) -> Vec<Arc<SharedTable>> {
        let tables = self.tables.lock().expect("tables lock");
        tables.iter().filter_map(Weak::upgrade).collect()
    }

    fn client(&self) -> RedisResult<Client> {
        let mut info = self.cfg.url.as_str().into_connection_info()?;
        if let Some(p) = &self.cfg.password {
            if info.redis_settings().password().is_none() {
                let settings = info.redis_settings().clone().set_password(p);
                info = info.set_redis_settings(settings);
            }
        }
        match &self.cfg.ca {
            None => Client::open(info),
            Some(ca) => Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(ca.clone()),
                },
            ),
        }
    }

    /// Connects, and reconnects with back-off for as long as the process runs.
    async fn run(&self) {
        let client = match self.client() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(redis = %self.cfg.shown(), "cannot use Redis: {e}; persistence stays local");
                return;
            }
        };
        let mut state = Session {
            pending: Vec::new(),
            connected: false,
            backoff: BACKOFF.0,
            logged_down: false,
        };
        loop {
            let e = self.session(&client, &mut state).await;
            self.metrics.up.set(0);
            self.metrics.errors.inc();
            if state.connected || !state.logged_down {
                tracing::warn!(
                    redis = %self.cfg.shown(),
                    "Redis unreachable ({e}); pins stay local to this instance until it is back"
                );
                state.logged_down = true;
            }
            state.connected = false;
            tokio::time::sleep(state.backoff).await;
            state.backoff = (state.backoff * 2).min(BACKOFF.1);
        }
    }

    /// One connection's life: subscribe, load, then write and apply until an error.
    async fn session(&self, client: &Client, st: &mut Session) -> redis::RedisError {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT));
        let mut conn = match client
            .get_multiplexed_async_connection_with_config(&config)
            .await
        {
            Ok(c) => c,
            Err(e) => return e,
        };
        let channel = wire::channel(&self.cfg.prefix);
        let pubsub = async {
            let mut p = client.get_async_pubsub().await?;
            p.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(p)
        };
        let mut messages = match tokio::time::timeout(CONNECT_TIMEOUT, pubsub).await {
            Ok(Ok(p)) => p.into_on_message(),
            Ok(Err(e)) => return e,
            Err(_) => return timeout("subscribing"),
        };
        let mut loaded: Vec<Weak<SharedTable>> = Vec::new();
        let mut registered = self.registered.load(Ordering::Acquire);
        if let Err(e) = self.load_new(&mut conn, &mut loaded).await {
            return e;
        }
        self.metrics.up.set(1);
        st.connected = true;
        st.backoff = BACKOFF.0;
        if st.logged_down {
            tracing::info!(redis = %self.cfg.shown(), "Redis reachable again: sharing pins");
            st.logged_down = false;
        } else {
            tracing::info!(redis = %self.cfg.shown(), "Redis connected: sharing pins");
        }
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                () = self.wake.notified() => {}
                _ = tick.tick() => self.refresh(&mut st.pending),
                m = messages.next() => match m {
                    Some(m) => self.receive(m.get_payload_bytes()),
                    None => return timeout("subscription closed"),
                },
            }
            let now = self.registered.load(Ordering::Acquire);
            if now != registered {
                registered = now;
                if let Err(e) = self.load_new(&mut conn, &mut loaded).await {
                    return e;
                }
            }
            if let Err(e) = self.flush(&mut conn, &mut st.pending).await {
                return e;
            }
        }
    }

    /// Loads the pins Redis holds into tables not loaded on this connection yet (all of them
    /// after a (re)connection; a reload's new ones later). A table takes pins until it is full.
    async fn load_new(
        &self,
        conn: &mut MultiplexedConnection,
        loaded: &mut Vec<Weak<SharedTable>>,
    ) -> RedisResult<()> {
        for table in self.tables() {
            if loaded.iter().any(|w| std::ptr::eq(w.as_ptr(), &*table)) {
                continue;
            }
            let pattern = wire::pattern(&self.cfg.prefix, &table.service, &table.tag);
            let mut cursor: u64 = 0;
            loop {
                let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(SCAN_COUNT)
                    .query_async(conn)
                    .await?;
                if !keys.is_empty() {
                    let names: Vec<Option<String>> =
                        redis::cmd("MGET").arg(&keys).query_async(conn).await?;
                    for (key, name) in keys.iter().zip(names) {
                        if let (Some(hash), Some(name)) = (wire::hash_of(key), name) {
                            table.load(hash, &name);
                        }
                    }
                }
                cursor = next;
                if cursor == 0 || table.is_full() {
                    break;
                }
            }
            loaded.retain(|w| w.strong_count() > 0);
            loaded.push(Arc::downgrade(&table));
        }
        Ok(())
    }

    /// Queues, for every table whose refresh is due, the pins used here since the last one.
    fn refresh(&self, pending: &mut Vec<Write>) {
        let now = Instant::now();
        let mut touched = Vec::new();
        for table in self.tables() {
            {
                let mut next = table.next_refresh.lock().expect("refresh lock");
                if *next > now {
                    continue;
                }
                *next = now + table.refresh_every();
            }
            touched.clear();
            table.take_touched(&mut touched);
            pending.extend(touched.drain(..).map(|(hash, backend)| Write {
                service: table.service.clone(),
                table: table.tag.clone(),
                hash,
                backend,
                ttl: table.timeout,
            }));
        }
    }

    /// Writes the queued pins (`SET .. PX`) and publishes them, in one pipeline. On an error
    /// they stay pending, for the next connection.
    async fn flush(
        &self,
        conn: &mut MultiplexedConnection,
        pending: &mut Vec<Write>,
    ) -> RedisResult<()> {
        while let Some(w) = self.queue.pop() {
            pending.push(w);
        }
        if pending.is_empty() {
            return Ok(());
        }
        if pending.len() > QUEUE {
            let extra = pending.len() - QUEUE;
            pending.drain(..extra);
            self.metrics.dropped.inc_by(extra as u64);
        }
        let prefix = &self.cfg.prefix;
        let mut pipe = redis::pipe();
        for w in pending.iter() {
            pipe.cmd("SET")
                .arg(wire::pin_key(prefix, &w.service, &w.table, w.hash))
                .arg(&*w.backend)
                .arg("PX")
                .arg(w.ttl.as_millis().max(1) as u64)
                .ignore();
        }
        let channel = wire::channel(prefix);
        let mut batch: Option<Message> = None;
        for w in pending.iter() {
            let same = batch.as_ref().is_some_and(|m| {
                *m.service == *w.service && m.table == w.table && m.pins.len() < wire::BATCH
            });
            if !same {
                if let Some(m) = batch.take() {
                    publish(&mut pipe, &channel, &m);
                }
                batch = Some(Message {
                    from: self.id,
                    service: w.service.to_string(),
                    table: w.table.clone(),
                    pins: Vec::new(),
                });
            }
            if let Some(m) = batch.as_mut() {
                m.pins
                    .push((format!("{:016x}", w.hash), w.backend.to_string()));
            }
        }
        if let Some(m) = batch {
            publish(&mut pipe, &channel, &m);
        }
        pipe.query_async::<()>(conn).await?;
        self.metrics.written.inc_by(pending.len() as u64);
        pending.clear();
        Ok(())
    }

    /// Applies another instance's message to the tables it is for.
    fn receive(&self, payload: &[u8]) {
        let Ok(m) = serde_json::from_slice::<Message>(payload) else {
            tracing::debug!("ignoring a malformed message on the pins channel");
            return;
        };
        if m.from == self.id {
            return;
        }
        for table in self.tables() {
            if *table.service != *m.service || table.tag != m.table {
                continue;
            }
            for (hash, backend) in &m.pins {
                if let Some(hash) = wire::parse_hash(hash) {
                    table.apply(hash, backend);
                    self.metrics.received.inc();
                }
            }
        }
    }
}

fn publish(pipe: &mut redis::Pipeline, channel: &str, m: &Message) {
    let text = serde_json::to_string(m).expect("serialisable");
    pipe.cmd("PUBLISH").arg(channel).arg(text).ignore();
}

fn timeout(what: &'static str) -> redis::RedisError {
    redis::RedisError::from(std::io::Error::new(std::io::ErrorKind::TimedOut, what))
}

/// What outlives one connection.
struct Session {
    /// Pins taken from the queue and not yet written.
    pending: Vec<Write>,
    connected: bool,
    backoff: Duration,
    /// The outage was logged (once per outage).
    logged_down: bool,
}

/// Runs the link as a pingora background service.
pub struct LinkService(pub Arc<Link>);

#[async_trait::async_trait]
impl BackgroundService for LinkService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        tokio::select! {
            () = self.0.run() => {}
            () = crate::io::listener::stopping(&mut shutdown) => {}
        }
    }
}
