//! The executors: one glommio `LocalExecutor` per shard, pinned to a core, joined by a channel
//! mesh. Tasks here only wait; all decisions are made in the core's [`ShardState`], called
//! through [`Shard::with_state`].

use crate::access::AclFile;
use crate::certs::Contexts;
use crate::driver::{logins_loop, net_loop, OsEntropy, Shard, SystemClock};
use crate::io;
use crate::logins::{Logins, Verifier};
use crate::mesh::{self, Mesh};
use crate::net::Net;
use crate::ring::NetRing;
use glommio::channels::channel_mesh::MeshBuilder;
use glommio::net::{TcpListener, TcpStream};
use glommio::{LocalExecutorBuilder, Placement};
use ringmq_core::mesh::Batch;
use ringmq_core::{Config, ShardState};
use std::cell::RefCell;
use std::os::fd::{FromRawFd, IntoRawFd, RawFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How often a shard checks connect timeouts, keep-alives, session expiry and shutdown.
const TICK: Duration = Duration::from_millis(250);
/// Accept queue depth per listening socket (the kernel caps it at net.core.somaxconn).
const LISTEN_BACKLOG: i32 = 4096;
/// How long shutdown waits for the shards to say goodbye to their clients.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Set by SIGTERM/SIGINT; every shard notices at its next tick.
static SHUTDOWN: AtomicBool = AtomicBool::new(false);
/// Shards that have closed their listeners and connections.
static SHARDS_DONE: AtomicUsize = AtomicUsize::new(0);
/// Shards that have recovered their journal and whose restored subscriptions every other
/// shard has acknowledged: nobody listens before all have, or a publish right after a restart
/// could miss a restored session on another shard.
static SHARDS_READY: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static SHARD: RefCell<Option<Rc<Shard>>> = const { RefCell::new(None) };
}

/// A graceful shutdown has started.
pub fn shutting_down() -> bool {
    SHUTDOWN.load(Ordering::Relaxed)
}

/// The shard of the calling executor thread.
pub fn current() -> Rc<Shard> {
    SHARD.with(|s| s.borrow().clone().expect("called on a shard thread"))
}

/// Starts every shard and blocks until they all end.
pub fn run(
    cfg: Config,
    tls: Contexts,
    passwords: Option<Arc<Verifier>>,
    acl: Option<Arc<AclFile>>,
) -> std::io::Result<()> {
    assert!(cfg.shards >= 1 && cfg.shards <= 256, "1..=256 shards");
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let _ = STARTED.set(std::time::Instant::now());
    check_shard_count(&cfg.data_dir, cfg.shards)?;
    let cfg = Arc::new(cfg);
    let conn_count = Arc::new(AtomicUsize::new(0));
    // Each listener's process-wide counts (connections, handshakes), shared by the shards.
    let listener_counts: Vec<Arc<crate::admit::Counts>> =
        cfg.all_listeners().iter().map(|_| Arc::default()).collect();
    let mesh = (cfg.shards > 1)
        .then(|| MeshBuilder::<Batch, _>::full(cfg.shards, cfg.mesh_channel_batches));
    // Bound here, before any shard starts, so that a bad or taken address is a clear startup
    // error; shard 0 serves it.
    let mut metrics_fd = match cfg.metrics_addr {
        Some(addr) => {
            let l = std::net::TcpListener::bind(addr).map_err(|e| {
                std::io::Error::other(format!("cannot listen for metrics on {addr}: {e}"))
            })?;
            l.set_nonblocking(true)?;
            let addr = l.local_addr().unwrap_or(addr);
            tracing::info!(%addr, "serving metrics on http://{addr}/metrics");
            Some(l.into_raw_fd())
        }
        None => None,
    };
    let reload = tls.any().then(|| crate::certs::Reload::new(tls.clone()));
    watch_signals(cfg.clone(), reload.clone(), passwords.clone(), acl.clone())?;
    let mut handles = Vec::new();
    for i in 0..cfg.shards {
        let metrics_fd = if i == 0 { metrics_fd.take() } else { None };
        let cfg = cfg.clone();
        let mesh = mesh.clone();
        let counts = Counted {
            conn_count: conn_count.clone(),
            listeners: listener_counts.clone(),
        };
        let tls = tls.clone();
        let reload = reload.clone();
        let passwords = passwords.clone();
        let acl = acl.clone();
        let mut b = LocalExecutorBuilder::new(Placement::Fixed(i % cpus))
            .name(&format!("ringmq-shard-{i}"))
            .io_memory(cfg.io_memory)
            .ring_depth(cfg.ring_depth);
        if let Some(spin) = cfg.spin {
            b = b.spin_before_park(spin);
        }
        let h = b
            .spawn(move || async move {
                let security = Security {
                    tls,
                    reload,
                    passwords,
                    acl,
                };
                let r = shard_main(cfg, mesh, counts, metrics_fd, security).await;
                if let Err(e) = &r {
                    // One shard missing would leave its clients' sessions unreachable: the
                    // whole process stops.
                    eprintln!("ringmq: shard {i}: {e}");
                    std::process::exit(1);
                }
                r
            })
            .map_err(|e| std::io::Error::other(format!("cannot start shard {i}: {e}")))?;
        handles.push(h);
    }
    let mut result = Ok(());
    for h in handles {
        match h.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => result = Err(e),
            Err(e) => result = Err(std::io::Error::other(format!("shard failed: {e}"))),
        }
    }
    result
}

