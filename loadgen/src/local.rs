//! The in-process run: executor threads over this process's share of the devices, and the
//! samples (CPU, RSS, time) taken at each phase.

use crate::*;

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub(crate) struct Status {
    pub(crate) ready: bool,
    pub(crate) up: u64,
    pub(crate) subs_up: u64,
    pub(crate) sent: u64,
    pub(crate) recv: u64,
    pub(crate) unique: u64,
    pub(crate) errors: u64,
    pub(crate) inflight: u64,
}

impl Status {
    pub(crate) fn add(&mut self, o: &Status) {
        self.up += o.up;
        self.subs_up += o.subs_up;
        self.sent += o.sent;
        self.recv += o.recv;
        self.unique += o.unique;
        self.errors += o.errors;
        self.inflight += o.inflight;
    }
}

/// What one process reports at the end.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub(crate) struct ProcResult {
    pub(crate) counters: Counters,
    pub(crate) latency_b64: String,
    #[serde(default)]
    pub(crate) puback_b64: String,
    pub(crate) connack_b64: String,
    pub(crate) queued_b64: String,
    pub(crate) reconnack_b64: String,
    pub(crate) cpu_ticks_base: u64,
    pub(crate) cpu_ticks_go: u64,
    pub(crate) cpu_ticks_end: u64,
    pub(crate) t_base: u64,
    pub(crate) t_go: u64,
    pub(crate) t_end: u64,
    pub(crate) rss_kb_base: u64,
    pub(crate) rss_kb_go: u64,
    pub(crate) rss_kb_end: u64,
    pub(crate) first_error: Option<String>,
}

pub(crate) struct LocalRun {
    pub(crate) shared: Arc<Shared>,
    pub(crate) threads: Vec<JoinHandle<ExecResult>>,
    pub(crate) samples: ProcResult,
}

pub(crate) fn parse_cpus(s: &str) -> Result<Vec<usize>, String> {
    s.split(',')
        .filter(|x| !x.trim().is_empty())
        .map(|x| {
            x.trim()
                .parse::<usize>()
                .map_err(|e| format!("--cpus {s:?}: {e}"))
        })
        .collect()
}

pub(crate) fn parse_ip_range(s: &str) -> Result<(u32, u32), String> {
    let (a, b) = s.split_once('-').unwrap_or((s, s));
    let a: Ipv4Addr = a
        .trim()
        .parse()
        .map_err(|e| format!("--source-ips {s:?}: {e}"))?;
    let b: Ipv4Addr = b
        .trim()
        .parse()
        .map_err(|e| format!("--source-ips {s:?}: {e}"))?;
    let (a, b) = (u32::from(a), u32::from(b));
    if b < a {
        return Err(format!("--source-ips {s:?}: end before start"));
    }
    Ok((a, b - a + 1))
}

pub(crate) fn resolve(host: &str, port: u16) -> Result<SocketAddrV4, String> {
    (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("resolve {host}: {e}"))?
        .find_map(|a| match a {
            std::net::SocketAddr::V4(v4) => Some(v4),
            _ => None,
        })
        .ok_or_else(|| format!("{host}: no IPv4 address"))
}

/// The devices' TLS settings (`--tls`): the broker verified against `--tls-ca`, an optional
/// client certificate, session resumption unless `--tls-resume false`.
#[allow(clippy::type_complexity)]
fn tls_config(
    g: &Global,
) -> Result<
    Option<(
        Arc<rustls::ClientConfig>,
        rustls::pki_types::ServerName<'static>,
    )>,
    String,
> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    if !g.tls {
        return Ok(None);
    }
    let ca = g.tls_ca.as_deref().ok_or("--tls needs --tls-ca FILE")?;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).map_err(|e| format!("{ca}: {e}"))? {
        roots
            .add(c.map_err(|e| format!("{ca}: {e}"))?)
            .map_err(|e| format!("{ca}: {e}"))?;
    }
    // ring, with key exchange X25519 first as OpenSSL's clients do (ring's own default puts
    // P-384 first, which it computes slowly).
    use rustls::crypto::ring::kx_group;
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::CryptoProvider {
        kx_groups: vec![kx_group::X25519, kx_group::SECP256R1, kx_group::SECP384R1],
        ..rustls::crypto::ring::default_provider()
    });
    let b = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let mut cfg = match (&g.tls_cert, &g.tls_key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .map_err(|e| format!("{cert}: {e}"))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("{cert}: {e}"))?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{key}: {e}"))?;
            b.with_client_auth_cert(chain, key)
                .map_err(|e| format!("{cert}: {e}"))?
        }
        _ => b.with_no_client_auth(),
    };
    // WebSocket over TLS offers what browsers do.
    cfg.alpn_protocols = if g.ws {
        vec![b"http/1.1".to_vec()]
    } else {
        vec![b"mqtt".to_vec()]
    };
    if !g.tls_resume {
        cfg.resumption = rustls::client::Resumption::disabled();
    } else {
        // Each device gets a store of its own (`Exec::device_tls`): a shared one keeps only a
        // few tickets per server name, so most of a fleet's reconnects would be full.
        cfg.resumption = rustls::client::Resumption::in_memory_sessions(2);
    }
    let name = ServerName::try_from(g.tls_server_name.clone())
        .map_err(|e| format!("--tls-server-name: {e}"))?;
    Ok(Some((Arc::new(cfg), name)))
}

impl LocalRun {
    pub(crate) fn start(cli: &Cli, t0: u64, tag: &str) -> Result<LocalRun, String> {
        let g = &cli.g;
        let procs = g.worker_count.max(1) as u64;
        let pidx = g.worker_index.unwrap_or(0) as u64;
        let threads = g.threads.max(1);
        let cpus = match &g.cpus {
            Some(s) => parse_cpus(s)?,
            None => Vec::new(),
        };
        let (rate, window) = cli.scenario.rate_window();
        let duration = match &cli.scenario {
            Scenario::Idle(i) => i.hold.unwrap_or(g.duration),
            Scenario::ConnectStorm(_) => 0.0,
            _ => g.duration,
        };
        let version = g.version();
        let cfg = Arc::new(RunCfg {
            addr: resolve(&g.host, g.port)?,
            source_ips: g.source_ips.as_deref().map(parse_ip_range).transpose()?,
            version,
            qos: QoS::from_u8(cli.scenario.qos(g)).unwrap_or_default(),
            payload: g.payload,
            keep_alive: g.keep_alive,
            connect_rate: g.connect_rate / (threads as f64 * procs as f64),
            ramp_start_ns: t0,
            ramp_deadline_ns: t0 + (g.ramp_up * 1e9) as u64,
            duration_ns: (duration * 1e9) as u64,
            rate,
            window,
            end_to_end: cli.scenario.end_to_end(),
            client_prefix: format!("lg{tag}-"),
            total_pubs: cli.scenario.publishers(),
            churn: cli.scenario.churn(),
            persistent_subs: g.persistent_subscribers,
            session_expiry: g.session_expiry,
            targets: match &cli.scenario {
                Scenario::FanIn(f) => f.target_topics.map(|n| (f.target_prefix.clone(), n)),
                _ => None,
            },
            tls: tls_config(g)?,
            username: g.username.clone(),
            password: g.password.clone(),
            warm_up: matches!(&cli.scenario, Scenario::ConnectStorm(s) if s.warm_up),
            tls_resume: g.tls_resume,
            ws: g.ws.then(|| g.ws_path.clone()),
        });
        // Device g goes to process g % P, then executor (g / P) % T.
        let total = cli.scenario.devices();
        let mut per_exec: Vec<Vec<DevSpec>> = vec![Vec::new(); threads];
        let mut gi = pidx;
        while gi < total {
            let e = ((gi / procs) % threads as u64) as usize;
            per_exec[e].push(cli.scenario.spec(gi as u32));
            gi += procs;
        }
        let mine: u64 = per_exec.iter().map(|v| v.len() as u64).sum();
        let limit = sys::raise_nofile();
        if mine + 100 > limit {
            return Err(format!(
                "this process would hold {mine} connections but may open only {limit} files \
                 (hard limit); use --processes {} (or more) to split the devices over processes",
                mine.div_ceil(limit.saturating_sub(100).max(1))
                    .max(procs + 1)
            ));
        }
        if cli.scenario.end_to_end() && procs > 1 {
            return Err(
                "--end-to-end needs every publisher and subscriber in one process \
                        (--processes 1)"
                    .into(),
            );
        }
        let seen = if cli.scenario.end_to_end() {
            cli.scenario.publishers() as usize
        } else {
            0
        };
        let shared = Arc::new(Shared::new(threads, seen));
        let mut handles = Vec::new();
        for (e, specs) in per_exec.into_iter().enumerate() {
            let cfg = cfg.clone();
            let sh = shared.clone();
            let cpu = if cpus.is_empty() {
                None
            } else {
                // Workers continue the round-robin where the previous process stopped.
                Some(cpus[(pidx as usize * threads + e) % cpus.len()])
            };
            let h = std::thread::Builder::new()
                .name(format!("lg-exec-{e}"))
                .spawn(move || {
                    if let Some(c) = cpu {
                        if let Err(err) = sys::pin_to_cpu(c) {
                            eprintln!("warning: cannot pin executor {e} to cpu {c}: {err}");
                        }
                    }
                    Exec::new(cfg, e, sh, specs).run()
                })
                .map_err(|e| format!("spawn executor: {e}"))?;
            handles.push(h);
        }
        while shared.inited.load(Relaxed) < threads {
            std::thread::sleep(Duration::from_micros(200));
        }
        let samples = ProcResult {
            cpu_ticks_base: sys::proc_cpu_ticks(None).unwrap_or(0),
            t_base: now_ns(),
            rss_kb_base: sys::proc_rss_kb(None).unwrap_or(0),
            ..Default::default()
        };
        shared.start.store(true, Relaxed);
        Ok(LocalRun {
            shared,
            threads: handles,
            samples,
        })
    }

