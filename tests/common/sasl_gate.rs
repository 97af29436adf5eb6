//! The SASL front of the broker tier's secured listener: Kafka's SASL
//! exchange (SaslHandshake v1, SaslAuthenticate v0/v1) served by rsasl's
//! server — the SASL implementation tansu itself uses — in front of tansu;
//! once a client is authenticated its connection is piped to the broker
//! unchanged.
//!
//! Why not tansu's own `--authentication`: tansu 0.6 serves only SCRAM and
//! OAUTHBEARER, and creating a SCRAM user takes an authenticated connection,
//! so on its in-memory storage no user can ever exist.
//!
//! Users are name → password; SCRAM's stored keys are derived per exchange
//! (PBKDF2, 4096 rounds, a fixed salt) exactly as a broker stores them.
//! Before authentication only ApiVersions (forwarded), SaslHandshake and
//! SaslAuthenticate are served; anything else closes the connection, as
//! Kafka does.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rsasl::callback::{Context, Request, SessionCallback, SessionData};
use rsasl::mechanisms::oauthbearer::properties::{OAuthBearerError, OAuthBearerValidate};
use rsasl::mechanisms::scram::properties::ScramStoredPassword;
use rsasl::mechanisms::scram::tools;
use rsasl::prelude::{Mechname, SASLConfig, SASLServer, SessionError, State, Validation};
use rsasl::property::{AuthId, OAuthBearerToken, Password};
use rsasl::validate::{Validate, ValidationError};
use sha2::{Digest, Sha256, Sha512};

use super::broker::free_port;

const SALT: &[u8] = b"klais-gate-salt!";
const ITERATIONS: u32 = 4096;

/// The gate's outcome type: the authenticated user.
struct Outcome;
impl Validation for Outcome {
    type Value = Option<String>;
}

/// The users and their passwords, and the one OAUTHBEARER token accepted
/// ([`oauth_token`]); while `revoked` is set every exchange is refused
/// (credentials withdrawn on a running cluster).
struct Users(HashMap<String, String>, Arc<AtomicBool>, String);

/// The JWT the test token endpoint issues and the gate accepts: subject
/// `klais-client`, valid for an hour from the start of this test process,
/// unsigned (librdkafka reads `sub` and `exp`; checking signatures is the
/// broker's business, and this broker is the test).
pub fn oauth_token() -> String {
    static NOW: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let now = *NOW.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    });
    use base64::Engine as _;
    let part = |j: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(j);
    format!(
        "{}.{}.{}",
        part(r#"{"alg":"none","typ":"JWT"}"#),
        part(&format!(
            r#"{{"sub":"klais-client","iat":{now},"exp":{}}}"#,
            now + 3600
        )),
        part("test")
    )
}

/// (stored key, server key) of `password`, as a broker stores them.
macro_rules! scram_keys {
    ($d:ty, $password:expr) => {{
        let mut salted = Default::default();
        tools::hash_password::<$d>($password.as_bytes(), ITERATIONS, SALT, &mut salted);
        let (client_key, server_key) = tools::derive_keys::<$d>(&salted);
        (<$d>::digest(client_key).to_vec(), server_key.to_vec())
    }};
}

impl Users {
    /// The client sent the token the endpoint issues (rsasl passes the
    /// `auth` value as sent: "Bearer <token>").
    fn token_ok(&self, context: &Context) -> bool {
        context
            .get_ref::<OAuthBearerToken>()
            .map(|t| t.strip_prefix("Bearer ").unwrap_or(t))
            == Some(self.2.as_str())
    }
}

