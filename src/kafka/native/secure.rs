//! TLS and SASL for the native client's broker connections
//! (`[output.kafka.security]`).
//!
//! TLS is rustls (aws-lc-rs provider, TLS 1.2 and 1.3, post-quantum key exchange first): the broker's certificate
//! must chain to `ca_file` (or the system's trust store) and name the host
//! klais connects to (or `server_name`); a client certificate is offered
//! when configured. The record layer runs on the output core inside the
//! io_uring connection (`uring.rs`): ciphertext in and out, no other thread.
//!
//! SASL is rsasl's client (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, the server's
//! signature checked at the end of SCRAM), carried in SaslHandshake v1 and
//! SaslAuthenticate requests after ApiVersions; a connection is up only once
//! the broker accepted the exchange.

use std::path::Path;
use std::sync::Arc;

use rsasl::prelude::{Mechname, SASLClient, SASLConfig, Session, State};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::config::Security as SecurityConfig;

/// A configuration problem found at start, naming the key.
#[derive(Debug, thiserror::Error)]
#[error("output.kafka.security.{key}: {why}")]
pub struct SecurityError {
    /// The key (under `output.kafka.security`).
    pub key: &'static str,
    /// What is wrong and how to fix it.
    pub why: String,
}

fn err(key: &'static str, why: String) -> SecurityError {
    SecurityError { key, why }
}

/// SASL credentials.
#[derive(Clone)]
pub struct Sasl {
    /// Mechanism name as the broker knows it.
    pub mechanism: String,
    /// User name.
    pub user: String,
    password: String,
}

impl std::fmt::Debug for Sasl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sasl")
            .field("mechanism", &self.mechanism)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// What the connections need: a TLS client configuration and SASL
/// credentials, each where configured.
#[derive(Debug, Clone, Default)]
pub struct Security {
    tls: Option<Arc<rustls::ClientConfig>>,
    server_name: Option<String>,
    /// SASL credentials.
    pub sasl: Option<Sasl>,
}

impl Security {
    /// Reads the files the configuration names; every error names its key.
    pub fn load(cfg: &SecurityConfig) -> Result<Security, SecurityError> {
        let mut out = Security {
            server_name: cfg.server_name.clone(),
            ..Security::default()
        };
        if cfg.tls() {
            out.tls = Some(Arc::new(tls_config(cfg)?));
        }
        if cfg.oauth() {
            // librdkafka's (the configuration check refuses it natively):
            // the secret file checked as the password's would be.
            read_secret(
                "oauth_client_secret_file",
                cfg.oauth_client_secret_file.as_deref(),
            )?;
        } else if cfg.sasl() {
            let password = read_password(cfg)?;
            out.sasl = Some(Sasl {
                mechanism: cfg.sasl_mechanism.clone(),
                user: cfg.sasl_username.clone(),
                password,
            });
        }
        Ok(out)
    }

    /// True when connections use TLS.
    pub fn tls(&self) -> bool {
        self.tls.is_some()
    }

    /// A TLS client for a connection to `host` (None without TLS).
    pub fn tls_client(&self, host: &str) -> Result<Option<rustls::ClientConnection>, String> {
        let Some(cfg) = &self.tls else {
            return Ok(None);
        };
        let name = self.server_name.as_deref().unwrap_or(host);
        let name = ServerName::try_from(name.to_string()).map_err(|e| {
            format!(
                "{name:?} is not a TLS server name ({e}); set output.kafka.security.server_name"
            )
        })?;
        let mut c = rustls::ClientConnection::new(cfg.clone(), name)
            .map_err(|e| format!("TLS client: {e}"))?;
        // Whole produce requests go in at once; the ring sends what rustls
        // made of them.
        c.set_buffer_limit(None);
        Ok(Some(c))
    }
}

fn tls_config(cfg: &SecurityConfig) -> Result<rustls::ClientConfig, SecurityError> {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(path) = &cfg.ca_file {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .and_then(Iterator::collect)
            .map_err(|e| err("ca_file", format!("cannot read {}: {e}", path.display())))?;
        if certs.is_empty() {
            return Err(err(
                "ca_file",
                format!("{} holds no PEM certificate", path.display()),
            ));
        }
        for c in certs {
            roots.add(c).map_err(|e| {
                err(
                    "ca_file",
                    format!("a certificate in {} is not usable: {e}", path.display()),
                )
            })?;
        }
    } else {
        let found = rustls_native_certs::load_native_certs();
        let (n, _) = roots.add_parsable_certificates(found.certs);
        if n == 0 {
            return Err(err(
                "ca_file",
                "not set and the system trust store has no certificate (install ca-certificates, or name the broker's CA)".into(),
            ));
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| err("protocol", format!("TLS: {e}")))?
        .with_root_certificates(roots);
    match (&cfg.cert_file, &cfg.key_file) {
        (Some(cert), Some(key)) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                .and_then(Iterator::collect)
                .map_err(|e| err("cert_file", format!("cannot read {}: {e}", cert.display())))?;
            if chain.is_empty() {
                return Err(err(
                    "cert_file",
                    format!("{} holds no PEM certificate", cert.display()),
                ));
            }
            check_private("key_file", key)?;
            let k = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                err(
                    "key_file",
                    format!("cannot read a PEM private key from {}: {e}", key.display()),
                )
            })?;
            builder
                .with_client_auth_cert(chain, k)
                .map_err(|e| err("key_file", format!("does not fit cert_file: {e}")))
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

/// A secret file: readable by its owner only (like the admin token and the
/// device keys), or the error names the key, the mode and the fix.
pub fn check_private(key: &'static str, path: &Path) -> Result<(), SecurityError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path)
        .map_err(|e| err(key, format!("cannot read {}: {e}", path.display())))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(err(
            key,
            format!(
                "{} is readable by group or others (mode {mode:o}); fix: chmod 600 {}",
                path.display(),
                path.display()
            ),
        ));
    }
    Ok(())
}

