//! Connecting the processes of a timely cluster.
//!
//! Timely's own connection code (`timely_communication::networking::create_sockets`) prints its
//! progress and retries on stdout (`awaiting connections (at 0/1)`, `error connecting to worker
//! 0 …; retrying`), where they mix with the answers. This module makes the same connections the
//! same way — process `i` connects to every process below it and sends its index as a
//! big-endian `u64`, and accepts a connection from every process above it — and reports on
//! stderr through `tracing`; the sockets are then handed to timely's
//! `initialize_networking_from_sockets`, so the cluster itself is timely's, unchanged.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use timely::communication::allocator::zero_copy::initialize::initialize_networking_from_sockets;
use timely::communication::allocator::{AllocatorBuilder, ProcessBuilder};

/// How often a process that is still waiting for its peers says so (on stderr).
const REPORT_EVERY: Duration = Duration::from_secs(10);

/// Reads a hosts file: one `host:port` per process, in process order (line *i* is process
/// *i*); blank lines and lines starting with `#` are skipped.
///
/// # Errors
/// The file cannot be read.
pub fn read_hosts(path: &std::path::Path) -> io::Result<Vec<String>> {
    let text = std::fs::read_to_string(path)?;
    Ok(text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(String::from).collect())
}

/// Connects process `me` of the cluster whose processes listen on `addresses` (`host:port`,
/// one per process, in process order). Returns one socket per process (`None` for `me`).
/// Waits as long as it takes for the other processes to start; says on stderr every 10 s
/// which ones it is still waiting for.
///
/// # Errors
/// An I/O error binding `addresses[me]`, or reading a peer's index.
pub fn connect(addresses: &[String], me: usize) -> io::Result<Vec<Option<TcpStream>>> {
    let listener = TcpListener::bind(&addresses[me])
        .map_err(|e| io::Error::new(e.kind(), format!("listening on {}: {e}", addresses[me])))?;
    let higher = addresses.len() - me - 1;
    let accept = std::thread::spawn(move || -> io::Result<Vec<TcpStream>> {
        let mut accepted: Vec<Option<TcpStream>> = (0..higher).map(|_| None).collect();
        let mut waiting = higher;
        listener.set_nonblocking(true)?;
        let mut last_report = Instant::now();
        while waiting > 0 {
            let mut stream = match listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if last_report.elapsed() >= REPORT_EVERY {
                        let missing: Vec<usize> =
                            (0..higher).filter(|&slot| accepted[slot].is_none()).map(|slot| me + 1 + slot).collect();
                        tracing::warn!(process = me, ?missing, "still waiting for processes to connect");
                        last_report = Instant::now();
                    }
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
                Err(e) => return Err(e),
            };
            stream.set_nonblocking(false)?;
            stream.set_nodelay(true)?;
            let mut index = [0u8; 8];
            stream.read_exact(&mut index)?;
            let index = u64::from_be_bytes(index) as usize;
            match index.checked_sub(me + 1).and_then(|slot| accepted.get_mut(slot)) {
                Some(slot @ None) => {
                    tracing::info!(process = me, from = index, "connection from process");
                    *slot = Some(stream);
                    waiting -= 1;
                }
                _ => tracing::warn!(process = me, from = index, "ignored a connection from an unexpected process"),
            }
        }
        Ok(accepted.into_iter().flatten().collect())
    });
    let mut sockets: Vec<Option<TcpStream>> = Vec::with_capacity(addresses.len());
    for (index, address) in addresses.iter().enumerate().take(me) {
        let mut last_report = Instant::now();
        let stream = loop {
            match TcpStream::connect(address) {
                Ok(mut stream) => {
                    stream.set_nodelay(true)?;
                    stream.write_all(&(me as u64).to_be_bytes())?;
                    break stream;
                }
                Err(error) => {
                    if last_report.elapsed() >= REPORT_EVERY {
                        tracing::warn!(process = me, to = index, %address, %error, "still waiting for process");
                        last_report = Instant::now();
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        };
        tracing::info!(process = me, to = index, "connected to process");
        sockets.push(Some(stream));
    }
    sockets.push(None);
    let accepted = accept.join().map_err(|_| io::Error::other("the accepting thread panicked"))??;
    sockets.extend(accepted.into_iter().map(Some));
    Ok(sockets)
}

/// The allocators of a cluster process with `threads` workers, connected as [`connect`] does,
/// for `timely::execute::execute_from`; the second value keeps the network threads alive.
///
/// # Errors
/// A connection error (see [`connect`]), or timely failing to set up its network threads.
pub fn allocators(
    addresses: &[String],
    me: usize,
    threads: usize,
) -> io::Result<(Vec<AllocatorBuilder>, Box<dyn std::any::Any + Send>)> {
    let sockets = connect(addresses, me)?;
    let hooks = timely::communication::Hooks::default();
    let processes = ProcessBuilder::new_typed_vector(threads, hooks.refill.clone(), hooks.spill.clone());
    let (builders, guard) = initialize_networking_from_sockets(processes, sockets, me, threads, hooks)?;
    Ok((builders.into_iter().map(AllocatorBuilder::Tcp).collect(), Box::new(guard)))
}
