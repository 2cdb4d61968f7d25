//! Helpers shared by the tests that run the `aimatrix` binary with `--follow`.

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