/// Sessions and retained messages live on the shard their hash picks, so a data directory is
/// only valid with the shard count that wrote it. The count is recorded at first start.
fn check_shard_count(data_dir: &std::path::Path, shards: usize) -> std::io::Result<()> {
    let path = data_dir.join("shards");
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let had: usize = text.trim().parse().map_err(|_| {
                std::io::Error::other(format!("{} is not a shard count", path.display()))
            })?;
            if had != shards {
                return Err(std::io::Error::other(format!(
                    "the data directory {} was written with --shards {had}; start with \
                     --shards {had} (its journals place sessions by client id hash over {had} \
                     shards), or use another --data-dir",
                    data_dir.display()
                )));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::write(&path, format!("{shards}\n"))?;
            std::fs::File::open(data_dir)?.sync_all()
        }
        Err(e) => Err(e),
    }
}

/// What a shard authenticates with: TLS and its reloads, and the password verifiers.
struct Security {
    tls: Contexts,
    reload: Option<Arc<crate::certs::Reload>>,
    passwords: Option<Arc<Verifier>>,
    acl: Option<Arc<AclFile>>,
}

/// The process-wide connection counts a shard shares with the others.
struct Counted {
    /// Every connection, for `--max-connections`.
    conn_count: Arc<AtomicUsize>,
    /// Each listener's, by its index in `Config::all_listeners`.
    listeners: Vec<Arc<crate::admit::Counts>>,
}

