//! `plugboard check` on TLS settings, with certificates made by openssl: every bad case is
//! refused at the line of its setting, and certificates that expire soon or names no
//! certificate covers are warned about.

mod common;

use std::path::Path;

use common::tls::{Ca, KeyType};
use common::*;

/// Runs `check` on `text` (written into `dir`): exit code, stdout, stderr with the path
/// replaced by `F`.
fn check_in(dir: &Path, text: &str) -> (i32, String, String) {
    let path = dir.join("p.toml");
    std::fs::write(&path, text).unwrap();
    let out = std::process::Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let f = path.display().to_string();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).replace(&f, "F"),
        String::from_utf8_lossy(&out.stderr).replace(&f, "F"),
    )
}

/// One http service on 127.0.0.1:1 with `extra` (certificate tables and so on).
fn service(name: &str, listen: &str, extra: &str) -> String {
    format!(
        "[[service]]\nname = \"{name}\"\nlisten = \"{listen}\"\n{extra}\n[[service.backend]]\naddress = \"127.0.0.1:9\"\n"
    )
}

#[test]
fn good_certificates_pass_in_every_form() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path());
    let rsa = ca.issue("rsa", &["mail.example.com"], KeyType::Rsa, 365);
    let ec = ca.issue("ec", &["*.example.org"], KeyType::Ecdsa, 365);
    let lync = ca.issue("lync", &["lync.example.com"], KeyType::Rsa, 365);
    let legacy = ca.pfx(&lync, "legacy", "s3cret", true, true);
    let aes = ca.pfx(&lync, "aes", "s3cret", false, true);
    std::fs::write(dir.path().join("pass"), "s3cret\n").unwrap();
    let text = service(
        "owa",
        "127.0.0.1:1",
        &format!(
            "tls = {{ min_version = \"1.3\", alpn = [\"http/1.1\"] }}\n\
             [[service.certificate]]\ncert = \"{}\"\nkey = \"{}\"\nchain = \"{}\"\n\
             [[service.certificate]]\ncert = \"{}\"\nkey = \"{}\"\n\
             [[service.certificate]]\npfx = \"{}\"\npassword_file = \"pass\"\n\
             [[service.certificate]]\npfx = \"{}\"\npassword_file = \"pass\"\nchain = \"{}\"\n",
            rsa.cert.display(),
            rsa.key.display(),
            ca.cert.display(),
            ec.cert.display(),
            ec.key.display(),
            legacy.display(),
            aes.display(),
            ca.cert.display()
        ),
    );
    let (code, out, err) = check_in(dir.path(), &text);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!err.contains("warning"), "{err}");
}

#[test]
fn every_bad_certificate_is_refused_at_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path());
    let a = ca.issue("a", &["a.example.com"], KeyType::Ecdsa, 365);
    let b = ca.issue("b", &["b.example.com"], KeyType::Ecdsa, 365);
    let pfx = ca.pfx(&a, "a", "right", true, true);
    let nokey = ca.pfx(&a, "nokey", "right", false, false);
    std::fs::write(dir.path().join("wrong"), "wrong\n").unwrap();
    std::fs::write(dir.path().join("right"), "right\n").unwrap();
    let cert =
        |c: &str, k: &str| format!("[[service.certificate]]\ncert = \"{c}\"\nkey = \"{k}\"\n");
    let text = [
        // Line 1: an unreadable certificate file.
        service(
            "s1",
            "127.0.0.1:1",
            &cert("missing.pem", &a.key.display().to_string()),
        ),
        // A key that belongs to another certificate.
        service(
            "s2",
            "127.0.0.1:2",
            &cert(&a.cert.display().to_string(), &b.key.display().to_string()),
        ),
        // A PFX with the wrong password.
        service(
            "s3",
            "127.0.0.1:3",
            &format!(
                "[[service.certificate]]\npfx = \"{}\"\npassword_file = \"wrong\"\n",
                pfx.display()
            ),
        ),
        // A PFX without a private key.
        service(
            "s4",
            "127.0.0.1:4",
            &format!(
                "[[service.certificate]]\npfx = \"{}\"\npassword_file = \"right\"\n",
                nokey.display()
            ),
        ),
        // Neither form.
        service(
            "s5",
            "127.0.0.1:5",
            "[[service.certificate]]\nchain = \"x.pem\"\n",
        ),
        // tls tuning without a certificate.
        service("s6", "127.0.0.1:6", "tls = { min_version = \"1.3\" }"),
        // A bad version and protocol.
        service(
            "s7",
            "127.0.0.1:7",
            &format!(
                "tls = {{ min_version = \"1.1\", alpn = [\"spdy/3\"] }}\n{}",
                cert(&a.cert.display().to_string(), &a.key.display().to_string())
            ),
        ),
    ]
    .concat();
    let (code, out, err) = check_in(dir.path(), &text);
    assert_eq!(code, 2, "{out}{err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.contains("warning")).collect();
    let expect = [
        ("F:5:8: certificate.cert: cannot read", ""),
        (
            "F:15:7: certificate.key: ",
            "does not belong to the certificate",
        ),
        ("F:24:17: certificate.password_file: ", "wrong password"),
        ("F:32:7: certificate.pfx: ", "no private key"),
        ("F:40:1: certificate: give either cert and key", ""),
        ("F:48:7: tls: a service that terminates TLS needs", ""),
        ("F:54:23: tls.min_version: \"1.1\"", ""),
        ("F:54:37: tls.alpn: \"spdy/3\"", ""),
    ];
    assert_eq!(lines.len(), expect.len(), "{err}");
    for (l, (start, has)) in lines.iter().zip(expect) {
        assert!(
            l.starts_with(start) && l.contains(has),
            "{l:?} should start with {start:?} and contain {has:?}\n{err}"
        );
    }
}