/// The SASL password: the first line of `sasl_password_file`, which must be
/// private. Never logged.
pub fn read_password(cfg: &SecurityConfig) -> Result<String, SecurityError> {
    read_secret("sasl_password_file", cfg.sasl_password_file.as_deref())
}

/// A secret: the first line of the private file `key` names. Never logged.
pub fn read_secret(key: &'static str, path: Option<&Path>) -> Result<String, SecurityError> {
    let Some(path) = path else {
        return Err(err(key, "not set (the mechanism needs it)".into()));
    };
    check_private(key, path)?;
    let text = std::fs::read_to_string(path)
        .map_err(|e| err(key, format!("cannot read {}: {e}", path.display())))?;
    let secret = text.lines().next().unwrap_or("").to_string();
    if secret.is_empty() {
        return Err(err(
            key,
            format!("{} is empty (its first line is the secret)", path.display()),
        ));
    }
    Ok(secret)
}

/// Why the broker at `addr` ("host:port") fails TLS verification, as rustls
/// says it (expired, unknown issuer, wrong name...): librdkafka's OpenSSL
/// only says "certificate verify failed". One handshake, 3 s at most; None
/// when it succeeds or the broker cannot be reached.
pub fn diagnose_tls(cfg: &SecurityConfig, addr: &str) -> Option<String> {
    use std::io::Write as _;
    use std::net::ToSocketAddrs as _;
    let sec = Security::load(cfg).ok()?;
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let mut conn = sec.tls_client(host).ok()??;
    let to = addr.to_socket_addrs().ok()?.next()?;
    let mut tcp =
        std::net::TcpStream::connect_timeout(&to, std::time::Duration::from_secs(3)).ok()?;
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(3)))
        .ok()?;
    tcp.set_write_timeout(Some(std::time::Duration::from_secs(3)))
        .ok()?;
    let r = conn.complete_io(&mut tcp);
    let _ = tcp.flush();
    match r {
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => Some(e.to_string()),
        _ => None,
    }
}

/// A broker's refusal of klais's credentials or certificate at start, from
/// either client's reason text, as an error that names the key and the fix.
/// `sasl`: the SASL exchange failed (mechanism and user), else TLS did.
pub fn refusal(reason: &str, sasl: Option<(&str, &str)>) -> SecurityError {
    if let Some(("OAUTHBEARER", client)) = sasl {
        return err(
            "oauth_client_secret_file",
            format!(
                "the token endpoint or the broker refused OAUTHBEARER for client {client:?} ({reason}); fix: check oauth_token_endpoint, oauth_client_id, the secret in oauth_client_secret_file, and that the broker accepts the endpoint's tokens"
            ),
        );
    }
    if let Some((mech, user)) = sasl {
        return err(
            "sasl_password_file",
            format!(
                "the broker refused SASL {mech} for user {user:?} ({reason}); fix: check sasl_username, the password in sasl_password_file, and that the broker enables {mech}"
            ),
        );
    }
    let r = reason.to_ascii_lowercase();
    if r.contains("expired") {
        err(
            "ca_file",
            format!("the broker's TLS certificate has expired ({reason}); fix: renew the broker's certificate (klais accepts no expired certificate)"),
        )
    } else if r.contains("notvalidforname") || r.contains("hostname mismatch") {
        err(
            "server_name",
            format!("the broker's TLS certificate does not name the host klais connects to ({reason}); fix: connect by a name the certificate carries (native client: or set server_name)"),
        )
    } else if r.contains("verify failed")
        || r.contains("unknownissuer")
        || r.contains("invalid peer certificate")
    {
        err(
            "ca_file",
            format!("the broker's TLS certificate is not trusted ({reason}); fix: set ca_file to the CA that signed the broker's certificate"),
        )
    } else if r.contains("alert") || r.contains("certificate required") {
        err(
            "cert_file",
            format!("the broker refused the TLS handshake ({reason}); fix: set cert_file and key_file to a valid client certificate signed by a CA the broker trusts"),
        )
    } else {
        err(
            "protocol",
            format!("TLS with the broker failed ({reason}); fix: check that the broker's listener speaks TLS, as protocol says"),
        )
    }
}