impl SessionCallback for Users {
    fn callback(
        &self,
        session_data: &SessionData,
        context: &Context,
        request: &mut Request,
    ) -> Result<(), SessionError> {
        let mech = session_data.mechanism().mechanism.as_str();
        if request.is::<OAuthBearerValidate>() {
            let ok = !self.1.load(Ordering::Relaxed) && self.token_ok(context);
            let answer = if ok {
                Ok(())
            } else {
                Err(OAuthBearerError::new("invalid_token", None, None))
            };
            request.satisfy::<OAuthBearerValidate>(&answer)?;
            return Ok(());
        }
        if !mech.starts_with("SCRAM-") {
            return Ok(());
        }
        let Some(pw) = context.get_ref::<AuthId>().and_then(|u| self.0.get(u)) else {
            return Ok(());
        };
        let (stored, server) = if mech == "SCRAM-SHA-512" {
            scram_keys!(Sha512, pw)
        } else {
            scram_keys!(Sha256, pw)
        };
        request.satisfy::<ScramStoredPassword>(&ScramStoredPassword::new(
            ITERATIONS, SALT, &stored, &server,
        ))?;
        Ok(())
    }

    fn validate(
        &self,
        session_data: &SessionData,
        context: &Context,
        validate: &mut Validate<'_>,
    ) -> Result<(), ValidationError> {
        let mech = session_data.mechanism().mechanism.as_str();
        let user = context.get_ref::<AuthId>().map(str::to_string);
        let ok = !self.1.load(Ordering::Relaxed)
            && match (mech, &user) {
                // PLAIN: the password given must be the user's.
                ("PLAIN", Some(u)) => self
                    .0
                    .get(u)
                    .is_some_and(|pw| context.get_ref::<Password>() == Some(pw.as_bytes())),
                // OAUTHBEARER: the token, as the callback checked it.
                ("OAUTHBEARER", _) => self.token_ok(context),
                // SCRAM: the mechanism checked the proof before asking.
                (_, Some(_)) => true,
                _ => false,
            };
        validate
            .with::<Outcome, _>(|| Ok(ok.then(|| user.unwrap_or_else(|| "oauth".to_string()))))?;
        Ok(())
    }
}

/// A SASL front on a free port; stops on drop.
pub struct Gate {
    /// Port clients connect to.
    pub port: u16,
    /// Exchanges refused so far.
    pub refused: Arc<AtomicU64>,
    /// Set: every exchange from now on is refused (a password changed on
    /// the cluster while klais runs); cleared: accepted again.
    pub revoked: Arc<AtomicBool>,
    quit: Arc<AtomicBool>,
}

impl Gate {
    /// Serves `users` (name, password) in front of `127.0.0.1:upstream`.
    pub fn start(upstream: u16, users: &[(&str, &str)]) -> Gate {
        let port = free_port();
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let revoked = Arc::new(AtomicBool::new(false));
        let users = Users(
            users
                .iter()
                .map(|(u, p)| ((*u).to_string(), (*p).to_string()))
                .collect(),
            revoked.clone(),
            oauth_token(),
        );
        let config = SASLConfig::builder()
            .with_defaults()
            .with_callback(users)
            .unwrap();
        let quit = Arc::new(AtomicBool::new(false));
        let refused = Arc::new(AtomicU64::new(0));
        let (q, r) = (quit.clone(), refused.clone());
        std::thread::spawn(move || {
            while !q.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let (config, r) = (config.clone(), r.clone());
                        std::thread::spawn(move || {
                            let _ = serve(client, upstream, &config, &r);
                        });
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(_) => {}
                }
            }
        });
        Gate {
            port,
            refused,
            revoked,
            quit,
        }
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.quit.store(true, Ordering::Relaxed);
    }
}

fn read_frame(s: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut size = [0u8; 4];
    s.read_exact(&mut size)?;
    let n = i32::from_be_bytes(size);
    if !(8..=(16 << 20)).contains(&n) {
        return Err(io::Error::other("bad frame size"));
    }
    let mut body = vec![0u8; n as usize];
    s.read_exact(&mut body)?;
    Ok(body)
}

fn write_frame(s: &mut TcpStream, corr: i32, body: &[u8]) -> io::Result<()> {
    let mut out = Vec::with_capacity(8 + body.len());
    out.extend_from_slice(&((4 + body.len()) as i32).to_be_bytes());
    out.extend_from_slice(&corr.to_be_bytes());
    out.extend_from_slice(body);
    s.write_all(&out)
}

