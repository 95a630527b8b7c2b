//! The TLS settings of each TLS listener, built from its files (its `[[listener]]` table's, or
//! the global `--tls-*` ones): rustls' server configuration with its certificates (one, or
//! several chosen by SNI), the client verifier of mutual TLS, and the reload on SIGHUP.

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// One TLS listener's settings.
#[derive(Clone)]
pub struct TlsContext {
    pub config: Arc<ServerConfig>,
    /// The client certificate's identity replaces the CONNECT's username.
    pub use_identity_as_username: bool,
}

impl std::fmt::Debug for TlsContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsContext").finish_non_exhaustive()
    }
}

/// The settings of every listener, by its index in `Config::all_listeners`: `None` for the
/// plain ones.
#[derive(Clone, Debug, Default)]
pub struct Contexts(pub Vec<Option<TlsContext>>);

impl Contexts {
    pub fn any(&self) -> bool {
        self.0.iter().any(Option::is_some)
    }

    pub fn get(&self, listener: usize) -> Option<&TlsContext> {
        self.0.get(listener)?.as_ref()
    }
}

/// rustls with `ring`: it builds with a C compiler alone, and its suites are the modern ones
/// (AES-GCM, ChaCha20-Poly1305, ECDHE only). Key exchange prefers X25519, then P-256: the
/// provider's own default puts P-384 first, which ring computes without assembly (a full
/// handshake cost 0.6 ms of broker CPU with it). Suites prefer AES-128-GCM with SHA-256 (the
/// server's order wins, see `context`): SHA-384's transcript and key schedule ran without
/// hardware help and took 8.6% of the CPU of a connect storm, SHA-256 has it. ring has no
/// post-quantum key exchange, hence its deprecation.
pub fn provider() -> CryptoProvider {
    use rustls::crypto::ring::{cipher_suite as cs, kx_group};
    #[allow(deprecated)]
    let base = rustls::crypto::ring::default_provider();
    CryptoProvider {
        kx_groups: vec![kx_group::X25519, kx_group::SECP256R1, kx_group::SECP384R1],
        cipher_suites: vec![
            cs::TLS13_AES_128_GCM_SHA256,
            cs::TLS13_AES_256_GCM_SHA384,
            cs::TLS13_CHACHA20_POLY1305_SHA256,
            cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
            cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
            cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
            cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        ],
        ..base
    }
}

/// Builds every TLS listener's settings from its files. Errors name the listener and the file.
pub fn contexts(cfg: &ringmq_core::Config) -> Result<Contexts, String> {
    let all = cfg.all_listeners();
    let mut out = Vec::with_capacity(all.len());
    for l in &all {
        if !l.is_tls() {
            out.push(None);
            continue;
        }
        let ctx =
            context(&cfg.effective(l), l.is_ws()).map_err(|e| format!("listener {l}: {e}"))?;
        out.push(Some(ctx));
    }
    Ok(Contexts(out))
}

/// `ws`: WebSocket over TLS, whose clients (browsers) offer ALPN `http/1.1`.
fn context(eff: &ringmq_core::config::Effective, ws: bool) -> Result<TlsContext, String> {
    let (Some(cert), Some(key)) = (&eff.tls_cert, &eff.tls_key) else {
        return Err("a TLS listener needs tls_cert and tls_key".into());
    };
    let provider = Arc::new(provider());
    let versions = [&rustls::version::TLS13, &rustls::version::TLS12];
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|e| format!("TLS set-up: {e}"))?;
    let builder = match &eff.tls_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in certs(ca)? {
                roots
                    .add(c)
                    .map_err(|e| format!("tls_ca {}: {e}", ca.display()))?;
            }
            let mut v =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
            if let Some(crl) = &eff.tls_crl {
                v = v.with_crls(crls(crl)?).only_check_end_entity_revocation();
            }
            if !eff.require_certificate {
                v = v.allow_unauthenticated();
            }
            let v = v
                .build()
                .map_err(|e| format!("tls_ca {}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(v)
        }
    };
    let mut config = if eff.sni.is_empty() {
        let chain = certs(cert)?;
        let key_der = PrivateKeyDer::from_pem_file(key)
            .map_err(|e| format!("tls_key {}: no usable private key: {e}", key.display()))?;
        builder
            .with_single_cert(chain, key_der)
            .map_err(|e| format!("tls_cert {} with tls_key: {e}", cert.display()))?
    } else {
        let mut by_name = ByName {
            default: certified(cert, key, &provider)?,
            names: HashMap::new(),
        };
        for c in &eff.sni {
            let ck = certified(&c.tls_cert, &c.tls_key, &provider)?;
            let names = names(&ck.cert[0]);
            if names.is_empty() {
                return Err(format!(
                    "sni certificate {}: no DNS name (subject alternative name or CN) to \
                     choose it by",
                    c.tls_cert.display()
                ));
            }
            for n in names {
                by_name.names.insert(n, ck.clone());
            }
        }
        builder.with_cert_resolver(Arc::new(by_name))
    };
    config.alpn_protocols = if ws {
        vec![b"http/1.1".to_vec()]
    } else {
        vec![b"mqtt".to_vec()]
    };
    // The suite order of `provider`, whatever the client prefers.
    config.ignore_client_order = true;
    config.ticketer =
        rustls::crypto::ring::Ticketer::new().map_err(|e| format!("TLS tickets: {e}"))?;
    // One ticket per full handshake: a device resumes one connection at a time.
    config.send_tls13_tickets = 1;
    // A TLS 1.3 session leaves rustls once its handshake is done (`records.rs`).
    config.enable_secret_extraction = true;
    Ok(TlsContext {
        config: Arc::new(config),
        use_identity_as_username: eff.use_identity_as_username,
    })
}

