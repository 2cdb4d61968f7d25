//! Helpers shared by the tests that run the `aimatrix` binary: its output, TLS certificates.

use std::io::{BufRead, BufReader};
use std::process::Child;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The lines `child` prints on stdout, as they come (read on a thread of their own).
pub fn stdout_lines(child: &mut Child) -> mpsc::Receiver<String> {
    let stdout = child.stdout.take().expect("stdout is piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits (at most 60 s) for a line containing `want`; returns the lines seen up to it.
///
/// # Panics
/// When no such line comes within 60 s (the test fails, showing what was printed).
pub fn wait_for(rx: &mpsc::Receiver<String>, want: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = String::new();
    while Instant::now() < deadline {
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
            seen.push_str(&l);
            seen.push('\n');
            if l.contains(want) {
                return seen;
            }
        }
    }
    panic!("no answer containing {want} within 60 s; saw:\n{seen}");
}

/// A certificate authority and a server certificate it signed for `localhost` and 127.0.0.1
/// (rcgen), written as PEM files: `(ca.pem, server.pem, server.key)`.
pub fn certificates(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let ca_key = rcgen::KeyPair::generate().expect("a key");
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name.push(rcgen::DnType::CommonName, "AIMatrix test CA");
    let ca_cert = ca.self_signed(&ca_key).expect("the CA");
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().expect("a key");
    let server = rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).expect("params");
    let cert = server.signed_by(&key, &issuer).expect("the server's certificate");
    let paths = (dir.join("ca.pem"), dir.join("server.pem"), dir.join("server.key"));
    std::fs::write(&paths.0, ca_cert.pem()).expect("written");
    std::fs::write(&paths.1, cert.pem()).expect("written");
    std::fs::write(&paths.2, key.serialize_pem()).expect("written");
    (paths.0, paths.1, paths.2)
}