    pub(crate) fn status(&self) -> Status {
        let mut s = Status {
            ready: self.shared.ready.load(Relaxed) == self.threads.len(),
            ..Default::default()
        };
        for l in &self.shared.live {
            s.add(&Status {
                ready: false,
                up: l.up.load(Relaxed),
                subs_up: l.subs_up.load(Relaxed),
                sent: l.sent.load(Relaxed),
                recv: l.recv.load(Relaxed),
                unique: l.unique.load(Relaxed),
                errors: l.errors.load(Relaxed),
                inflight: l.inflight.load(Relaxed),
            });
        }
        s
    }

    pub(crate) fn first_error(&self) -> Option<String> {
        self.shared.first_error.lock().unwrap().clone()
    }

    pub(crate) fn go(&mut self, t: u64) {
        self.samples.cpu_ticks_go = sys::proc_cpu_ticks(None).unwrap_or(0);
        self.samples.rss_kb_go = sys::proc_rss_kb(None).unwrap_or(0);
        self.samples.t_go = now_ns();
        self.shared.go_ns.store(t, Relaxed);
    }

    pub(crate) fn window_end(&mut self) {
        self.samples.cpu_ticks_end = sys::proc_cpu_ticks(None).unwrap_or(0);
        self.samples.rss_kb_end = sys::proc_rss_kb(None).unwrap_or(0);
        self.samples.t_end = now_ns();
    }

    pub(crate) fn end(&self) {
        self.shared.end.store(true, Relaxed);
    }

    pub(crate) fn collect(self) -> ProcResult {
        let mut c = Counters::default();
        let mut lat = new_hist();
        let mut pa = new_hist();
        let mut ca = new_hist();
        let mut q = new_hist();
        let mut rca = new_hist();
        for h in self.threads {
            match h.join() {
                Ok(r) => {
                    c.merge(&r.counters);
                    merge_into(&mut lat, &r.latency);
                    merge_into(&mut pa, &r.puback);
                    merge_into(&mut ca, &r.connack);
                    merge_into(&mut q, &r.queued);
                    merge_into(&mut rca, &r.reconnack);
                }
                Err(_) => eprintln!("error: an executor thread panicked"),
            }
        }
        let first_error = self.shared.first_error.lock().unwrap().clone();
        ProcResult {
            counters: c,
            latency_b64: hist_to_b64(&lat),
            puback_b64: hist_to_b64(&pa),
            connack_b64: hist_to_b64(&ca),
            queued_b64: hist_to_b64(&q),
            reconnack_b64: hist_to_b64(&rca),
            first_error,
            ..self.samples
        }
    }
}