/// One SASL exchange on one connection.
pub struct Exchange {
    session: Session,
    finished: bool,
}

impl std::fmt::Debug for Exchange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exchange")
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

impl Exchange {
    /// Starts `creds`'s mechanism; returns the exchange and the client's
    /// first message.
    pub fn start(creds: &Sasl) -> Result<(Exchange, Vec<u8>), String> {
        let config: Arc<SASLConfig> =
            SASLConfig::with_credentials(None, creds.user.clone(), creds.password.clone())
                .map_err(|e| format!("SASL: {e}"))?;
        let mech = Mechname::parse(creds.mechanism.as_bytes())
            .map_err(|e| format!("SASL mechanism {:?}: {e}", creds.mechanism))?;
        let session = SASLClient::new(config)
            .start_suggested(&[mech])
            .map_err(|e| format!("SASL {}: {e}", creds.mechanism))?;
        let mut x = Exchange {
            session,
            finished: false,
        };
        let first = x
            .step(None)?
            .ok_or_else(|| "SASL: the mechanism has nothing to send first".to_string())?;
        Ok((x, first))
    }

    /// Feeds the server's message; returns the next message to send, or None
    /// when the exchange is complete (the server's last message checked).
    pub fn step(&mut self, input: Option<&[u8]>) -> Result<Option<Vec<u8>>, String> {
        if self.finished {
            return Ok(None);
        }
        let mut out = Vec::new();
        let state = self
            .session
            .step(input, &mut out)
            .map_err(|e| format!("SASL: {e}"))?;
        self.finished = state.is_finished();
        Ok(match state {
            State::Running => Some(out),
            State::Finished(_) if state.has_sent_message() => Some(out),
            State::Finished(_) => None,
        })
    }

    /// The exchange has nothing more to read.
    pub fn finished(&self) -> bool {
        self.finished
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn creds(mechanism: &str) -> Sasl {
        Sasl {
            mechanism: mechanism.into(),
            user: "alice".into(),
            password: "pencil".into(),
        }
    }

    #[test]
    fn plain_sends_authzid_user_password_and_is_done() {
        let (mut x, first) = Exchange::start(&creds("PLAIN")).unwrap();
        assert_eq!(first, b"\0alice\0pencil");
        assert!(x.finished());
        assert_eq!(x.step(Some(b"")).unwrap(), None);
    }

    #[test]
    fn scram_starts_with_gs2_header_and_user() {
        for m in ["SCRAM-SHA-256", "SCRAM-SHA-512"] {
            let (x, first) = Exchange::start(&creds(m)).unwrap();
            let text = String::from_utf8(first).unwrap();
            assert!(text.starts_with("n,,n=alice,r="), "{m}: {text}");
            assert!(!x.finished());
        }
    }

    #[test]
    fn scram_refuses_a_server_nonce_that_does_not_extend_ours() {
        let (mut x, _) = Exchange::start(&creds("SCRAM-SHA-256")).unwrap();
        let bad = b"r=somebody-else,s=QSXCR+Q6sek8bf92,i=4096";
        assert!(x.step(Some(bad)).is_err());
    }

    #[test]
    fn missing_ca_file_names_the_key() {
        let cfg = SecurityConfig {
            protocol: "ssl".into(),
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..SecurityConfig::default()
        };
        let e = Security::load(&cfg).unwrap_err();
        assert_eq!(e.key, "ca_file");
        assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
    }

    /// SCRAM as alice with a password file holding `text` at `mode`.
    fn with_password_file(dir: &Path, text: &str, mode: u32) -> SecurityConfig {
        let p = dir.join("pw");
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        SecurityConfig {
            protocol: "sasl_plaintext".into(),
            sasl_username: "alice".into(),
            sasl_password_file: Some(p),
            ..SecurityConfig::default()
        }
    }

    #[test]
    fn empty_password_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = with_password_file(dir.path(), "\n", 0o600);
        let e = Security::load(&cfg).unwrap_err();
        assert_eq!(e.key, "sasl_password_file");
        assert!(e.to_string().contains("empty"), "{e}");
    }

    #[test]
    fn a_password_file_others_can_read_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = with_password_file(dir.path(), "pencil\n", 0o640);
        let p = cfg.sasl_password_file.clone().unwrap();
        let e = Security::load(&cfg).unwrap_err();
        assert_eq!(e.key, "sasl_password_file");
        assert!(e.to_string().contains("chmod 600"), "{e}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_password(&cfg).unwrap(), "pencil");
    }
}
