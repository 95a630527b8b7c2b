//! A device's connection from socket to ready: TCP connect, CONNECT/CONNACK, SUBSCRIBE/SUBACK,
//! failure, and the clean DISCONNECT at the end of the run.

use super::*;

impl Exec {
    pub(super) fn connect_more(&mut self, now: u64) {
        let elapsed = now.saturating_sub(self.ramp_start_ns) as f64 / 1e9;
        let allowed = (elapsed * self.cfg.connect_rate) as usize + 1;
        while self.next_connect < self.specs.len()
            && self.next_connect < allowed
            && self.pending_handshakes < MAX_PENDING_HANDSHAKES
        {
            let i = self.next_connect;
            self.next_connect += 1;
            self.start_connect(i, now);
        }
    }

    /// Starts a non-blocking connect for device `i` (from its source address, if any) and
    /// registers the socket with this loop's epoll under the device's index.
    pub(super) fn open_socket(&self, i: usize) -> std::io::Result<i32> {
        let source = self
            .cfg
            .source_ips
            .map(|(start, count)| Ipv4Addr::from(start + self.specs[i].global % count));
        let fd = sys::start_connect(self.cfg.addr, source)?;
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32,
            u64: i as u64,
        };
        // SAFETY: valid fds and event.
        unsafe { libc::epoll_ctl(self.ep, libc::EPOLL_CTL_ADD, fd, &mut ev) };
        Ok(fd)
    }

    pub(super) fn start_connect(&mut self, i: usize, now: u64) {
        if self.c.first_attempt_ns == 0 {
            self.c.first_attempt_ns = now;
        }
        let role = self.specs[i].role;
        let mut dev = Dev {
            fd: -1,
            st: St::Closed,
            role,
            last_tx_s: self.now_s,
            role_idx: u32::MAX,
            t_connect_ns: now,
            rx: Vec::new(),
            tx: Vec::new(),
            tls: None,
            ws: None,
        };
        debug_assert_eq!(self.devs.len(), i);
        if self.cfg.churn.is_some() {
            self.churn.push(ChurnDev {
                online: true,
                ..Default::default()
            });
        }
        match self.open_socket(i) {
            Ok(fd) => {
                dev.fd = fd;
                dev.st = St::TcpConnecting;
                self.devs.push(dev);
                self.pending_handshakes += 1;
            }
            Err(e) => {
                self.devs.push(dev);
                self.settled += 1;
                self.error(format!("connect to {}: {e}", self.cfg.addr));
            }
        }
    }

    pub(super) fn abandon_handshakes(&mut self) {
        for i in 0..self.devs.len() {
            if matches!(
                self.devs[i].st,
                St::TcpConnecting | St::WaitConnAck | St::WaitSubAck
            ) {
                self.fail(
                    i,
                    "ramp-up time limit reached before the device was ready".into(),
                );
            }
        }
        let never = self.specs.len().saturating_sub(self.devs.len());
        if never > 0 {
            self.c.errors += never as u64;
            let msg = format!("{never} devices not even attempted within the ramp-up limit (raise --ramp-up or --connect-rate)");
            self.error(msg);
            self.c.errors -= 1;
        }
    }

    pub(super) fn fail(&mut self, i: usize, msg: String) {
        let d = &mut self.devs[i];
        let prev = d.st;
        if matches!(prev, St::Closed) {
            return;
        }
        if d.fd >= 0 {
            // SAFETY: our fd; closing removes it from the epoll set.
            unsafe { libc::close(d.fd) };
        }
        d.fd = -1;
        d.st = St::Closed;
        d.rx = Vec::new();
        d.tx = Vec::new();
        d.tls = None;
        d.ws = None;
        match prev {
            St::TcpConnecting | St::WaitConnAck | St::WaitSubAck => match self.churn.get_mut(i) {
                Some(c) if c.reconnecting => c.reconnecting = false,
                _ => {
                    self.pending_handshakes -= 1;
                    self.settled += 1;
                }
            },
            St::Ready => {
                self.up -= 1;
                if d.role == Role::Sub {
                    self.subs_up -= 1;
                }
            }
            _ => {}
        }
        if prev != St::Closing {
            self.error(msg);
        }
    }

    pub(super) fn send_connect(&mut self, i: usize, now: u64) {
        let global = self.specs[i].global;
        let persistent = self.cfg.persistent_subs && self.specs[i].role == Role::Sub;
        let props = Properties {
            // Large enough for any window, so the broker does not hold back deliveries.
            receive_maximum: if self.cfg.version.is_v5() {
                Some(65535)
            } else {
                None
            },
            session_expiry_interval: if !self.cfg.version.is_v5() {
                None
            } else if self.cfg.churn.is_some() {
                Some(CHURN_SESSION_EXPIRY)
            } else if persistent {
                Some(self.cfg.session_expiry)
            } else {
                None
            },
            ..Default::default()
        };
        // session-churn keeps sessions: MQTT 5 starts clean once, 3.1.1 never is clean.
        let clean_start = match self.churn.get(i) {
            Some(c) => self.cfg.version.is_v5() && !c.reconnecting,
            // MQTT 5: a fresh session that outlives the connection (Session Expiry > 0).
            None if persistent => self.cfg.version.is_v5(),
            None => true,
        };
        let c = Connect {
            protocol: self.cfg.version,
            clean_start,
            keep_alive: self.cfg.keep_alive,
            client_id: ByteStr::from(format!("{}{}", self.cfg.client_prefix, global)),
            will: None,
            username: self.cfg.username.clone().map(ByteStr::from),
            password: self
                .cfg
                .password
                .as_ref()
                .map(|p| bytes::Bytes::from(p.clone())),
            properties: props,
        };
        let mut b = BytesMut::new();
        encode(&Packet::Connect(Box::new(c)), self.cfg.version, &mut b).expect("encode CONNECT");
        self.devs[i].st = St::WaitConnAck;
        self.devs[i].t_connect_ns = now;
        // TLS: the session holds the CONNECT until its handshake is done; the connect time
        // counts the handshake.
        let cfg = self.cfg.clone();
        if let Some((config, name)) = &cfg.tls {
            let config = self.device_tls(i, config);
            match rustls::ClientConnection::new(config, name.clone()) {
                Ok(c) => self.devs[i].tls = Some(Box::new(c)),
                Err(e) => return self.fail(i, format!("TLS: {e}")),
            }
        }
        // WebSocket: the upgrade request first; the CONNECT waits for its answer.
        if let Some(path) = &cfg.ws {
            self.devs[i].ws = Some(ws::WsClient::new(global as u64 ^ now));
            self.send_wire(i, &ws::request(path, global as u64 ^ now));
        }
        self.send(i, &b);
    }

    pub(super) fn on_connack(&mut self, i: usize, ack: &ringmq_codec::ConnAck, now: u64) {
        if self.devs[i].st != St::WaitConnAck {
            return self.fail(i, "unexpected CONNACK".into());
        }
        if ack.reason.is_error() {
            return self.fail(i, format!("CONNACK refused: {:?}", ack.reason));
        }
        let us = now.saturating_sub(self.devs[i].t_connect_ns) / 1000;
        if let Some(c) = self.churn.get_mut(i) {
            c.t_online_ns = self.devs[i].t_connect_ns;
            if c.reconnecting {
                return self.reconnected(i, ack.session_present, us);
            }
        }
        self.connack.saturating_record(us.max(1));
        let resumed = self.devs[i].tls.as_ref().and_then(|t| t.handshake_kind());
        if resumed == Some(rustls::HandshakeKind::Resumed) {
            self.c.tls_resumed += 1;
        }
        match self.specs[i].role {
            Role::Sub => self.subscribe(i),
            Role::Pub => {
                let recv_max = ack.properties.receive_maximum.unwrap_or(u16::MAX) as u32;
                self.start_publisher(i, recv_max);
                self.ready(i, now);
            }
            Role::Plain => self.ready(i, now),
        }
    }

    /// session-churn: a device back online with its session (it subscribed the first time).
    fn reconnected(&mut self, i: usize, session_present: bool, connack_us: u64) {
        self.churn[i].reconnecting = false;
        self.reconnack.saturating_record(connack_us.max(1));
        if self.phase == Phase::Measure {
            // The drain's final reconnects are not churn.
            self.c.reconnects += 1;
        }
        if !session_present {
            self.c.session_lost += 1;
            self.error("CONNACK of a reconnect without session present".into());
        }
        let d = &mut self.devs[i];
        d.st = St::Ready;
        self.up += 1;
        if d.role == Role::Sub {
            self.subs_up += 1;
        }
    }

    fn subscribe(&mut self, i: usize) {
        let spec = &self.specs[i];
        let s = Subscribe {
            packet_id: NonZeroU16::new(1).unwrap(),
            filters: vec![SubscribeFilter {
                filter: ByteStr::from(spec.topic.as_str()),
                options: SubscriptionOptions {
                    qos: self.cfg.qos,
                    ..Default::default()
                },
            }],
            properties: Properties::default(),
        };
        let mut b = BytesMut::new();
        encode(&Packet::Subscribe(Box::new(s)), self.cfg.version, &mut b)
            .expect("encode SUBSCRIBE");
        self.devs[i].role_idx = self.subs.len() as u32;
        self.subs.push(SubSt {
            track: SeqTracker::new(spec.pub_base, spec.pub_count),
        });
        self.devs[i].st = St::WaitSubAck;
        self.send(i, &b);
    }

    /// Publisher state: its PUBLISH header (and the per-target headers of a run that spreads
    /// messages over topics) and its window, bounded by the broker's Receive Maximum.
    fn start_publisher(&mut self, i: usize, recv_max: u32) {
        let targets = match (&self.cfg.churn, &self.cfg.targets) {
            (Some(ch), _) => Some(("bench/churn/".to_string(), ch.devices)),
            (None, Some((prefix, n))) => Some((prefix.clone(), *n)),
            (None, None) => None,
        };
        if let (Some((prefix, n)), true) = (targets, self.topic_hdrs.is_empty()) {
            self.topic_hdrs = (0..n)
                .map(|d| {
                    publish_header(
                        &format!("{prefix}{d}"),
                        self.cfg.qos,
                        self.cfg.version,
                        self.payload_tpl.len(),
                    )
                })
                .collect();
        }
        let spec = &self.specs[i];
        let (hdr, pid_off) = publish_header(
            &spec.topic,
            self.cfg.qos,
            self.cfg.version,
            self.payload_tpl.len(),
        );
        let max_inflight = if self.cfg.qos == QoS::AtMostOnce {
            u32::MAX
        } else if self.cfg.rate == 0.0 {
            self.cfg.window.max(1).min(recv_max)
        } else {
            recv_max.min(65000)
        };
        self.devs[i].role_idx = self.pubs.len() as u32;
        self.pubs.push(PubSt {
            dev: i as u32,
            id: spec.id,
            seq: 0,
            inflight: 0,
            max_inflight,
            sched: None,
            queued: false,
            hdr,
            pid_off,
            unacked: VecDeque::new(),
            e2e_floor: 0,
            e2e_full_since: 0,
        });
    }

    pub(super) fn ready(&mut self, i: usize, now: u64) {
        let d = &mut self.devs[i];
        d.st = St::Ready;
        self.pending_handshakes -= 1;
        self.settled += 1;
        self.up += 1;
        self.c.connected += 1;
        match d.role {
            Role::Sub => {
                self.subs_up += 1;
                self.c.subs_connected += 1;
            }
            Role::Pub => self.c.pubs_connected += 1,
            Role::Plain => {}
        }
        self.c.last_ready_ns = now;
    }

    /// Device `i`'s TLS settings: the run's, with a ticket store of its own (when the run
    /// resumes sessions at all).
    fn device_tls(
        &mut self,
        i: usize,
        run: &Arc<rustls::ClientConfig>,
    ) -> Arc<rustls::ClientConfig> {
        if !self.cfg.tls_resume {
            return run.clone();
        }
        if self.tls_dev.len() <= i {
            self.tls_dev.resize(i + 1, None);
        }
        self.tls_dev[i]
            .get_or_insert_with(|| {
                let mut own = (**run).clone();
                own.resumption = rustls::client::Resumption::in_memory_sessions(2);
                Arc::new(own)
            })
            .clone()
    }

    /// connect-storm --warm-up: every device connected once; they leave with a clean
    /// DISCONNECT and the measured round starts now, with the counters of the connect phase
    /// cleared (errors stay).
    pub(super) fn warm_up_done(&mut self, now: u64) {
        self.close_all();
        self.warming = false;
        self.devs.clear();
        self.next_connect = 0;
        self.settled = 0;
        self.pending_handshakes = 0;
        self.up = 0;
        self.subs_up = 0;
        self.ramp_start_ns = now_ns().max(now);
        self.c.connected = 0;
        self.c.subs_connected = 0;
        self.c.pubs_connected = 0;
        self.c.tls_resumed = 0;
        self.c.first_attempt_ns = 0;
        self.c.last_ready_ns = 0;
        self.connack.reset();
    }

    pub(super) fn close_all(&mut self) {
        let mut disc = BytesMut::new();
        encode(
            &Packet::Disconnect(Box::default()),
            self.cfg.version,
            &mut disc,
        )
        .expect("encode DISCONNECT");
        let mut open = 0usize;
        for i in 0..self.devs.len() {
            match self.devs[i].st {
                St::Ready => {
                    self.send(i, &disc);
                    let d = &mut self.devs[i];
                    if d.fd >= 0 {
                        if !d.tx.is_empty() {
                            let _ = raw_send(d.fd, &d.tx);
                        }
                        // SAFETY: our fd.
                        unsafe { libc::shutdown(d.fd, libc::SHUT_WR) };
                        d.st = St::Closing;
                        d.tx = Vec::new();
                        self.up -= 1;
                        if d.role == Role::Sub {
                            self.subs_up -= 1;
                        }
                        open += 1;
                    }
                }
                St::Closed | St::Closing => {}
                _ => {
                    let d = &mut self.devs[i];
                    // SAFETY: our fd.
                    unsafe { libc::close(d.fd) };
                    d.fd = -1;
                    d.st = St::Closed;
                }
            }
        }
        // Wait (bounded) for the broker to close each connection, so it sees a clean
        // DISCONNECT rather than a reset.
        let deadline = now_ns() + 1_000_000_000;
        let mut events: Vec<libc::epoll_event> =
            vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
        while open > 0 && now_ns() < deadline {
            // SAFETY: valid buffer.
            let n =
                unsafe { libc::epoll_wait(self.ep, events.as_mut_ptr(), events.len() as i32, 10) };
            for ev in events.iter().take(n.max(0) as usize) {
                let i = ev.u64 as usize;
                if self.devs[i].st == St::Closing {
                    self.on_readable(i);
                    if self.devs[i].st != St::Closing {
                        open -= 1;
                    }
                }
            }
        }
        for d in &mut self.devs {
            if d.fd >= 0 {
                // SAFETY: our fd.
                unsafe { libc::close(d.fd) };
                d.fd = -1;
                d.st = St::Closed;
            }
        }
    }
}
