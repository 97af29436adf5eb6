//! A token endpoint for OAUTHBEARER's OpenID Connect client credentials
//! (RFC 6749 §4.4), as an identity provider serves it: `POST` with HTTP Basic
//! client authentication and `grant_type=client_credentials`; answers the
//! SASL front's token ([`super::sasl_gate::oauth_token`]) to the right client
//! and 401 `invalid_client` to any other. Plain HTTP on loopback.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;

use super::sasl_gate::oauth_token;

/// The endpoint; stops on drop.
pub struct TokenEndpoint {
    /// `http://127.0.0.1:<port>/token`.
    pub url: String,
    /// Tokens issued.
    pub issued: Arc<AtomicU64>,
    /// Requests refused (wrong client or secret).
    pub refused: Arc<AtomicU64>,
    quit: Arc<AtomicBool>,
}

impl TokenEndpoint {
    /// Serves `client_id` with `secret`.
    pub fn start(client_id: &str, secret: &str) -> TokenEndpoint {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}/token", listener.local_addr().unwrap());
        let want = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{client_id}:{secret}"))
        );
        let (issued, refused, quit) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let (i, r, q) = (issued.clone(), refused.clone(), quit.clone());
        std::thread::spawn(move || {
            while !q.load(Ordering::Relaxed) {
                let Ok((conn, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                conn.set_nonblocking(false).unwrap();
                conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut rd = BufReader::new(conn);
                let (mut auth, mut len, mut line) = (String::new(), 0usize, String::new());
                let mut first = String::new();
                if rd.read_line(&mut first).is_err() {
                    continue;
                }
                loop {
                    line.clear();
                    if rd.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    let (k, v) = line.split_once(':').unwrap_or(("", ""));
                    match k.to_ascii_lowercase().as_str() {
                        "authorization" => auth = v.trim().to_string(),
                        "content-length" => len = v.trim().parse().unwrap_or(0),
                        _ => {}
                    }
                }
                let mut body = vec![0u8; len];
                let _ = rd.read_exact(&mut body);
                let body = String::from_utf8_lossy(&body);
                let ok = first.starts_with("POST ")
                    && auth == want
                    && body.contains("grant_type=client_credentials");
                let (status, json) = if ok {
                    i.fetch_add(1, Ordering::Relaxed);
                    (
                        "200 OK",
                        format!(
                            r#"{{"access_token":"{}","token_type":"bearer","expires_in":3600}}"#,
                            oauth_token()
                        ),
                    )
                } else {
                    r.fetch_add(1, Ordering::Relaxed);
                    (
                        "401 Unauthorized",
                        r#"{"error":"invalid_client"}"#.to_string(),
                    )
                };
                let mut conn = rd.into_inner();
                let _ = write!(
                    conn,
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{json}",
                    json.len()
                );
                let _ = conn.flush();
            }
        });
        TokenEndpoint {
            url,
            issued,
            refused,
            quit,
        }
    }
}

impl Drop for TokenEndpoint {
    fn drop(&mut self) {
        self.quit.store(true, Ordering::Relaxed);
    }
}
