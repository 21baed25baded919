//! Certificates made by `openssl` for the tests: a CA, certificates it issues (RSA or ECDSA,
//! with chosen DNS names and validity), and PKCS#12 files as Windows exports them.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Key type of a certificate.
#[derive(Debug, Clone, Copy)]
pub enum KeyType {
    Rsa,
    Ecdsa,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("openssl is needed for the TLS tests ({e})"));
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn new_key(dir: &Path, file: &str, kind: KeyType) {
    match kind {
        KeyType::Rsa => openssl(
            dir,
            &[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
                file,
            ],
        ),
        KeyType::Ecdsa => openssl(
            dir,
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                file,
            ],
        ),
    }
}

/// A certificate authority in a directory; issues certificates into the same directory.
pub struct Ca {
    pub dir: PathBuf,
    /// The CA certificate (PEM): what clients trust.
    pub cert: PathBuf,
    serial: std::cell::Cell<u32>,
}

/// An issued certificate.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Ca {
    pub fn new(dir: &Path) -> Ca {
        new_key(dir, "ca.key", KeyType::Ecdsa);
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-new",
                "-key",
                "ca.key",
                "-days",
                "3650",
                "-subj",
                "/CN=Plugboard Test CA",
                "-out",
                "ca.pem",
            ],
        );
        Ca {
            dir: dir.to_path_buf(),
            cert: dir.join("ca.pem"),
            serial: std::cell::Cell::new(1),
        }
    }

    /// A certificate for `names` (DNS names, or IP addresses), valid `days` days.
    pub fn issue(&self, stem: &str, names: &[&str], kind: KeyType, days: u32) -> Issued {
        let key = format!("{stem}.key");
        let csr = format!("{stem}.csr");
        let cert = format!("{stem}.pem");
        let ext = format!("{stem}.ext");
        new_key(&self.dir, &key, kind);
        openssl(
            &self.dir,
            &[
                "req",
                "-new",
                "-key",
                &key,
                "-subj",
                &format!("/CN={}", names[0]),
                "-out",
                &csr,
            ],
        );
        let san: Vec<String> = names
            .iter()
            .map(|n| {
                if n.parse::<std::net::IpAddr>().is_ok() {
                    format!("IP:{n}")
                } else {
                    format!("DNS:{n}")
                }
            })
            .collect();
        std::fs::write(
            self.dir.join(&ext),
            format!(
                "subjectAltName={}\nbasicConstraints=CA:FALSE\n",
                san.join(",")
            ),
        )
        .unwrap();
        let serial = self.serial.get();
        self.serial.set(serial + 1);
        openssl(
            &self.dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-set_serial",
                &serial.to_string(),
                "-days",
                &days.to_string(),
                "-extfile",
                &ext,
                "-out",
                &cert,
            ],
        );
        Issued {
            cert: self.dir.join(cert),
            key: self.dir.join(key),
        }
    }

    /// A PKCS#12 file of `c` (with the CA as chain): `legacy` encrypts with RC2/3DES as older
    /// Windows exports do, otherwise AES-256; `with_key = false` leaves the key out.
    pub fn pfx(
        &self,
        c: &Issued,
        stem: &str,
        password: &str,
        legacy: bool,
        with_key: bool,
    ) -> PathBuf {
        let out = format!("{stem}.pfx");
        let pass = format!("pass:{password}");
        let cert = c.cert.display().to_string();
        let key = c.key.display().to_string();
        let mut args = vec![
            "pkcs12",
            "-export",
            "-in",
            &cert,
            "-certfile",
            "ca.pem",
            "-out",
            &out,
            "-passout",
            &pass,
        ];
        if with_key {
            args.extend(["-inkey", &key]);
        } else {
            args.push("-nokeys");
        }
        if legacy {
            args.push("-legacy");
        } else {
            args.extend([
                "-keypbe",
                "AES-256-CBC",
                "-certpbe",
                "AES-256-CBC",
                "-macalg",
                "sha256",
            ]);
        }
        openssl(&self.dir, &args);
        self.dir.join(out)
    }
}

/// A TLS client connection (rustls) to `addr`, for `name`, trusting `ca`, speaking HTTP/1.1.
pub async fn connect(
    addr: std::net::SocketAddr,
    name: &str,
    ca: &Path,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let server_name = rustls_pki_types::ServerName::try_from(name.to_string()).unwrap();
    connector.connect(server_name, tcp).await
}

