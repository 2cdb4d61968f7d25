//! Helpers shared by the tests that run the `aimatrix` binary: its output, TLS certificates.

use std::io::{BufRead, BufReader};
use std::process::Child;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A TCP port free on 127.0.0.1 for a server that must be told its port in advance (the
/// hosts of a timely cluster, a broker). Taken below the kernel's ephemeral range
/// (`net.ipv4.ip_local_port_range`, 32768–60999 by default), where no `bind(…:0)` of another
/// test lands, and handed out once per test process (from an offset by process id), so two
/// tests running side by side never draw the same port. Servers that report their address
/// listen on port 0 instead.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    let low = ephemeral_low.saturating_sub(12_000).max(1024);
    let span = ephemeral_low - low;
    let start = std::process::id() % span;
    for _ in 0..span {
        let port = low + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
        if std::net::TcpListener::bind(("127.0.0.1", port as u16)).is_ok() {
            return port as u16;
        }
    }
    panic!("no free port in {low}..{ephemeral_low}");
}

/// The pgwire port in `aimatrix serve`'s startup line (`…; pgwire on 127.0.0.1:PORT (psql …)`),
/// if it listens for pgwire. Tests listen on port 0 and read the port here: a port picked
/// free beforehand can be taken by another test's server before this one binds it.
pub fn pgwire_port(line: &str) -> Option<u16> {
    let at = line.find("pgwire on ")?;
    let address = line[at + "pgwire on ".len()..].split_whitespace().next()?;
    address.parse::<std::net::SocketAddr>().ok().map(|a| a.port())
}

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

/// Runs the console's browser test (`tests/console_browser.py`, Selenium driving Debian's
/// chromium) against the server at `base`, with its screenshots in the target's test directory
/// under `shots`; `args` go after those (a reader's token), `env` into its environment. Asserts
/// that every check passed. Skipped (said on stderr) when chromedriver is missing outside CI,
/// which scripts/test.sh installs as root; in CI (`CI` set) a missing one fails the test.
pub fn console_browser_test(base: &str, shots: &str, args: &[&str], env: &[(&str, String)]) {
    let driver = std::env::var("AIMATRIX_CHROMEDRIVER").unwrap_or_else(|_| "/usr/bin/chromedriver".into());
    if !std::path::Path::new(&driver).exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{driver} is missing: scripts/test.sh installs chromium and chromium-driver (as root)"
        );
        eprintln!("skipped: {driver} is missing (scripts/test.sh installs chromium and chromium-driver as root)");
        return;
    }
    let python = std::env::var("AIMATRIX_PYTHON").unwrap_or_else(|_| "/var/tmp/aimatrix-venv/bin/python".into());
    let out = std::process::Command::new(python)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/console_browser.py"))
        .arg(base)
        .arg(std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(shots))
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the console's browser test failed:\n{stdout}");
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
}