/// A certificate chain and its key, checked to belong together.
fn certified(
    cert: &Path,
    key: &Path,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, String> {
    let chain = certs(cert)?;
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("tls_key {}: no usable private key: {e}", key.display()))?;
    CertifiedKey::from_der(chain, key_der, provider)
        .map(Arc::new)
        .map_err(|e| {
            format!(
                "tls_cert {} with tls_key {}: {e}",
                cert.display(),
                key.display()
            )
        })
}

/// The names a certificate is chosen by: its DNS subject alternative names (`*.example.com`
/// included), else its subject CN; lower case.
fn names(cert: &CertificateDer<'_>) -> Vec<String> {
    let Ok((_, x)) = x509_parser::parse_x509_certificate(cert.as_ref()) else {
        return Vec::new();
    };
    let mut out: Vec<String> = Vec::new();
    if let Ok(Some(san)) = x.subject_alternative_name() {
        for n in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(s) = n {
                out.push(s.to_ascii_lowercase());
            }
        }
    }
    if out.is_empty() {
        let cn = x.subject().iter_common_name().next();
        if let Some(s) = cn.and_then(|c| c.as_str().ok()) {
            out.push(s.to_ascii_lowercase());
        }
    }
    out
}

/// Chooses the certificate by the server name the client asks for (SNI): an exact name, then a
/// wildcard for its parent (`*.example.com` for `a.example.com`, one label only); the
/// listener's own certificate when none matches or the client names none.
#[derive(Debug)]
struct ByName {
    default: Arc<CertifiedKey>,
    names: HashMap<String, Arc<CertifiedKey>>,
}

impl ByName {
    fn choose(&self, name: Option<&str>) -> Arc<CertifiedKey> {
        let Some(name) = name.map(str::to_ascii_lowercase) else {
            return self.default.clone();
        };
        let wildcard = || {
            let (_, parent) = name.split_once('.')?;
            self.names.get(&format!("*.{parent}"))
        };
        self.names
            .get(&name)
            .or_else(wildcard)
            .unwrap_or(&self.default)
            .clone()
    }
}

impl ResolvesServerCert for ByName {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.choose(hello.server_name()))
    }
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    pem_all(path, "certificate")
}

fn crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, String> {
    pem_all(path, "CRL").map_err(|e| format!("tls_crl {e}"))
}

/// Every PEM object of one kind in a file; an error names the file, also when it has none.
fn pem_all<T: PemObject>(path: &Path, what: &str) -> Result<Vec<T>, String> {
    let named = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let all = T::pem_file_iter(path)
        .map_err(|e| named(&e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| named(&e))?;
    if all.is_empty() {
        return Err(format!("{}: no PEM {what} in it", path.display()));
    }
    Ok(all)
}

/// TLS settings reloaded on SIGHUP, for the shards to take at their next tick.
pub struct Reload(crate::published::Published<Contexts>);

impl Reload {
    pub fn new(ctx: Contexts) -> Arc<Reload> {
        Arc::new(Reload(crate::published::Published::new(ctx)))
    }

    /// Loads the files again; on success the shards take the new settings, else the error is
    /// logged and the settings in use stay (for every listener: a reload is all or nothing).
    /// Session tickets issued before stay valid.
    pub fn reload(&self, cfg: &ringmq_core::Config) {
        match contexts(cfg) {
            Ok(mut new) => {
                self.0.update(|current| {
                    for (n, c) in new.0.iter_mut().zip(&current.0) {
                        let (Some(n), Some(c)) = (n.as_mut(), c.as_ref()) else {
                            continue;
                        };
                        if let Some(config) = Arc::get_mut(&mut n.config) {
                            config.ticketer = c.config.ticketer.clone();
                        }
                    }
                    *current = new;
                });
                tracing::info!("SIGHUP: TLS certificate, key, CA and CRL files reloaded");
            }
            Err(e) => tracing::error!(
                error = %e,
                "SIGHUP: TLS files not reloaded, the settings in use stay"
            ),
        }
    }

    pub fn generation(&self) -> u64 {
        self.0.generation()
    }

    pub fn current(&self) -> Contexts {
        self.0.current()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(names: &[&str]) -> Arc<CertifiedKey> {
        let ck = rcgen::generate_simple_self_signed(
            names.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
        )
        .unwrap();
        let der = PrivateKeyDer::try_from(ck.key_pair.serialize_der()).unwrap();
        Arc::new(CertifiedKey::from_der(vec![ck.cert.der().clone()], der, &provider()).unwrap())
    }

    #[test]
    fn sni_picks_the_exact_name_then_a_wildcard_then_the_default() {
        let (default, exact, wild) = (
            key(&["broker.example"]),
            key(&["a.example"]),
            key(&["*.fleet.example"]),
        );
        let mut names = HashMap::new();
        for ck in [&exact, &wild] {
            for n in super::names(&ck.cert[0]) {
                names.insert(n, ck.clone());
            }
        }
        let by = ByName {
            default: default.clone(),
            names,
        };
        assert!(Arc::ptr_eq(&by.choose(Some("A.Example")), &exact));
        assert!(Arc::ptr_eq(&by.choose(Some("s1.fleet.example")), &wild));
        // A wildcard covers one label only.
        assert!(Arc::ptr_eq(
            &by.choose(Some("x.s1.fleet.example")),
            &default
        ));
        assert!(Arc::ptr_eq(&by.choose(Some("other.example")), &default));
        assert!(Arc::ptr_eq(&by.choose(None), &default));
    }
}
