//! Framing and reading of PROXY headers over real loopback sockets: whole, byte by byte,
//! every form, and what must be refused; the client's bytes after the header stay unread.

use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

use super::*;

/// A connected pair: (the accepted side, its peer address, the client side).
async fn pair() -> (TcpStream, SocketAddr, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    let (server, peer) = l.accept().await.unwrap();
    (server, peer, client)
}

/// Sends `bytes` (all at once, or one at a time with pauses), reads the header with any
/// peer trusted, and returns the result and the bytes that followed it in the socket.
async fn read(bytes: &[u8], one_by_one: bool) -> (Result<Option<Carried>, Refused>, Vec<u8>) {
    let (mut server, peer, mut client) = pair().await;
    let bytes = bytes.to_vec();
    let writer = tokio::spawn(async move {
        if one_by_one {
            for b in bytes {
                client.write_all(&[b]).await.unwrap();
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        } else {
            client.write_all(&bytes).await.unwrap();
        }
        client.shutdown().await.unwrap();
        client
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    let r = AcceptProxy::default()
        .read(&mut server, peer, deadline)
        .await;
    let _client = writer.await.unwrap();
    let mut rest = Vec::new();
    if r.is_ok() {
        server.read_to_end(&mut rest).await.unwrap();
    }
    (r, rest)
}

const AFTER: &[u8] = b"\x16\x03\x01 ClientHello or GET / HTTP/1.1\r\n\r\n";

fn with_after(header: &[u8]) -> Vec<u8> {
    [header, AFTER].concat()
}

fn v2(addresses: (SocketAddr, SocketAddr), tlv: bool) -> Vec<u8> {
    let mut b = v2::Builder::with_addresses(
        v2::Version::Two | v2::Command::Proxy,
        v2::Protocol::Stream,
        addresses,
    );
    if tlv {
        b = b.write_tlv(v2::Type::Authority, b"example.com").unwrap();
    }
    b.build().unwrap()
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[tokio::test]
async fn v1_tcp4_and_tcp6_whole_and_byte_by_byte() {
    let cases = [
        (
            &b"PROXY TCP4 192.0.2.1 198.51.100.2 50000 443\r\n"[..],
            ("192.0.2.1:50000", "198.51.100.2:443"),
        ),
        (
            b"PROXY TCP6 2001:db8::1 2001:db8::2 4000 80\r\n",
            ("[2001:db8::1]:4000", "[2001:db8::2]:80"),
        ),
    ];
    for (header, (src, dst)) in cases {
        for one_by_one in [false, true] {
            let (r, rest) = read(&with_after(header), one_by_one).await;
            let c = r.unwrap().unwrap();
            assert_eq!((c.source, c.destination), (addr(src), addr(dst)));
            assert_eq!(rest, AFTER, "the bytes after the header stay unread");
        }
    }
}

#[tokio::test]
async fn v2_tcp4_tcp6_with_tlvs_byte_by_byte() {
    let cases = [
        ("10.1.2.3:1234", "10.0.0.1:8443"),
        ("[2001:db8::7]:65535", "[2001:db8::1]:443"),
    ];
    for (src, dst) in cases {
        for tlv in [false, true] {
            let header = v2((addr(src), addr(dst)), tlv);
            for one_by_one in [false, true] {
                let (r, rest) = read(&with_after(&header), one_by_one).await;
                let c = r.unwrap().unwrap();
                assert_eq!((c.source, c.destination), (addr(src), addr(dst)));
                assert_eq!(rest, AFTER);
            }
        }
    }
}

#[tokio::test]
async fn local_and_unknown_keep_the_peer_address() {
    let local = v2::Builder::new(
        v2::Version::Two | v2::Command::Local,
        v2::AddressFamily::Unspecified | v2::Protocol::Unspecified,
    )
    .build()
    .unwrap();
    for header in [&local[..], b"PROXY UNKNOWN\r\n"] {
        let (r, rest) = read(&with_after(header), false).await;
        assert_eq!(r.unwrap(), None);
        assert_eq!(rest, AFTER);
    }
    // Only the header itself, nothing after: nothing else is waited for.
    let (r, rest) = read(&local, true).await;
    assert_eq!(r.unwrap(), None);
    assert!(rest.is_empty());
}

#[tokio::test]
async fn garbage_oversize_and_truncated_headers_are_refused() {
    let too_long_v1 = [b"PROXY TCP4 ".as_slice(), &[b'1'; 120]].concat();
    let mut too_long_v2 = v2((addr("10.0.0.1:1"), addr("10.0.0.2:2")), false);
    too_long_v2[14..16].copy_from_slice(&((V2_MAX_PAYLOAD + 1) as u16).to_be_bytes());
    // The variant's name, as Debug prints it.
    let cases: [(&[u8], &str); 7] = [
        (b"GET / HTTP/1.1\r\n\r\n", "NotProxy"),
        (b"PUT / HTTP/1.1\r\n\r\n", "NotProxy"),
        (b"\x16\x03\x01\x02\x00", "NotProxy"),
        (&too_long_v1, "TooLong"),
        (&too_long_v2, "TooLong"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "Invalid"),
        (b"PROXY TCP4 1.2.3.4 nonsense 1 2\r\n", "Invalid"),
    ];
    for (bytes, expected) in cases {
        let (r, _) = read(bytes, false).await;
        let e = format!("{:?}", r.unwrap_err());
        assert!(
            e.starts_with(expected),
            "{:?}: {e}",
            String::from_utf8_lossy(bytes)
        );
    }
    // Cut short by the client's close.
    let (r, _) = read(b"PROXY TCP4 1.2.3.4", true).await;
    assert!(matches!(r, Err(Refused::Closed)), "{r:?}");
}

#[tokio::test]
async fn a_silent_or_slow_client_times_out_and_an_untrusted_peer_is_refused() {
    let (mut server, peer, mut client) = pair().await;
    client.write_all(b"PROXY TCP4 ").await.unwrap();
    let started = Instant::now();
    let deadline = started + Duration::from_millis(200);
    let r = AcceptProxy::default()
        .read(&mut server, peer, deadline)
        .await;
    assert!(matches!(r, Err(Refused::Timeout)), "{r:?}");
    assert!(started.elapsed() < Duration::from_secs(2));

    let (mut server, peer, mut client) = pair().await;
    client
        .write_all(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n")
        .await
        .unwrap();
    let only_others = AcceptProxy {
        trusted: vec!["10.0.0.0/8".parse().unwrap()],
    };
    let r = only_others
        .read(&mut server, peer, Instant::now() + Duration::from_secs(5))
        .await;
    assert!(matches!(r, Err(Refused::Untrusted)), "{r:?}");
}

#[test]
fn framing_takes_only_header_bytes() {
    assert_eq!(frame(b"P").unwrap(), Frame::More);
    assert_eq!(frame(b"PROXY TCP4 1.2").unwrap(), Frame::More);
    assert_eq!(frame(b"PROXY UNKNOWN\r").unwrap(), Frame::More);
    assert_eq!(frame(b"PROXY UNKNOWN\r\nGET").unwrap(), Frame::Complete(15));
    assert_eq!(frame(b"\r\n\r\n\0").unwrap(), Frame::More);
    let h = v2((addr("10.0.0.1:1"), addr("10.0.0.2:2")), false);
    assert_eq!(frame(&h[..15]).unwrap(), Frame::More);
    assert_eq!(frame(&h[..16]).unwrap(), Frame::More);
    assert_eq!(frame(&h[..27]).unwrap(), Frame::More);
    assert_eq!(frame(&with_after(&h)).unwrap(), Frame::Complete(28));
    assert!(matches!(frame(b"\r\n\r\nX"), Err(Refused::NotProxy)));
    assert!(matches!(frame(b"PROXX"), Err(Refused::NotProxy)));
}
