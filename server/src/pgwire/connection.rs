//! One pgwire connection's message loop: `pgwire::tokio::process_socket`'s (pgwire 0.42), with
//! the decoding of each frontend message contained.
//!
//! The `pgwire` crate decodes some messages with unchecked reads: a `Bind` cut short panics in
//! `bytes` (`advance out of bounds`), and the server's panic hook ends the process on any
//! panic (a bug in the engine must not leave a half-applied state behind). A malformed message
//! from a client is not a bug in the engine, so the decoding — and nothing else — runs with a
//! thread-local mark ([`decoding`]) that the hook reads: a panic there is reported as a
//! malformed message, caught, and ends only its connection. Everything else (authentication,
//! queries) runs as in `process_socket`, without the mark.

use std::cell::Cell;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::task::Poll;

use futures::StreamExt;
use pgwire::api::{ClientInfo, ErrorHandler, PgWireConnectionState, PgWireServerHandlers};
use pgwire::error::PgWireError;
use pgwire::messages::PgWireFrontendMessage;
use pgwire::tokio::server::{negotiate_tls, process_error, process_message};
use tokio::net::TcpStream;

thread_local! {
    static DECODING: Cell<bool> = const { Cell::new(false) };
}

/// Whether this thread is decoding a pgwire frontend message now: a panic there is a message
/// the `pgwire` crate could not decode, which ends its connection and nothing else (the
/// server's panic hook asks).
pub fn decoding() -> bool {
    DECODING.with(Cell::get)
}

/// How often a statement that streams to its client without reading from it (`COPY
/// (SUBSCRIBE …)`, a bare `SUBSCRIBE`) looks whether the client has hung up.
pub(super) const HANG_UP_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// The open connections' sockets (a duplicate of each descriptor, by the client's address), so
/// that a statement which only writes can tell whether its client has gone: a subscription
/// whose view is quiet writes nothing, and would otherwise hold its session and its dataflow
/// until the view changes twice (the first write to a closed socket succeeds).
#[derive(Clone, Default)]
pub(super) struct Sockets(Arc<Mutex<HashMap<SocketAddr, OwnedFd>>>);

impl Sockets {
    /// Whether the client at `peer` has closed its side of the connection, or the connection
    /// failed (`poll(2)`: `POLLRDHUP`, `POLLHUP` or `POLLERR`). False for a peer not known.
    pub(super) fn hung_up(&self, peer: SocketAddr) -> bool {
        use rustix::event::{PollFd, PollFlags, Timespec};
        let sockets = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let Some(fd) = sockets.get(&peer) else { return false };
        let mut fds = [PollFd::new(fd, PollFlags::RDHUP)];
        match rustix::event::poll(&mut fds, Some(&Timespec { tv_sec: 0, tv_nsec: 0 })) {
            Ok(_) => fds[0].revents().intersects(PollFlags::RDHUP | PollFlags::HUP | PollFlags::ERR),
            Err(_) => false,
        }
    }

    /// Registers `tcp`'s socket until the guard is dropped.
    fn register(&self, tcp: &TcpStream) -> Option<Registered> {
        let peer = tcp.peer_addr().ok()?;
        let fd = tcp.as_fd().try_clone_to_owned().ok()?;
        self.0.lock().unwrap_or_else(|p| p.into_inner()).insert(peer, fd);
        Some(Registered(self.clone(), peer))
    }
}

/// A socket in [`Sockets`], removed (and its duplicate closed) when dropped.
struct Registered(Sockets, SocketAddr);

impl Drop for Registered {
    fn drop(&mut self) {
        self.0.0.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.1);
    }
}

/// Marks the thread as decoding until dropped (also when a panic unwinds through it).
struct Decoding;

impl Decoding {
    fn enter() -> Decoding {
        DECODING.with(|d| d.set(true));
        Decoding
    }
}

impl Drop for Decoding {
    fn drop(&mut self) {
        DECODING.with(|d| d.set(false));
    }
}

/// The next frontend message: `None` once the client has closed; an error for a message that
/// does not decode, one whose decoding panicked included.
async fn next_message<S>(socket: &mut S) -> Option<Result<PgWireFrontendMessage, PgWireError>>
where
    S: futures::Stream<Item = Result<PgWireFrontendMessage, PgWireError>> + Unpin,
{
    std::future::poll_fn(|cx| {
        let _decoding = Decoding::enter();
        match std::panic::catch_unwind(AssertUnwindSafe(|| socket.poll_next_unpin(cx))) {
            Ok(poll) => poll,
            Err(_) => Poll::Ready(Some(Err(PgWireError::IoError(io::Error::new(
                io::ErrorKind::InvalidData,
                "a malformed frontend message",
            ))))),
        }
    })
    .await
}

/// Serves one connection as `pgwire::tokio::process_socket` does (TLS negotiated first when
/// `tls` is given; a `Terminate`, a fatal error or a cancel request ends it), until the client
/// closes it or sends a message that does not decode.
///
/// # Errors
/// An I/O error on the socket (the TLS handshake included).
///
/// An `Execute`'s row limit is read as PostgreSQL reads it — 0 or less: no limit — and one
/// above `max_rows` (the server's `sql.max_result_rows`, which no answer passes; 1,048,576 when
/// unlimited) is no limit either, so that the `pgwire` crate never reserves room for that many rows (a limit of -1
/// became `usize::MAX` there and stopped the server).
pub(super) async fn process_socket<H: PgWireServerHandlers>(
    tcp: TcpStream,
    tls: Option<pgwire::tokio::TlsAcceptor>,
    handlers: Arc<H>,
    max_rows: u64,
    sockets: &Sockets,
) -> io::Result<()> {
    let peer = tcp.peer_addr().ok();
    let _registered = sockets.register(&tcp);
    let Some(mut socket) = negotiate_tls(tcp, tls).await? else {
        // A direct TLS handshake, and no certificate configured.
        return Ok(());
    };
    let startup_handler = handlers.startup_handler();
    let simple_query_handler = handlers.simple_query_handler();
    let extended_query_handler = handlers.extended_query_handler();
    let copy_handler = handlers.copy_handler();
    let cancel_handler = handlers.cancel_handler();
    let error_handler = handlers.error_handler();
    loop {
        let mut message = match next_message(&mut socket).await {
            Some(Ok(message)) => message,
            Some(Err(e)) => {
                tracing::info!(?peer, error = %e, "pgwire: a message that does not decode; the connection is closed");
                break;
            }
            None => break,
        };
        // The client disconnects: close (some clients wait for it).
        if matches!(message, PgWireFrontendMessage::Terminate(_)) {
            break;
        }
        if let PgWireFrontendMessage::Execute(execute) = &mut message
            && u64::try_from(execute.max_rows).map_or(true, |n| n > max_rows)
        {
            execute.max_rows = 0;
        }
        let is_extended_query = match socket.state() {
            PgWireConnectionState::CopyInProgress(is_extended_query) => is_extended_query,
            _ => message.is_extended_query(),
        };
        let is_cancel_request = matches!(message, PgWireFrontendMessage::CancelRequest(_));
        if let Err(mut e) = process_message(
            message,
            &mut socket,
            startup_handler.clone(),
            simple_query_handler.clone(),
            extended_query_handler.clone(),
            copy_handler.clone(),
            cancel_handler.clone(),
        )
        .await
        {
            error_handler.on_error(&socket, &mut e);
            let is_fatal = e.is_fatal();
            process_error(&mut socket, e, is_extended_query).await?;
            if is_fatal {
                break;
            }
        }
        if is_cancel_request {
            break;
        }
    }
    Ok(())
}