/// The bytes after the request header v1 (api key, version, correlation id,
/// client id).
fn request_body(frame: &[u8]) -> Option<&[u8]> {
    let id_len = i16::from_be_bytes([*frame.get(8)?, *frame.get(9)?]).max(0) as usize;
    frame.get(10 + id_len..)
}

fn serve(
    mut client: TcpStream,
    upstream: u16,
    config: &Arc<SASLConfig>,
    refused: &AtomicU64,
) -> io::Result<()> {
    let mut broker = TcpStream::connect(("127.0.0.1", upstream))?;
    let mut session = None;
    loop {
        let frame = read_frame(&mut client)?;
        let api = i16::from_be_bytes([frame[0], frame[1]]);
        let version = i16::from_be_bytes([frame[2], frame[3]]);
        let corr = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
        let body = request_body(&frame).ok_or_else(|| io::Error::other("short request"))?;
        match api {
            18 => {
                broker.write_all(&((frame.len()) as i32).to_be_bytes())?;
                broker.write_all(&frame)?;
                let resp = read_frame(&mut broker)?;
                client.write_all(&(resp.len() as i32).to_be_bytes())?;
                client.write_all(&resp)?;
            }
            17 => {
                let n = i16::from_be_bytes([body[0], body[1]]).max(0) as usize;
                let mech = std::str::from_utf8(&body[2..2 + n]).unwrap_or("");
                let offered = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"];
                let mut out = Vec::new();
                let started = Mechname::parse(mech.as_bytes())
                    .ok()
                    .filter(|_| offered.contains(&mech))
                    .and_then(|m| {
                        SASLServer::<Outcome>::new(config.clone())
                            .start_suggested(m)
                            .ok()
                    });
                out.extend_from_slice(&(if started.is_some() { 0i16 } else { 33 }).to_be_bytes());
                out.extend_from_slice(&(offered.len() as i32).to_be_bytes());
                for m in offered {
                    out.extend_from_slice(&(m.len() as i16).to_be_bytes());
                    out.extend_from_slice(m.as_bytes());
                }
                session = started;
                write_frame(&mut client, corr, &out)?;
            }
            36 if (0..=1).contains(&version) => {
                let Some(s) = session.as_mut() else {
                    return Err(io::Error::other("SaslAuthenticate before SaslHandshake"));
                };
                let n = i32::from_be_bytes([body[0], body[1], body[2], body[3]]).max(0) as usize;
                let input = &body[4..4 + n];
                let mut reply = Vec::new();
                let step = s.step(Some(input), &mut reply);
                let done = matches!(step, Ok(State::Finished(_)));
                let ok = match step {
                    Ok(State::Running) => true,
                    Ok(State::Finished(_)) => s.validation().flatten().is_some(),
                    Err(_) => false,
                };
                let mut out = Vec::new();
                if ok {
                    out.extend_from_slice(&0i16.to_be_bytes());
                    out.extend_from_slice(&(-1i16).to_be_bytes());
                } else {
                    let msg = "Authentication failed: invalid credentials";
                    out.extend_from_slice(&58i16.to_be_bytes());
                    out.extend_from_slice(&(msg.len() as i16).to_be_bytes());
                    out.extend_from_slice(msg.as_bytes());
                }
                out.extend_from_slice(&(reply.len() as i32).to_be_bytes());
                out.extend_from_slice(&reply);
                if version >= 1 {
                    out.extend_from_slice(&0i64.to_be_bytes());
                }
                write_frame(&mut client, corr, &out)?;
                if !ok {
                    refused.fetch_add(1, Ordering::Relaxed);
                    let _ = client.shutdown(Shutdown::Both);
                    return Ok(());
                }
                if done {
                    break;
                }
            }
            _ => {
                // Not allowed before authentication.
                let _ = client.shutdown(Shutdown::Both);
                return Ok(());
            }
        }
    }
    // Authenticated: the broker's from here on.
    let (c2, b2) = (client.try_clone()?, broker.try_clone()?);
    std::thread::spawn(move || pipe(c2, b2));
    pipe(broker, client);
    Ok(())
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    let _ = io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}
