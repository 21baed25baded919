//! A TLS client session of an http listener: rustls' unbuffered server connection, with the
//! buffers owned here so that a parked session gives them back. A connection held by the
//! parking lot keeps only its keys and handshake state; rustls' buffered connection would
//! keep a 4 KiB receive buffer for every idle client.
//!
//! The socket is read by readiness, as the plaintext path reads (a draining read clears
//! tokio's readiness, so the next wait costs no system call), and written without waiting
//! where possible.

use std::io;
use std::mem::MaybeUninit;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Instant;

use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, UnbufferedStatus};
use rustls::ServerConfig;
use tokio::net::TcpStream;

use crate::io::socket;

/// Bytes asked of the socket per read while no record says it needs more.
const READ_SIZE: usize = 4096;

/// The largest TLS input held at once: one handshake message of up to 64 KiB (rustls' own
/// limit) with its record header. A peer that sends more without completing it is refused.
const MAX_INCOMING: usize = 0xffff + 5 + READ_SIZE;

/// Encrypted bytes waiting for the socket beyond which a writer waits for them to leave.
const MAX_PENDING_OUT: usize = 64 * 1024;

/// What [`TlsSession::drive`] is asked to do once the session can send application data.
enum Outgoing<'a> {
    Nothing,
    Data(&'a [u8]),
    CloseNotify,
}

/// Where the session stands after [`TlsSession::drive`].
#[derive(Debug, PartialEq, Eq)]
enum Stage {
    /// The handshake needs more bytes from the client.
    Handshaking,
    /// Application data flows.
    Open,
}

/// One client's TLS session and its buffers.
pub struct TlsSession {
    conn: UnbufferedServerConnection,
    /// TLS bytes received and not yet processed: `incoming[..used]`.
    incoming: Vec<u8>,
    used: usize,
    /// Decrypted bytes not yet read: `plain[plain_pos..]`.
    plain: Vec<u8>,
    plain_pos: usize,
    /// Encrypted bytes not yet sent: `out[sent..]`.
    out: Vec<u8>,
    sent: usize,
    /// The client ended its side (close_notify, or the TCP stream ended).
    eof: bool,
    /// The name the client asked for (SNI), lowercased; for the access log.
    sni: Option<Box<str>>,
}

thread_local! {
    /// The SNI of the handshake step running on this thread: the certificate resolver notes
    /// it, the session takes it right after the step (rustls' unbuffered server connection
    /// does not keep it). Both happen in one synchronous call, so steps never mix.
    static SNI: std::cell::RefCell<Option<Box<str>>> = const { std::cell::RefCell::new(None) };
}

/// Called by the certificate resolver with the client's SNI.
pub fn note_sni(name: Option<&str>) {
    SNI.with(|s| *s.borrow_mut() = name.map(Box::from));
}

impl std::fmt::Debug for TlsSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSession")
            .field("incoming", &self.used)
            .field("plain", &(self.plain.len() - self.plain_pos))
            .field("out", &(self.out.len() - self.sent))
            .field("eof", &self.eof)
            .finish()
    }
}

