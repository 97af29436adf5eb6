//! The broker tier's secured listener: stunnel4 (a TLS terminator klais did
//! not write) with certificates from a throwaway CA that openssl makes per
//! test, then — when SASL is asked for — the SASL front
//! (`sasl_gate.rs`, rsasl's server), then tansu. tansu 0.6 accepts a
//! certificate option but does not serve TLS itself, hence the terminator.
//! The broker advertises the TLS port, so every connection a client makes
//! goes through the whole chain.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::broker::{free_port, Broker, Relay};
use super::sasl_gate::Gate;

/// The user the SASL front knows, and its password.
pub const USER: (&str, &str) = ("klais", "s3cret-pw");

/// tansu behind stunnel, with its CA; both killed on drop.
pub struct Secured {
    /// The broker (plaintext, loopback; advertises the TLS port).
    pub broker: Broker,
    /// The TLS port.
    pub tls_port: u16,
    /// The SASL front, when there is one.
    pub gate: Option<Gate>,
    /// The relay clients connect through, when asked for.
    pub relay: Option<Relay>,
    stunnel: Child,
    dir: tempfile::TempDir,
}

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .expect("openssl runs (apt-get install openssl)");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA (`name.pem`, `name.key`) in `dir`.
fn make_ca(dir: &Path, name: &str) {
    run(Command::new("openssl").current_dir(dir).args([
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-days",
        "2",
        "-subj",
        &format!("/CN={name}"),
        "-keyout",
        &format!("{name}.key"),
        "-out",
        &format!("{name}.pem"),
    ]));
}

/// A certificate `name.pem` / `name.key` signed by CA `ca`, for `san`, valid
/// for `days` (-1: expired yesterday).
fn make_cert(dir: &Path, ca: &str, name: &str, san: &str, days: i32) {
    run(Command::new("openssl").current_dir(dir).args([
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-subj",
        &format!("/CN={name}"),
        "-keyout",
        &format!("{name}.key"),
        "-out",
        &format!("{name}.csr"),
    ]));
    std::fs::write(
        dir.join(format!("{name}.ext")),
        format!("subjectAltName={san}\n"),
    )
    .unwrap();
    run(Command::new("openssl").current_dir(dir).args([
        "x509",
        "-req",
        "-in",
        &format!("{name}.csr"),
        "-CA",
        &format!("{ca}.pem"),
        "-CAkey",
        &format!("{ca}.key"),
        "-CAcreateserial",
        "-days",
        &days.to_string(),
        "-extfile",
        &format!("{name}.ext"),
        "-out",
        &format!("{name}.pem"),
    ]));
}

impl Secured {
    /// Starts tansu, the SASL front when `sasl` (user [`USER`]) and stunnel
    /// in front (asking for a client certificate from the test CA when
    /// `client_cert`).
    pub fn start(sasl: bool, client_cert: bool) -> Secured {
        Secured::start_opts(sasl, client_cert, false)
    }

    /// [`Secured::start`], with a [`Relay`] in front of stunnel when `relay`
    /// (clients connect to the relay; a test can cut it).
    pub fn start_opts(sasl: bool, client_cert: bool, relay: bool) -> Secured {
        Secured::start_full(sasl, client_cert, relay, false)
    }

    /// [`Secured::start`] (SASL), serving a broker certificate that expired
    /// yesterday.
    pub fn start_expired() -> Secured {
        Secured::start_full(true, false, false, true)
    }

    fn start_full(sasl: bool, client_cert: bool, relay: bool, expired: bool) -> Secured {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        make_ca(d, "ca");
        make_ca(d, "other-ca");
        let days = if expired { -1 } else { 2 };
        make_cert(d, "ca", "server", "DNS:localhost,IP:127.0.0.1", days);
        make_cert(d, "ca", "client", "DNS:klais-client", 2);
        let tls_port = free_port();
        let stunnel_port = if relay { free_port() } else { tls_port };
        let broker = Broker::start(Some(tls_port));
        let gate = sasl.then(|| Gate::start(broker.port, &[USER]));
        let behind = gate.as_ref().map_or(broker.port, |g| g.port);
        let verify = if client_cert {
            format!("verify = 2\nCAfile = {}\n", d.join("ca.pem").display())
        } else {
            String::new()
        };
        let conf = d.join("stunnel.conf");
        std::fs::write(
            &conf,
            format!(
                "foreground = yes\npid =\ndebug = 4\n[kafka]\naccept = 127.0.0.1:{stunnel_port}\nconnect = 127.0.0.1:{}\ncert = {}\nkey = {}\n{verify}",
                behind,
                d.join("server.pem").display(),
                d.join("server.key").display(),
            ),
        )
        .unwrap();
        let bin = ["stunnel4", "stunnel"]
            .into_iter()
            .find(|b| Command::new(b).arg("-version").stderr(Stdio::null()).stdout(Stdio::null()).status().is_ok())
            .expect("the broker tier's TLS listener needs stunnel4 (scripts/setup.sh installs it: apt-get install stunnel4)");
        let stunnel = Command::new(bin)
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("stunnel.log")).unwrap())
            .spawn()
            .expect("start stunnel");
        let t = Instant::now();
        while TcpStream::connect(("127.0.0.1", stunnel_port)).is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "stunnel did not listen: {}",
                std::fs::read_to_string(d.join("stunnel.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let relay = relay.then(|| Relay::start_on(tls_port, stunnel_port));
        Secured {
            broker,
            tls_port,
            gate,
            relay,
            stunnel,
            dir,
        }
    }

    /// Bootstrap address (TLS).
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.tls_port)
    }

    /// A file of the test PKI: `ca.pem`, `other-ca.pem`, `client.pem`,
    /// `client.key`.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes `text` to a private (0600) file in the test's directory, as a
    /// password file must be; returns its path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        super::secret_file(self.dir.path(), name, text)
    }
}

impl Drop for Secured {
    fn drop(&mut self) {
        let _ = self.stunnel.kill();
        let _ = self.stunnel.wait();
    }
}