async fn shard_main(
    cfg: Arc<Config>,
    mesh: Option<MeshBuilder<Batch, glommio::channels::channel_mesh::Full>>,
    counted: Counted,
    metrics_fd: Option<RawFd>,
    security: Security,
) -> std::io::Result<()> {
    let Security {
        tls,
        reload,
        passwords,
        acl,
    } = security;
    let mut acl_generation = 0;
    let (id, mut mesh, receivers) = Mesh::join(mesh, cfg.shards).await?;
    let mut state = ShardState::new(
        id,
        cfg.shards,
        Rc::new((*cfg).clone()),
        Box::new(SystemClock),
        Box::new(OsEntropy),
    );
    // Recovery reads every segment: done before this shard accepts anything.
    let started = std::time::Instant::now();
    let (journal, report, recovered) = ringmq_core::durable::open(
        &cfg.data_dir,
        id,
        cfg.journal_segment_bytes,
        cfg.journal_move_aside,
    )
    .map_err(std::io::Error::other)?;
    let (bell_tx, bell_rx) = glommio::channels::local_channel::new_bounded(1);
    let durable = ringmq_core::durable::Durable::new(
        journal,
        cfg.fsync,
        cfg.journal_segment_bytes,
        cfg.journal_max_bytes,
    );
    state.durable = Some(durable);
    let sessions = recovered.sessions.len();
    let retained = recovered.retained.len();
    let messages: usize = recovered.sessions.values().map(|s| s.msgs.len()).sum();
    mesh.start_flushers(id);
    let buffers = u16::try_from(cfg.receive_buffers).expect("checked: at most 32768");
    let ring = NetRing::new(buffers)
        .map_err(|e| std::io::Error::other(format!("cannot set up the network ring: {e}")))?;
    let eventfd = io::dup_fd(ring.eventfd())?;
    let shard = Rc::new(Shard::new(
        state,
        Net::new(ring),
        tls,
        mesh,
        counted.conn_count,
    ));
    *shard.bell.borrow_mut() = Some(bell_tx);
    SHARD.with(|s| *s.borrow_mut() = Some(shard.clone()));
    if let Some(a) = &acl {
        acl_generation = a.generation();
        shard.with_state(|st| st.set_acl(Some(a.current())));
    }
    shard.with_state(|st| st.restore(recovered));
    // The replay's temporary copies are freed by now; hand their pages back to the system
    // rather than keep them in the allocator (they can be as large as the live state).
    // SAFETY: malloc_trim only releases free memory of glibc's heap.
    unsafe {
        libc::malloc_trim(0);
    }
    tracing::info!(
        shard = id,
        segments = report.segments,
        records = report.records,
        torn_tail = report.torn_tail,
        cut_bytes = report.truncated_bytes,
        moved_aside = ?report.moved_aside,
        sessions,
        messages,
        retained,
        took_ms = started.elapsed().as_millis() as u64,
        "journal recovered"
    );
    // SAFETY: a duplicate of the ring's eventfd, owned by the file from here on.
    let eventfd = unsafe { glommio::io::BufferedFile::from_raw_fd(eventfd) };
    glommio::spawn_local(net_loop(eventfd, cfg.batch_window)).detach();
    if let Some(v) = passwords {
        let logins = Logins::new(v)?;
        let fd = io::dup_fd(logins.mailbox().eventfd())?;
        *shard.logins.borrow_mut() = Some(logins);
        // SAFETY: a duplicate of the mailbox's eventfd, owned by the file from here on.
        let eventfd = unsafe { glommio::io::BufferedFile::from_raw_fd(fd) };
        glommio::spawn_local(logins_loop(eventfd)).detach();
    }
    glommio::spawn_local(journal_loop(bell_rx, cfg.fsync, cfg.journal_segment_bytes)).detach();
    mesh::start_receivers(receivers);

    let mut listen_fds = Vec::new();
    if let Some(fd) = metrics_fd {
        // Shut down with the MQTT listeners, so a restarted broker can bind it at once.
        listen_fds.push(fd);
        // SAFETY: the listening socket bound in `run`, handed to this shard alone.
        let listener = unsafe { TcpListener::from_raw_fd(fd) };
        glommio::spawn_local(metrics_accept_loop(listener)).detach();
    }

    // Listen only once every shard has recovered and announced its restored subscriptions.
    loop {
        let pending = shard.state.borrow().restore_pending;
        if pending == 0 {
            break;
        }
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
    SHARDS_READY.fetch_add(1, Ordering::SeqCst);
    while SHARDS_READY.load(Ordering::SeqCst) < cfg.shards {
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }

    if id == 0 && !cfg.sys_interval.is_zero() {
        glommio::spawn_local(sys_loop(cfg.sys_interval)).detach();
    }

    for (l, counts) in cfg.all_listeners().iter().zip(counted.listeners) {
        let fd = io::listen_socket(l.addr, LISTEN_BACKLOG)
            .map_err(|e| std::io::Error::other(format!("cannot listen on {l}: {e}")))?;
        listen_fds.push(fd);
        tracing::info!(shard = id, listener = %l, "listening");
        let eff = cfg.effective(l);
        let gate = crate::admit::Gate::new(
            counts,
            eff.max_connections,
            eff.max_accept_rate,
            eff.max_handshakes,
            cfg.shards,
        );
        let ws = l.is_ws().then(|| crate::ws::WsSettings {
            path: eff.ws_path.clone(),
            origins: eff.ws_origins.clone(),
        });
        shard.listen(fd, l.is_tls(), ws, eff.proxy_protocol, gate);
    }

    loop {
        glommio::timer::sleep(TICK).await;
        if SHUTDOWN.load(Ordering::Relaxed) {
            for fd in &listen_fds {
                io::shutdown_listener(*fd);
            }
            shard.with_state(|st| st.shutdown());
            // Their DISCONNECTs sent and the sockets shut now, to be closed after the linger.
            shard.close_waiting(Duration::MAX);
            shard.with_state(|st| {
                if let Some(d) = st.durable.as_mut() {
                    if let Err(e) = d.journal.sync_blocking() {
                        tracing::error!(shard = id, error = %e, "journal sync at shutdown failed");
                    }
                }
            });
            // Give the clients a moment to read their DISCONNECT before the sockets close.
            glommio::timer::sleep(crate::net::LINGER).await;
            shard.close_all_lingering();
            SHARDS_DONE.fetch_add(1, Ordering::SeqCst);
            tracing::info!(shard = id, "shard stopped");
            return Ok(());
        }
        shard.with_state(|st| st.tick());
        shard.tick();
        if let Some(r) = &reload {
            shard.take_reload(r);
        }
        if let Some(a) = acl.as_ref().filter(|a| a.generation() != acl_generation) {
            acl_generation = a.generation();
            shard.with_state(|st| st.set_acl(Some(a.current())));
        }
    }
}

/// SIGTERM or SIGINT start a graceful shutdown: every shard stops accepting, tells MQTT 5
/// clients why (DISCONNECT 0x8B) and closes its connections; the process exits 0 when all
/// shards are done, or after a bounded grace period.
///
/// SIGHUP reloads the password and ACL files, and the TLS files (certificate, key, CA, CRL): shards
/// take the new TLS settings at their next tick, for new handshakes; established connections
/// keep their sessions. A file that does not load keeps the settings in use, and the error is
/// logged.
fn watch_signals(
    cfg: Arc<Config>,
    reload: Option<Arc<crate::certs::Reload>>,
    passwords: Option<Arc<Verifier>>,
    acl: Option<Arc<AclFile>>,
) -> std::io::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let shards = cfg.shards;
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])?;
    std::thread::Builder::new()
        .name("ringmq-signals".into())
        .spawn(move || {
            let mut stop = None;
            for sig in signals.forever() {
                if sig != SIGHUP {
                    stop = Some(sig);
                    break;
                }
                if let Some(r) = &reload {
                    r.reload(&cfg);
                }
                if let Some(p) = &passwords {
                    p.reload();
                }
                if let Some(a) = &acl {
                    a.reload();
                }
                if reload.is_none() && passwords.is_none() && acl.is_none() {
                    tracing::info!(
                        "SIGHUP: no TLS listener, password or ACL file: nothing to reload"
                    );
                }
            }
            if let Some(sig) = stop {
                // Set first: logging may fail (stderr closed) and must not stop the shutdown.
                SHUTDOWN.store(true, Ordering::SeqCst);
                tracing::info!(signal = sig, "shutting down");
                let deadline = std::time::Instant::now() + SHUTDOWN_GRACE;
                while SHARDS_DONE.load(Ordering::SeqCst) < shards
                    && std::time::Instant::now() < deadline
                {
                    std::thread::sleep(Duration::from_millis(10));
                }
                std::process::exit(0);
            }
        })?;
    Ok(())
}