fn tls_error(e: impl std::error::Error + Send + Sync + 'static) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl TlsSession {
    pub fn new(config: Arc<ServerConfig>) -> Result<TlsSession, rustls::Error> {
        Ok(TlsSession {
            conn: UnbufferedServerConnection::new(config)?,
            incoming: Vec::new(),
            used: 0,
            plain: Vec::new(),
            plain_pos: 0,
            out: Vec::new(),
            sent: 0,
            eof: false,
            sni: None,
        })
    }

    /// The TLS version agreed, as OpenSSL names it (`TLSv1.3`).
    pub fn version(&self) -> &'static str {
        version_name(self.conn.protocol_version())
    }

    /// The cipher suite agreed.
    pub fn cipher(&self) -> &'static str {
        self.conn
            .negotiated_cipher_suite()
            .and_then(|c| c.suite().as_str())
            .unwrap_or("-")
    }

    /// The name the client asked for (SNI), if it sent one.
    pub fn sni(&self) -> Option<&str> {
        self.sni.as_deref()
    }

    /// The protocol agreed by ALPN.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.conn.alpn_protocol()
    }

    /// Completes the handshake by `deadline`.
    pub async fn handshake(&mut self, tcp: &TcpStream, deadline: Instant) -> io::Result<()> {
        let drive = std::future::poll_fn(|cx| loop {
            SNI.with(|s| s.borrow_mut().take());
            let step = self.drive(Outgoing::Nothing);
            if let Some(name) = SNI.with(|s| s.borrow_mut().take()) {
                self.sni = Some(name);
            }
            let stage = match step {
                Ok(s) => s,
                Err(e) => {
                    self.send_now(tcp);
                    return Poll::Ready(Err(e));
                }
            };
            ready!(self.poll_flush(tcp, cx))?;
            if stage == Stage::Open {
                return Poll::Ready(Ok(()));
            }
            if self.eof {
                return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
            }
            ready!(self.poll_receive(tcp, cx))?;
        });
        match tokio::time::timeout_at(deadline.into(), drive).await {
            Ok(r) => r,
            Err(_) => Err(io::ErrorKind::TimedOut.into()),
        }
    }

    /// True when decrypted bytes (or the client's end) are waiting to be read: a request that
    /// came with the last bytes read, so there is nothing to wait for.
    pub fn has_plaintext(&mut self) -> bool {
        if self.used > 0 && self.drive(Outgoing::Nothing).is_err() {
            return true;
        }
        self.plain_pos < self.plain.len() || self.eof
    }

    /// Reads decrypted bytes into `buf`; `Ok(0)` at the end of the stream (with or without
    /// the client's close_notify).
    pub fn poll_read(
        &mut self,
        tcp: &TcpStream,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            if self.plain_pos < self.plain.len() {
                let n = buf.len().min(self.plain.len() - self.plain_pos);
                buf[..n].copy_from_slice(&self.plain[self.plain_pos..self.plain_pos + n]);
                self.plain_pos += n;
                return Poll::Ready(Ok(n));
            }
            if self.eof {
                return Poll::Ready(Ok(0));
            }
            // Answers rustls owes the client (a key update) go out first, without waiting.
            if let Poll::Ready(Err(e)) = self.poll_flush(tcp, cx) {
                return Poll::Ready(Err(e));
            }
            ready!(self.poll_receive(tcp, cx))?;
            if let Err(e) = self.drive(Outgoing::Nothing) {
                self.send_now(tcp);
                return Poll::Ready(Err(e));
            }
        }
    }

    /// Encrypts `data` into the outgoing buffer (sent by [`TlsSession::poll_flush`]).
    pub fn encrypt(&mut self, data: &[u8]) -> io::Result<()> {
        self.drive(Outgoing::Data(data)).map(drop)
    }

    /// Whether so much is waiting to be sent that a writer should flush first.
    pub fn out_full(&self) -> bool {
        self.out.len() - self.sent >= MAX_PENDING_OUT
    }

    /// Queues a close_notify alert (sent by [`TlsSession::poll_flush`]).
    pub fn close_notify(&mut self) -> io::Result<()> {
        self.drive(Outgoing::CloseNotify).map(drop)
    }

    /// Sends everything encrypted so far.
    pub fn poll_flush(&mut self, tcp: &TcpStream, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.out.len() {
            ready!(tcp.poll_write_ready(cx))?;
            match tcp.try_write(&self.out[self.sent..]) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        self.out.clear();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }

    /// Encrypts and sends `data` and a close_notify without waiting (a last answer before
    /// closing); what the socket does not take at once is dropped.
    pub fn send_last(&mut self, tcp: &TcpStream, data: &[u8]) {
        if self.encrypt(data).is_ok() && self.close_notify().is_ok() {
            self.send_now(tcp);
        }
    }

    /// Sends what the socket takes at once of the pending records (an alert before closing).
    fn send_now(&mut self, tcp: &TcpStream) {
        if self.sent < self.out.len() {
            // Not `try_write`, which gives up unless tokio has seen the socket writable.
            let _ = socket2::SockRef::from(tcp).send(&self.out[self.sent..]);
        }
    }

    /// Gives back the buffers of a session with nothing in them, before it waits parked.
    pub fn shrink(&mut self) {
        if self.used == 0 {
            self.incoming = Vec::new();
        }
        if self.plain_pos == self.plain.len() {
            self.plain = Vec::new();
            self.plain_pos = 0;
        }
        if self.sent == self.out.len() {
            self.out = Vec::new();
            self.sent = 0;
        }
    }

    /// Waits for the socket and reads what it has into `incoming`.
    fn poll_receive(&mut self, tcp: &TcpStream, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Room for the whole record that has started, or for a read of READ_SIZE.
        let record = match self.incoming.get(3..5) {
            Some(l) if self.used >= 5 => 5 + u16::from_be_bytes([l[0], l[1]]) as usize,
            _ => 0,
        };
        let want = (self.used + READ_SIZE).max(record).min(MAX_INCOMING);
        if want <= self.used {
            return Poll::Ready(Err(tls_error(io::Error::other(
                "TLS message larger than 64 KiB",
            ))));
        }
        if self.incoming.len() < want {
            self.incoming.resize(want, 0);
        }
        loop {
            ready!(tcp.poll_read_ready(cx))?;
            let free = &mut self.incoming[self.used..];
            // SAFETY: an initialised slice may be viewed as maybe-uninitialised; recv only
            // writes into it.
            let free = unsafe { &mut *(free as *mut [u8] as *mut [MaybeUninit<u8>]) };
            match socket::try_recv(tcp, free) {
                Ok(0) => {
                    self.eof = true;
                    return Poll::Ready(Ok(()));
                }
                Ok(n) => {
                    self.used += n;
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// Runs rustls over the received bytes until it needs more of them or has nothing more
    /// to do: decrypted data goes to `plain`, records to send to `out`; `send` is encrypted
    /// once the session allows it.
    fn drive(&mut self, mut send: Outgoing<'_>) -> io::Result<Stage> {
        let stage = self.drive_inner(&mut send)?;
        if matches!(send, Outgoing::Nothing) {
            Ok(stage)
        } else {
            Err(io::ErrorKind::BrokenPipe.into())
        }
    }

    fn drive_inner(&mut self, send: &mut Outgoing<'_>) -> io::Result<Stage> {
        let TlsSession {
            conn,
            incoming,
            used,
            plain,
            plain_pos,
            out,
            eof,
            ..
        } = self;
        loop {
            let UnbufferedStatus { discard, state } =
                conn.process_tls_records(&mut incoming[..*used]);
            let state = match state {
                Ok(s) => s,
                Err(e) => {
                    // rustls queued an alert saying why: encode it for the caller to send.
                    alerts(conn, &mut incoming[..*used], out);
                    return Err(tls_error(e));
                }
            };
            let stage = match state {
                ConnectionState::ReadTraffic(mut r) => {
                    if *plain_pos == plain.len() {
                        plain.clear();
                        *plain_pos = 0;
                    }
                    while let Some(record) = r.next_record() {
                        plain.extend_from_slice(record.map_err(tls_error)?.payload);
                    }
                    None
                }
                ConnectionState::EncodeTlsData(mut e) => {
                    encode(&mut e, out)?;
                    None
                }
                // The records stay in `out` until the socket takes them.
                ConnectionState::TransmitTlsData(t) => {
                    t.done();
                    None
                }
                ConnectionState::BlockedHandshake => Some(Stage::Handshaking),
                ConnectionState::PeerClosed => {
                    *eof = true;
                    None
                }
                ConnectionState::Closed => {
                    *eof = true;
                    Some(Stage::Open)
                }
                ConnectionState::WriteTraffic(mut w) => {
                    match std::mem::replace(send, Outgoing::Nothing) {
                        Outgoing::Nothing => {}
                        Outgoing::Data(data) => {
                            // Each record adds a header, a content type and a tag.
                            let records = data.len().div_ceil(16 * 1024).max(1);
                            let start = out.len();
                            out.resize(start + data.len() + records * 64, 0);
                            let n = match w.encrypt(data, &mut out[start..]) {
                                Ok(n) => n,
                                Err(EncryptError::InsufficientSize(s)) => {
                                    out.resize(start + s.required_size, 0);
                                    w.encrypt(data, &mut out[start..]).map_err(tls_error)?
                                }
                                Err(e) => return Err(tls_error(e)),
                            };
                            out.truncate(start + n);
                        }
                        Outgoing::CloseNotify => {
                            let start = out.len();
                            out.resize(start + 64, 0);
                            let n = w.queue_close_notify(&mut out[start..]).map_err(tls_error)?;
                            out.truncate(start + n);
                        }
                    }
                    Some(Stage::Open)
                }
                _ => {
                    return Err(tls_error(io::Error::other(
                        "unexpected TLS state (early data is not enabled)",
                    )))
                }
            };
            if discard > 0 {
                incoming.copy_within(discard..*used, 0);
                *used -= discard;
            }
            if let Some(stage) = stage {
                return Ok(stage);
            }
        }
    }
}

/// Appends the handshake record `e` holds to `out`.
fn encode(
    e: &mut rustls::unbuffered::EncodeTlsData<'_, rustls::server::ServerConnectionData>,
    out: &mut Vec<u8>,
) -> io::Result<()> {
    let start = out.len();
    out.resize(start + 512, 0);
    let n = match e.encode(&mut out[start..]) {
        Ok(n) => n,
        Err(EncodeError::InsufficientSize(s)) => {
            out.resize(start + s.required_size, 0);
            e.encode(&mut out[start..]).map_err(tls_error)?
        }
        Err(e) => return Err(tls_error(e)),
    };
    out.truncate(start + n);
    Ok(())
}

/// After an error: the alerts rustls queued, appended to `out`.
fn alerts(conn: &mut UnbufferedServerConnection, incoming: &mut [u8], out: &mut Vec<u8>) {
    for _ in 0..4 {
        match conn.process_tls_records(incoming).state {
            Ok(ConnectionState::EncodeTlsData(mut e)) => {
                if encode(&mut e, out).is_err() {
                    return;
                }
            }
            Ok(ConnectionState::TransmitTlsData(t)) => t.done(),
            _ => return,
        }
    }
}

/// A TLS version as OpenSSL and HAProxy name it.
pub fn version_name(v: Option<rustls::ProtocolVersion>) -> &'static str {
    match v {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
        Some(_) => "TLS",
        None => "-",
    }
}