/// Runs curl with `args`; returns (HTTP status, HTTP version, body). A failed transfer
/// (TLS refused, connection reset) is `Err` with curl's exit code and message.
pub fn curl(args: &[&str]) -> Result<(u16, String, String), String> {
    let out = Command::new("curl")
        .args([
            "-s",
            "-S",
            "-m",
            "10",
            "-w",
            "\n%{http_code} %{http_version}",
        ])
        .args(args)
        .output()
        .expect("curl is needed for the TLS tests");
    if !out.status.success() {
        return Err(format!(
            "curl exit {:?}: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, last) = text.rsplit_once('\n').unwrap_or(("", &text));
    let mut w = last.split(' ');
    let status = w.next().unwrap_or("0").parse().unwrap_or(0);
    let version = w.next().unwrap_or("").to_string();
    Ok((status, version, body.to_string()))
}

/// The subject CN of the certificate the server presents for `sni` (`None`: no SNI), and
/// whether it verified against `ca`.
pub fn presented_cn(addr: std::net::SocketAddr, sni: Option<&str>, ca: &Path) -> (String, bool) {
    let connect = addr.to_string();
    let cafile = ca.display().to_string();
    let mut args = vec![
        "s_client", "-connect", &connect, "-CAfile", &cafile, "-brief",
    ];
    match sni {
        Some(n) => args.extend(["-servername", n]),
        None => args.push("-noservername"),
    }
    let out = Command::new("openssl")
        .args(&args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl");
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    let cn = text
        .lines()
        .find_map(|l| {
            l.split_once("Peer certificate: ")
                .map(|(_, s)| s.to_string())
        })
        .and_then(|s| {
            s.split("CN = ")
                .nth(1)
                .map(|c| c.split(',').next().unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    (cn, text.contains("Verification: OK"))
}

/// An HTTP/1.1 backend that speaks only TLS (the same answers as [`super::HttpBackend`]);
/// it counts connections that did not complete a TLS handshake (plaintext sent to it).
pub struct TlsBackend {
    pub addr: std::net::SocketAddr,
    pub hits: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    pub health: std::sync::Arc<std::sync::atomic::AtomicU16>,
    pub failed_handshakes: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    _task: tokio::task::JoinHandle<()>,
}

impl TlsBackend {
    pub async fn start(cert: &Issued) -> TlsBackend {
        use rustls_pki_types::pem::PemObject;
        use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
        use std::sync::{Arc, Mutex};
        let chain: Vec<_> = rustls_pki_types::CertificateDer::pem_file_iter(&cert.cert)
            .unwrap()
            .map(|c| c.unwrap())
            .collect();
        let key = rustls_pki_types::PrivateKeyDer::from_pem_file(&cert.key).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let health = Arc::new(AtomicU16::new(200));
        let failed = Arc::new(AtomicUsize::new(0));
        let (h, he, f) = (hits.clone(), health.clone(), failed.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((s, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, h, he, f) = (acceptor.clone(), h.clone(), he.clone(), f.clone());
                tokio::spawn(async move {
                    match acceptor.accept(s).await {
                        Ok(tls) => {
                            super::serve_http(tls, addr, h, he, Arc::new(Mutex::new(Vec::new())))
                                .await
                        }
                        Err(_) => {
                            f.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                });
            }
        });
        TlsBackend {
            addr,
            hits,
            health,
            failed_handshakes: failed,
            _task: task,
        }
    }
}

/// The `[[service.certificate]]` table for `c`.
pub fn cert_table(c: &Issued) -> String {
    format!(
        "[[service.certificate]]\ncert = \"{}\"\nkey = \"{}\"\n",
        c.cert.display(),
        c.key.display()
    )
}

/// A response read off a client connection.
pub struct Answer {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl Answer {
    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// Sends `GET path` for `host` with `extra` header lines, then reads the response.
pub async fn get<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    s: &mut S,
    host: &str,
    path: &str,
    extra: &str,
) -> Answer {
    use tokio::io::AsyncWriteExt;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n").as_bytes())
        .await
        .unwrap();
    read_response(s).await
}

/// Reads one response (Content-Length framed); panics on anything after it.
pub async fn read_response<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> Answer {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                let n = s.read(&mut chunk).await.unwrap();
                assert!(n > 0, "closed mid-response");
                buf.extend_from_slice(&chunk[..n]);
            }
            let status = head.split(' ').nth(1).unwrap().parse().unwrap();
            let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).to_string();
            assert_eq!(buf.len(), end + 4 + len, "unexpected extra bytes");
            return Answer { status, head, body };
        }
        let n = tokio::time::timeout(std::time::Duration::from_secs(10), s.read(&mut chunk))
            .await
            .expect("a response")
            .unwrap();
        assert!(
            n > 0,
            "closed before a response: {}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
}