/// Raises the open-file limit, says whether it can hold `--max-connections`, and sizes the
/// descriptor table for as many connections as the limit allows (`io::reserve_descriptors`).
pub fn check_fd_limit(max_connections: usize) {
    match io::raise_nofile_limit() {
        Ok(limit) => {
            // A few descriptors go to listeners, io_uring rings, the journal and stdio.
            let usable = limit.saturating_sub(64) as usize;
            let table = limit.min(max_connections as u64 + 64);
            if let Err(e) = io::reserve_descriptors(table) {
                tracing::warn!(error = %e, descriptors = table, "cannot size the descriptor table");
            }
            if usable < max_connections {
                tracing::warn!(
                    open_file_limit = limit,
                    max_connections,
                    "the open-file limit allows about {usable} connections, below --max-connections; \
                     raise it (ulimit -n / LimitNOFILE=) to hold more"
                );
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot read or raise the open-file limit"),
    }
}

/// Largest HTTP request head the metrics endpoint reads.
const HTTP_MAX_REQUEST: usize = 8 * 1024;
/// Time a metrics client has to send its request.
const HTTP_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a scrape waits for the other shards' answers.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);

async fn metrics_accept_loop(listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok(stream) => {
                glommio::spawn_local(serve_http(stream)).detach();
            }
            Err(_) if SHUTDOWN.load(Ordering::Relaxed) => return,
            Err(e) => {
                tracing::warn!(error = %e, "metrics accept failed");
                glommio::timer::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// One request per connection: `GET /metrics`, `GET /healthz`, anything else 404.
async fn serve_http(mut stream: TcpStream) {
    use futures_lite::{AsyncReadExt, AsyncWriteExt};
    let deadline = std::time::Instant::now() + HTTP_READ_TIMEOUT;
    let mut buf = vec![0u8; HTTP_MAX_REQUEST];
    let mut len = 0;
    let complete = loop {
        if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
            break true;
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if len == buf.len() || left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            break false;
        }
        match stream.read(&mut buf[len..]).await {
            Ok(0) | Err(_) => break false,
            Ok(n) => len += n,
        }
    };
    let (status, content_type, body) = if !complete {
        ("400 Bad Request", "text/plain", "bad request\n".to_owned())
    } else {
        let head = String::from_utf8_lossy(&buf[..len]);
        let mut first = head.lines().next().unwrap_or("").split(' ');
        let (method, path) = (first.next().unwrap_or(""), first.next().unwrap_or(""));
        let path = path.split('?').next().unwrap_or("");
        match (method, path) {
            ("GET", "/metrics") => match scrape().await {
                Some(text) => ("200 OK", "text/plain; version=0.0.4; charset=utf-8", text),
                None => (
                    "503 Service Unavailable",
                    "text/plain",
                    "a shard did not answer in time\n".to_owned(),
                ),
            },
            ("GET", "/healthz") => ("200 OK", "text/plain", "ok\n".to_owned()),
            _ => ("404 Not Found", "text/plain", "not found\n".to_owned()),
        }
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.close().await;
}

/// Process start, for uptime.
static STARTED: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

fn process_stats() -> ringmq_core::metrics::Process {
    ringmq_core::metrics::Process {
        resident_bytes: ringmq_core::metrics::resident_bytes(),
        open_fds: std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64),
        uptime_s: STARTED.get().map_or(0, |t| t.elapsed().as_secs()),
    }
}

/// How long the journal task sleeps when nothing rings: it still prepares segments and
/// compacts.
const JOURNAL_IDLE: Duration = Duration::from_millis(500);

/// The shard's journal task: syncs under the `--fsync` policy (group commit: everything
/// appended while a sync runs goes in the next one), prepares the next segment off the
/// reactor, and drives compaction. Blocking calls run on glommio's blocking thread.
async fn journal_loop(
    bell: glommio::channels::local_channel::LocalReceiver<()>,
    policy: ringmq_core::config::Fsync,
    cfg_segment_bytes: u64,
) {
    use ringmq_core::config::Fsync;
    let shard = current();
    let mut last_sync: Option<std::time::Instant> = None;
    loop {
        // While a compaction is under way its steps follow each other closely (a 1 ms pause
        // lets connections run); otherwise wait for an append or the idle period.
        let compacting = shard
            .state
            .borrow()
            .durable
            .as_ref()
            .is_some_and(|d| d.checkpoint.is_some());
        let wait = if compacting {
            Duration::from_millis(1)
        } else {
            JOURNAL_IDLE
        };
        let _ = glommio::timer::timeout(wait, async { Ok(bell.recv().await) }).await;
        if SHUTDOWN.load(Ordering::Relaxed) {
            return;
        }
        if let (Fsync::Every(period), Some(t)) = (policy, last_sync) {
            let since = t.elapsed();
            if since < period {
                glommio::timer::sleep(period - since).await;
            }
        }
        let wants_sync = shard.with_state(|st| st.compact_step()) || policy != Fsync::Never;
        if wants_sync {
            let job = shard
                .state
                .borrow_mut()
                .durable
                .as_mut()
                .and_then(|d| d.journal.sync_job());
            if let Some(job) = job {
                let t = std::time::Instant::now();
                last_sync = Some(t);
                let r = glommio::executor().spawn_blocking(move || job.run()).await;
                shard.with_state(|st| st.on_synced(r, t.elapsed()));
            }
        }
        // The next segment is made ready once the active one is half full: early enough that
        // appends never create one inline, late enough that an idle broker holds one segment.
        let prepare = shard
            .state
            .borrow_mut()
            .durable
            .as_mut()
            .filter(|d| d.journal.active_used() * 2 >= cfg_segment_bytes)
            .and_then(|d| d.journal.prepare_job());
        if let Some(job) = prepare {
            let r = glommio::executor().spawn_blocking(move || job.run()).await;
            let mut st = shard.state.borrow_mut();
            if let Some(d) = st.durable.as_mut() {
                match r {
                    Ok(seg) => d.journal.install_prepared(seg),
                    Err(e) => {
                        d.journal.prepare_failed();
                        tracing::warn!(error = %e, "cannot prepare the next journal segment");
                    }
                }
            }
        }
    }
}

/// Publishes `$SYS/broker/...` every `interval`, from a merged scrape of all shards.
async fn sys_loop(interval: Duration) {
    let mut stats = ringmq_core::sys::SysStats::default();
    loop {
        glommio::timer::sleep(interval).await;
        if SHUTDOWN.load(Ordering::Relaxed) {
            return;
        }
        let Some(all) = collect().await else { continue };
        let uptime = STARTED.get().map_or(0, |t| t.elapsed().as_secs());
        let topics = stats.topics(&all, uptime, std::time::Instant::now());
        current().with_state(|st| st.publish_sys(topics));
    }
}

/// Collects every shard's metrics and renders them; `None` if a shard did not answer in time.
async fn scrape() -> Option<String> {
    let all = collect().await?;
    Some(ringmq_core::metrics::render(&all, process_stats()))
}

/// Every shard's metrics (this one's directly, the others' over the mesh), by shard; `None` if
/// a shard did not answer within [`SCRAPE_TIMEOUT`].
async fn collect() -> Option<Vec<ringmq_core::metrics::ShardMetrics>> {
    let shard = current();
    let (tx, rx) = glommio::channels::local_channel::new_unbounded();
    // No await inside the borrow.
    let (token, own, nshards) = shard.with_state(|st| {
        let (token, own) = st.start_scrape();
        (token, own, st.nshards)
    });
    shard.metrics_pending.borrow_mut().insert(token, tx);
    let mut all = vec![own];
    let deadline = std::time::Instant::now() + SCRAPE_TIMEOUT;
    while all.len() < nshards {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            break;
        }
        match glommio::timer::timeout(left, async { Ok(rx.recv().await) }).await {
            Ok(Some(m)) => all.push(*m),
            _ => break,
        }
    }
    shard.metrics_pending.borrow_mut().remove(&token);
    if all.len() < nshards {
        tracing::warn!(answered = all.len(), nshards, "metrics scrape timed out");
        return None;
    }
    all.sort_by_key(|m| m.shard);
    Some(all)
}