#[test]
fn soon_expiring_certificates_and_uncovered_names_are_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path());
    let soon = ca.issue("soon", &["mail.example.com"], KeyType::Ecdsa, 10);
    let text = service(
        "owa",
        "127.0.0.1:1",
        &format!(
            "match = {{ hosts = [\"mail.example.com\", \"autodiscover.example.com\"] }}\n[[service.certificate]]\ncert = \"{}\"\nkey = \"{}\"\n",
            soon.cert.display(),
            soon.key.display()
        ),
    );
    let (code, out, err) = check_in(dir.path(), &text);
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("F:4:9: warning: match.hosts: no certificate on this address covers \"autodiscover.example.com\""), "{err}");
    assert!(!err.contains("covers \"mail.example.com\""), "{err}");
    assert!(
        err.contains("F:6:8: warning: certificate expires in"),
        "{err}"
    );
}

#[test]
fn sharing_a_listen_address_needs_match_http_and_the_same_tls() {
    let dir = tempfile::tempdir().unwrap();
    let ok = [
        service("default", "127.0.0.1:1", ""),
        service(
            "owa",
            "127.0.0.1:1",
            "match = { path_prefixes = [\"/owa\"] }",
        ),
        service(
            "ews",
            "127.0.0.1:1",
            "match = { hosts = [\"ews.example.com\"], path_prefixes = [\"/EWS\"] }",
        ),
    ]
    .concat();
    let (code, out, err) = check_in(dir.path(), &ok);
    assert_eq!(code, 0, "{out}{err}");
    let bad = [
        service("a", "127.0.0.1:1", ""),
        service("b", "127.0.0.1:1", ""),
        service(
            "c",
            "127.0.0.1:1",
            "mode = \"tcp\"\nmatch = { hosts = [\"x\"] }",
        ),
        service("d", "127.0.0.1:1", "match = { hosts = [\"*.*.bad\"] }"),
    ]
    .concat();
    let (code, out, err) = check_in(dir.path(), &bad);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("F:9:10: duplicate listen address 127.0.0.1:1 (already used by service \"a\" on line 3)"), "{err}");
    assert!(err.contains("F:15:10: listen address 127.0.0.1:1 is shared with service \"a\" (line 3); only http services"), "{err}");
    assert!(err.contains("F:23:19: match.hosts: \"*.*.bad\""), "{err}");
}

#[test]
fn health_check_tls_follows_backend_tls_unless_told() {
    let dir = tempfile::tempdir().unwrap();
    let plain_check = "backend_tls = { verify = false }\nhealth_check = { kind = \"http\", port = 80, tls = false }";
    let (code, out, err) = check_in(dir.path(), &service("a", "127.0.0.1:1", plain_check));
    assert_eq!(code, 0, "{out}{err}");
    let bad = [
        service(
            "a",
            "127.0.0.1:1",
            "health_check = { kind = \"http\", tls = true }",
        ),
        service(
            "b",
            "127.0.0.1:2",
            "backend_tls = { verify = false }\nhealth_check = { kind = \"tcp\", tls = true }",
        ),
    ]
    .concat();
    let (code, out, err) = check_in(dir.path(), &bad);
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("F:4:39: health_check.tls = true needs backend_tls"),
        "{err}"
    );
    assert!(
        err.contains("F:11:38: health_check.tls only applies to kind = \"http\""),
        "{err}"
    );
}
