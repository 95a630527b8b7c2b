//! Passwords: a CONNECT with a username is checked against the password file before it goes
//! on. It is checked on the shard that read the CONNECT, before the hand-off, so that a failed
//! login never reaches (or takes over) a session. The hash is verified by the driver off the
//! shard thread ([`CredentialCheck`]); the connection is not read meanwhile.

use super::*;

/// What a CONNECT's credentials decide before it goes on.
pub(super) enum Login {
    Pass,
    Refuse(ReasonCode),
    /// The password must be verified ([`CredentialCheck`]).
    Check,
}

impl ShardState {
    /// Whether a CONNECT may go on as it is, must have its password checked, or is refused
    /// for not authenticating (on connection `key`'s listener).
    pub(super) fn login(&self, key: usize, c: &Connect, identified: bool) -> Login {
        // A certificate identity is authenticated by the TLS handshake; an authentication
        // method by its exchange, on the home shard.
        let method = c.protocol.is_v5() && c.properties.authentication_method.is_some();
        if identified || method {
            return Login::Pass;
        }
        if c.username.is_some() && self.cfg.password_file.is_some() {
            return Login::Check;
        }
        if self.cfg.anonymous_allowed(self.conns[key].listener.into()) {
            Login::Pass
        } else {
            Login::Refuse(ReasonCode::NOT_AUTHORIZED)
        }
    }

    /// Parks the CONNECT and asks the driver to verify its password; the connection is not
    /// read until the answer ([`ShardState::credentials_checked`]).
    pub(super) fn check_password(
        &mut self,
        key: usize,
        c: Box<Connect>,
        assigned: Option<ByteStr>,
    ) {
        self.login_tokens += 1;
        let token = self.login_tokens;
        self.counters.password_checks += 1;
        self.fx.credential_checks.push(CredentialCheck {
            key,
            token,
            username: c.username.as_deref().unwrap_or_default().to_owned(),
            password: c.password.as_ref().map(|p| p.to_vec()),
        });
        let asked_ms = self.now_ms();
        let conn = &mut self.conns[key];
        conn.extra.get_or_insert_with(Box::default).login = Some(Box::new(PendingLogin {
            token,
            connect: c,
            assigned,
            asked_ms,
            refuse_at: None,
        }));
        conn.set_reads_paused(true);
        self.fx.reads.push((key, false));
    }

    /// The driver's answer to a [`CredentialCheck`]: the CONNECT goes on, or is refused with
    /// 0x86 (3.1.x: return code 4) at [`LOGIN_FAILURE_DELAY_MS`] after the check was asked.
    pub fn credentials_checked(&mut self, key: usize, token: u64, ok: bool) {
        let now = self.now_ms();
        let Some(conn) = self.conns.get_mut(key).filter(|c| c.close.is_none()) else {
            return;
        };
        let Some(x) = conn.extra.as_mut() else {
            return;
        };
        let Some(login) = x
            .login
            .as_mut()
            .filter(|l| l.token == token && l.refuse_at.is_none())
        else {
            return;
        };
        if !ok {
            self.counters.password_failures += 1;
            let due = (login.asked_ms + LOGIN_FAILURE_DELAY_MS).max(now);
            login.refuse_at = Some(due);
            tracing::debug!(shard = self.id, conn = key, "password refused");
            self.watch_login(key, due);
            return;
        }
        let login = x.login.take().expect("checked above");
        conn.set_reads_paused(false);
        self.fx.reads.push((key, true));
        self.route_connect(key, login.connect, login.assigned, true);
    }

    /// A refused login whose delay is over gets its CONNACK (`timers.rs`).
    pub(super) fn refuse_login(&mut self, key: usize) {
        let now = self.now_ms();
        let Some(x) = self.conns.get_mut(key).and_then(|c| c.extra.as_mut()) else {
            return;
        };
        if x.login
            .as_ref()
            .is_some_and(|l| l.refuse_at.is_some_and(|t| t <= now))
        {
            x.login = None;
            self.reject(key, ReasonCode::BAD_USER_NAME_OR_PASSWORD);
        }
    }
}
