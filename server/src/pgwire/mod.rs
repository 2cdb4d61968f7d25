//! The PostgreSQL wire protocol (v3) front end of `aimatrix serve`, on the `pgwire` crate:
//! psql, drivers (tokio-postgres, psycopg, JDBC) and BI tools query the running cluster as
//! they would PostgreSQL.
//!
//! - **Queries** go to the engine's SQL ([`Controller::execute_sql_with`]): every relation
//!   and view, read at one timestamp; `CREATE`/`DROP MATERIALIZED VIEW`. Both the simple
//!   and the extended query protocol: prepared statements with parameters `$1`, `$2`, …
//!   (types inferred from the query, or as the client names them; values in text or binary
//!   format) and portals with row limits.
//! - **Types** are described with PostgreSQL's OIDs and encoded in text or binary as the
//!   client asks ([`types`]).
//! - **`SUBSCRIBE [TO] v [WITH (SNAPSHOT = false, PROGRESS)]`**, as Materialize defines it
//!   (<https://materialize.com/docs/sql/subscribe/>): columns `aimatrix_timestamp` (int8, ms
//!   since the Unix epoch), `aimatrix_progressed` (bool, only `WITH (PROGRESS)`),
//!   `aimatrix_diff` (int8), then the view's columns; through `COPY (SUBSCRIBE …) TO STDOUT`
//!   (each change flushed as it happens) or `DECLARE c CURSOR FOR SUBSCRIBE …` and
//!   `FETCH n c WITH (timeout = '1s')`. A progress row has NULL diff and columns.
//! - **Introspection**: `SHOW VIEWS | MATERIALIZED VIEWS | TABLES | SOURCES | JOBS`,
//!   `SHOW COLUMNS FROM v`, `SHOW setting`, and the `pg_catalog` / `information_schema`
//!   queries of psql's `\d`, `\dt`, `\dm` and of drivers at connect ([`catalog`]).
//! - `SET`/`RESET` (kept per session), `BEGIN`/`COMMIT`/`ROLLBACK` (a transaction is a group
//!   of reads; cursors close at its end), `DISCARD`, `DEALLOCATE` are acknowledged.
//!
//! Errors carry PostgreSQL's SQLSTATE codes: `42P01` unknown relation, `42P07` a name in
//! use, `42601` syntax and planning errors, `0A000` unsupported statements, `34000` unknown
//! cursor, `57014` a query past `sql.timeout_ms`.

pub mod catalog;
mod connection;
pub mod statement;
pub mod types;

use std::collections::{HashMap, VecDeque};
use std::fmt::Debug;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use amx_cluster::controller::{CatalogEntry, CollectionKind, JobInfo};
use amx_cluster::sql::PrepareSession;
use amx_cluster::{ClusterError, Controller, QueryExtras, SqlAnswer, SubscribeEvent, Subscription};
use amx_dataflows::row::Row;
use amx_sql::arrow::array::{ArrayRef, BooleanArray, Int64Array, StringArray, new_null_array};
use amx_sql::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use amx_sql::arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use datafusion::common::ScalarValue;
use futures::{Sink, SinkExt, StreamExt, stream};
use pgwire::api::auth::driver::AuthOutcome;
use pgwire::api::auth::mechanism::AuthMechanismFactory;
use pgwire::api::auth::sasl::scram::ScramAuth;
use pgwire::api::auth::{AuthDriver, DefaultServerParameterProvider, StartupHandler};
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{CopyEncoder, CopyResponse, CopyTextOptions, FieldInfo, QueryResponse, Response, Tag};
use pgwire::api::stmt::QueryParser;
use pgwire::api::store::PortalStore;
use pgwire::api::{ClientInfo, ClientPortalStore, PgWireServerHandlers, Type};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::copy::{CopyData, CopyDone, CopyOutResponse};
use pgwire::messages::response::NoticeResponse;
use pgwire::messages::response::TransactionStatus;
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use tracing::Instrument as _;

use crate::auth::{Authenticator, Principal, Role};
use statement::{CursorBody, Show, Statement, SubscribeSpec, Txn};

pub use connection::decoding;

/// The default pgwire address: this machine only, Materialize's port.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:6875";

/// The default of `pgwire.max_sessions`.
pub const DEFAULT_MAX_SESSIONS: usize = 256;

/// Serves pgwire on `listener` for `state`'s cluster until `shutdown` completes; each
/// connection runs in its own task (a broken or malformed connection ends only itself). At
/// most `max_sessions` connections are open at once: one more is answered `53300` `sorry, too
/// many clients already` and closed (counted in `aimatrix_pgwire_sessions_refused_total`).
///
/// # Errors
/// None once listening: accept errors (too many open files) are logged and retried.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: crate::AppState,
    max_sessions: usize,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let open_sessions = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let metrics = state.metrics();
    let max_rows = state.controller.sql_limits().max_result_rows.unwrap_or(1 << 20);
    let backend = Backend::new(state.controller, state.sql_timeout, metrics.clone());
    let tls = state.tls.as_ref().map(|t| tokio_rustls::TlsAcceptor::from(t.pgwire.clone()));
    let startup = Arc::new(Startup::new(state.auth.clone(), tls.is_some(), metrics.clone()));
    let handlers = Arc::new(Handlers { backend: Arc::new(backend), startup });
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok((socket, peer)) => {
                    if open_sessions.fetch_add(1, Ordering::SeqCst) >= max_sessions.max(1) {
                        open_sessions.fetch_sub(1, Ordering::SeqCst);
                        metrics.session_refused();
                        tracing::warn!(%peer, max_sessions, "pgwire: a connection refused: pgwire.max_sessions are open");
                        tokio::spawn(refuse(socket, max_sessions));
                        continue;
                    }
                    let handlers = handlers.clone();
                    let tls = tls.clone();
                    let open = metrics.session();
                    let open_sessions = open_sessions.clone();
                    tokio::spawn(async move {
                        let logged_in = handlers.startup.logged_in.clone();
                        let sockets = handlers.backend.sockets.clone();
                        let session = connection::process_socket(socket, tls, handlers, max_rows, &sockets);
                        tokio::pin!(session);
                        // A connection that has not logged in within LOGIN_TIMEOUT is closed,
                        // so that silent or stalled clients cannot hold every session slot.
                        let ended = tokio::select! {
                            ended = &mut session => Some(ended),
                            () = tokio::time::sleep(LOGIN_TIMEOUT) => None,
                        };
                        let ended = match ended {
                            Some(ended) => ended,
                            None if lock(&logged_in).contains(&peer) => session.await,
                            None => {
                                tracing::info!(%peer, "pgwire: a connection that did not log in within 10 s closed");
                                Ok(())
                            }
                        };
                        lock(&logged_in).remove(&peer);
                        if let Err(e) = ended {
                            tracing::debug!(%peer, error = %e, "pgwire connection ended with an error");
                        }
                        drop(open);
                        open_sessions.fetch_sub(1, Ordering::SeqCst);
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "pgwire: accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}

/// How long a connection may take to log in (startup, TLS, authentication) before it is
/// closed (PostgreSQL's `authentication_timeout` is 60 s; pgwire's own startup limit too).
const LOGIN_TIMEOUT: Duration = Duration::from_secs(10);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Answers a connection past `pgwire.max_sessions` as PostgreSQL answers one past
/// `max_connections`: reads its startup message (declining SSL or GSS encryption first, with
/// `N`), then sends an `ErrorResponse` (`FATAL`, `53300`, `sorry, too many clients already`)
/// and closes it. A client that sends nothing within 5 s is closed.
async fn refuse(mut socket: tokio::net::TcpStream, max_sessions: usize) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Protocol 3.0's codes for an SSLRequest and a GSSENCRequest (a length of 8).
    const ENCRYPTION_REQUESTS: [u32; 2] = [80_877_103, 80_877_104];
    let answered = async {
        for _ in 0..3 {
            let length = socket.read_u32().await? as usize;
            if !(8..=10_000).contains(&length) {
                return Ok(());
            }
            let mut body = vec![0; length - 4];
            socket.read_exact(&mut body).await?;
            let code = u32::from_be_bytes(body[..4].try_into().expect("4 bytes"));
            if length == 8 && ENCRYPTION_REQUESTS.contains(&code) {
                socket.write_all(b"N").await?;
                continue;
            }
            break;
        }
        let message = format!("sorry, too many clients already (pgwire.max_sessions = {max_sessions})");
        let mut fields = Vec::new();
        for (tag, value) in [(b'S', "FATAL"), (b'V', "FATAL"), (b'C', "53300"), (b'M', message.as_str())] {
            fields.push(tag);
            fields.extend_from_slice(value.as_bytes());
            fields.push(0);
        }
        fields.push(0);
        let mut response = vec![b'E'];
        response.extend_from_slice(&(fields.len() as u32 + 4).to_be_bytes());
        response.extend_from_slice(&fields);
        socket.write_all(&response).await?;
        socket.shutdown().await
    };
    let _: Result<std::io::Result<()>, _> = tokio::time::timeout(Duration::from_secs(5), answered).await;
}

/// The handlers `pgwire` calls for each connection.
struct Handlers {
    backend: Arc<Backend>,
    startup: Arc<Startup>,
}

impl PgWireServerHandlers for Handlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.backend.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.backend.clone()
    }

    fn startup_handler(&self) -> Arc<impl pgwire::api::auth::StartupHandler> {
        self.startup.clone()
    }

    fn cancel_handler(&self) -> Arc<impl pgwire::api::cancel::CancelHandler> {
        Arc::new(pgwire::api::cancel::DefaultCancelHandler::new(self.startup.connections.clone()))
    }
}

/// Starts each connection: authenticates it with SCRAM-SHA-256 when users are configured
/// ([`crate::auth`]; else every session may do everything), keeps its user in the session,
/// and registers it for cancel requests: a client's cancel (psql's Ctrl-C, a driver's
/// `cancel()`) ends the statement it runs — a query, or a `COPY (SUBSCRIBE …)` — with `57014
/// canceling statement due to user request`.
struct Startup {
    connections: Arc<pgwire::api::ConnectionManager>,
    driver: AuthDriver<SessionParameters, Principal>,
    /// SCRAM over the configured users (`None`: authentication off).
    scram: Option<ScramAuth<Principal>>,
    /// Refuse sessions that did not start TLS (the server has a certificate).
    require_tls: bool,
    /// The peers of the connections that have logged in (see [`LOGIN_TIMEOUT`]).
    logged_in: Arc<Mutex<std::collections::HashSet<std::net::SocketAddr>>>,
    metrics: Arc<crate::metrics::Metrics>,
}

impl Startup {
    fn new(auth: Option<Arc<Authenticator>>, require_tls: bool, metrics: Arc<crate::metrics::Metrics>) -> Startup {
        let connections = Arc::new(pgwire::api::ConnectionManager::new());
        let driver = AuthDriver::new(SessionParameters(DefaultServerParameterProvider::default()))
            .with_connection_manager(connections.clone());
        let scram = auth.map(|a| ScramAuth::new(Arc::new(crate::auth::ScramSource(a))));
        Startup { connections, driver, scram, require_tls, logged_in: Default::default(), metrics }
    }
}

#[async_trait]
impl StartupHandler for Startup {
    async fn on_startup<C>(&self, client: &mut C, message: PgWireFrontendMessage) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: std::fmt::Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match message {
            PgWireFrontendMessage::Startup(ref startup) => {
                pgwire::api::auth::protocol_negotiation(client, startup).await?;
                pgwire::api::auth::save_startup_parameters_to_metadata(client, startup);
                if self.require_tls && !client.is_secure() {
                    // As PostgreSQL answers a session no `hostssl` line admits (psql's
                    // `sslmode=disable`).
                    return Err(PgWireError::UserError(Box::new(ErrorInfo::new(
                        "FATAL".into(),
                        "28000".into(),
                        "this server takes only encrypted sessions (TLS): connect with sslmode=require or stronger"
                            .into(),
                    ))));
                }
                match &self.scram {
                    Some(scram) => {
                        self.driver.begin_authentication(client, scram.create()).await?;
                    }
                    None => {
                        // No users configured: every session may do everything.
                        client.session_extensions().insert(Principal { name: client_user(client), role: Role::Admin });
                        self.driver.complete_authentication(client, None).await?;
                        lock(&self.logged_in).insert(client.socket_addr());
                    }
                }
            }
            PgWireFrontendMessage::PasswordMessageFamily(message) => {
                match self.driver.advance_authentication(client, message).await {
                    Ok(AuthOutcome::Authenticated { identity: Some(principal), final_message }) => {
                        tracing::debug!(user = ?principal.name, role = %principal.role, "pgwire: authenticated");
                        client.session_extensions().insert(principal);
                        self.driver.complete_authentication(client, final_message).await?;
                        lock(&self.logged_in).insert(client.socket_addr());
                    }
                    Ok(AuthOutcome::Authenticated { identity: None, .. }) => {
                        // Cannot happen: the made-up verifier of an unknown user matches no proof.
                        self.metrics.auth_refused(crate::metrics::Interface::Pgwire, "unauthenticated");
                        return Err(PgWireError::InvalidPassword(client_user(client)));
                    }
                    Ok(AuthOutcome::InProgress) => {}
                    Err(e) => {
                        self.metrics.auth_refused(crate::metrics::Interface::Pgwire, "unauthenticated");
                        let user = client_user(client);
                        tracing::info!(?user, peer = %client.socket_addr(), "pgwire: authentication failed");
                        // One answer for a wrong password and an unknown user: PostgreSQL's.
                        return Err(match e {
                            PgWireError::InvalidPassword(_) | PgWireError::InvalidScramMessage(_) => {
                                PgWireError::UserError(Box::new(ErrorInfo::new(
                                    "FATAL".into(),
                                    "28P01".into(),
                                    format!("password authentication failed for user \"{user}\""),
                                )))
                            }
                            e => e,
                        });
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// The parameters a session starts with (PostgreSQL's `ParameterStatus`): pgwire's defaults,
/// with `is_superuser` `on` only for a user of role `admin` (drivers and tools read it).
struct SessionParameters(DefaultServerParameterProvider);

impl pgwire::api::auth::ServerParameterProvider for SessionParameters {
    fn server_parameters<C>(&self, client: &C) -> Option<HashMap<String, String>>
    where
        C: ClientInfo,
    {
        let mut parameters = self.0.server_parameters(client)?;
        let admin = client.session_extensions().get::<Principal>().is_some_and(|p| p.role == Role::Admin);
        parameters.insert("is_superuser".into(), if admin { "on" } else { "off" }.into());
        Some(parameters)
    }
}

/// The user name a client gave at startup (`""` if none).
fn client_user(client: &impl ClientInfo) -> String {
    client.metadata().get(pgwire::api::METADATA_USER).cloned().unwrap_or_default()
}

/// Why this session may not run `CREATE`/`DROP MATERIALIZED VIEW` (`None`: it may).
fn views_refused(client: &impl ClientInfo) -> Option<String> {
    match client.session_extensions().get::<Principal>() {
        Some(principal) => principal.denied(Role::Admin, "CREATE or DROP MATERIALIZED VIEW"),
        None => Some("permission denied: the session is not authenticated".into()),
    }
}

/// What every connection shares: the cluster and the query timeout.
struct Backend {
    controller: Controller,
    timeout: Duration,
    parser: Arc<Parser>,
    metrics: Arc<crate::metrics::Metrics>,
    /// The connections' sockets, to notice a subscriber that hung up.
    sockets: connection::Sockets,
}

impl Backend {
    fn new(controller: Controller, timeout: Duration, metrics: Arc<crate::metrics::Metrics>) -> Backend {
        let parser = Arc::new(Parser { controller: controller.clone(), metrics: metrics.clone() });
        Backend { parser, controller, timeout, metrics, sockets: Default::default() }
    }
}

/// The error that ends a statement whose client hung up (nobody reads it).
fn hung_up() -> PgWireError {
    PgWireError::IoError(std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client closed the connection"))
}

/// A statement prepared by the extended protocol: what it is, and its shape.
#[derive(Clone, Debug)]
pub struct Prepared {
    /// Its text, as sent.
    text: String,
    statement: Statement,
    /// Its answer's columns (`None`: it answers with a tag only).
    schema: Option<SchemaRef>,
    /// The Arrow type of each parameter (`None`: not fixed by the query).
    params: Vec<Option<DataType>>,
}

/// Plans statements for the extended protocol.
struct Parser {
    controller: Controller,
    metrics: Arc<crate::metrics::Metrics>,
}

// ---------------------------------------------------------------------------------------
// Errors

fn error_info(code: &str, message: impl Into<String>) -> ErrorInfo {
    ErrorInfo::new("ERROR".into(), code.into(), message.into())
}

fn user_error(code: &str, message: impl Into<String>) -> PgWireError {
    PgWireError::UserError(Box::new(error_info(code, message)))
}

/// Whether two answers have the same column names and types (nullability aside).
fn same_columns(a: &SchemaRef, b: &SchemaRef) -> bool {
    let columns = |s: &SchemaRef| -> Vec<(String, DataType)> {
        s.fields().iter().map(|f| (f.name().clone(), f.data_type().clone())).collect()
    };
    columns(a) == columns(b)
}

fn cluster_error(e: ClusterError) -> PgWireError {
    let code = match &e {
        ClusterError::UnknownCollection(_) => "42P01",
        ClusterError::Conflict(_) => "42P07",
        ClusterError::Sql(message) => sql_state(message),
        ClusterError::Stopped => "57P01",
        ClusterError::Timeout(_) => "57014",
        ClusterError::Limit(_) => "54000",
        ClusterError::Forbidden(_) => "42501",
        // A request the server does not take (a subscription to an introspection relation).
        ClusterError::BadRequest(_) => "0A000",
        _ => "XX000",
    };
    user_error(code, e.to_string())
}

/// The SQLSTATE of a SQL error, from its message (DataFusion's errors carry no codes): as
/// PostgreSQL would answer — `42P01` undefined table, `42703` undefined column, `42883`
/// undefined function, `22012` division by zero, `22P02`/`22003` a bad or out-of-range value,
/// `54000` a limit, else `42601` (syntax or planning).
fn sql_state(message: &str) -> &'static str {
    let m = message.to_ascii_lowercase();
    if m.contains("table '") && m.contains("not found") {
        "42P01"
    } else if m.contains("no field named") || m.contains("schema error: no field") {
        "42703"
    } else if m.contains("invalid function") {
        "42883"
    } else if m.contains("divide by zero") || m.contains("division by zero") {
        "22012"
    } else if m.contains("overflow") || m.contains("out of range") {
        "22003"
    } else if m.contains("cannot cast") || m.contains("cast error") {
        "22P02"
    } else if m.contains("sql.max_result") || m.contains("resources exhausted") {
        "54000"
    } else {
        "42601"
    }
}

fn unsupported(message: String) -> PgWireError {
    user_error(if message.contains("not supported") { "0A000" } else { "42601" }, message)
}

fn notice(message: String) -> PgWireBackendMessage {
    PgWireBackendMessage::NoticeResponse(NoticeResponse::from(ErrorInfo::new("NOTICE".into(), "00000".into(), message)))
}

// ---------------------------------------------------------------------------------------
// Sessions

/// A connection's state: its cursors and settings.
#[derive(Default)]
struct Session {
    cursors: tokio::sync::Mutex<HashMap<String, Cursor>>,
    settings: Mutex<HashMap<String, String>>,
    /// Inside `BEGIN` … `COMMIT`/`ROLLBACK`.
    explicit_block: AtomicBool,
    /// Running a simple query of several statements: PostgreSQL's implicit transaction block,
    /// whose cursors close when the query string ends.
    implicit_block: AtomicBool,
}

fn session<C: ClientInfo>(client: &C) -> Arc<Session> {
    client.session_extensions().get_or_insert_with(Session::default)
}

/// The settings `SHOW` knows, with their values until a `SET`.
const SETTINGS: &[(&str, &str)] = &[
    ("application_name", ""),
    ("client_encoding", "UTF8"),
    ("client_min_messages", "notice"),
    ("datestyle", "ISO, MDY"),
    ("default_transaction_isolation", "serializable"),
    ("extra_float_digits", "1"),
    ("integer_datetimes", "on"),
    ("intervalstyle", "postgres"),
    ("is_superuser", "off"),
    ("lc_collate", "C"),
    ("lc_ctype", "C"),
    ("max_identifier_length", "63"),
    ("search_path", "public"),
    ("server_encoding", "UTF8"),
    ("server_version", "16.6"),
    ("server_version_num", "160006"),
    ("standard_conforming_strings", "on"),
    ("statement_timeout", "0"),
    ("timezone", "UTC"),
    ("transaction_isolation", "serializable"),
    ("transaction_read_only", "on"),
];

// ---------------------------------------------------------------------------------------
// Subscriptions as rows

/// A subscription streamed to a client: its changes as batches of rows, while the client is
/// there (its socket looked at every [`connection::HANG_UP_CHECK`], also while the view is
/// quiet).
struct Changes {
    subscription: Subscription,
    rows: SubscribeRows,
    sockets: connection::Sockets,
    peer: std::net::SocketAddr,
    check: tokio::time::Interval,
}

impl Changes {
    fn new(
        subscription: Subscription,
        rows: SubscribeRows,
        sockets: connection::Sockets,
        peer: std::net::SocketAddr,
    ) -> Self {
        let mut check = tokio::time::interval(connection::HANG_UP_CHECK);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        Changes { subscription, rows, sockets, peer, check }
    }

    /// The next batch of rows (`None`: the subscription ended, its view dropped).
    ///
    /// # Errors
    /// The client hung up (an I/O error: its session ends); a change that does not convert
    /// (`XX000`).
    async fn next(&mut self) -> PgWireResult<Option<RecordBatch>> {
        loop {
            let event = tokio::select! {
                event = self.subscription.recv() => match event {
                    Some(event) => event,
                    None => return Ok(None),
                },
                _ = self.check.tick() => {
                    if self.sockets.hung_up(self.peer) {
                        return Err(hung_up());
                    }
                    continue;
                }
            };
            if let Some(batch) = self.rows.batch(event).map_err(|e| user_error("XX000", e))? {
                return Ok(Some(batch));
            }
        }
    }
}

/// Turns a subscription's events into rows of `aimatrix_timestamp`, (`aimatrix_progressed`),
/// `aimatrix_diff` and the view's columns.
struct SubscribeRows {
    spec: SubscribeSpec,
    view: SchemaRef,
    schema: SchemaRef,
    last_progress: Option<amx_dataflows::Time>,
    /// Counts the subscription in the metrics while it lives.
    open: Option<crate::metrics::Open>,
}

impl SubscribeRows {
    fn new(spec: SubscribeSpec, view: SchemaRef) -> SubscribeRows {
        let mut fields = vec![Field::new("aimatrix_timestamp", DataType::Int64, false)];
        if spec.progress {
            fields.push(Field::new("aimatrix_progressed", DataType::Boolean, false));
        }
        fields.push(Field::new("aimatrix_diff", DataType::Int64, true));
        fields.extend(view.fields().iter().map(|f| f.as_ref().clone().with_nullable(true)));
        SubscribeRows { spec, view, schema: Arc::new(Schema::new(fields)), last_progress: None, open: None }
    }

    /// The rows of one event (`None`: it has none for this subscription).
    fn batch(&mut self, event: SubscribeEvent) -> Result<Option<RecordBatch>, String> {
        match event {
            SubscribeEvent::Snapshot { timestamp, rows, .. } if self.spec.snapshot => {
                let changes: Vec<(&Row, amx_dataflows::Time, i64)> =
                    rows.iter().map(|(r, d)| (r, timestamp, *d as i64)).collect();
                self.changes(&changes)
            }
            SubscribeEvent::Snapshot { .. } => Ok(None),
            SubscribeEvent::Changes(changes) => {
                let changes: Vec<(&Row, amx_dataflows::Time, i64)> =
                    changes.iter().map(|(r, t, d)| (r, *t, *d as i64)).collect();
                self.changes(&changes)
            }
            SubscribeEvent::Progress { upper } if self.spec.progress && self.last_progress != Some(upper) => {
                self.last_progress = Some(upper);
                let mut columns: Vec<ArrayRef> =
                    vec![Arc::new(Int64Array::from(vec![upper as i64])), Arc::new(BooleanArray::from(vec![true]))];
                columns.push(new_null_array(&DataType::Int64, 1));
                columns.extend(self.view.fields().iter().map(|f| new_null_array(f.data_type(), 1)));
                RecordBatch::try_new(self.schema.clone(), columns).map(Some).map_err(|e| e.to_string())
            }
            SubscribeEvent::Progress { .. } => Ok(None),
        }
    }

    fn changes(&self, changes: &[(&Row, amx_dataflows::Time, i64)]) -> Result<Option<RecordBatch>, String> {
        if changes.is_empty() {
            return Ok(None);
        }
        let rows: Vec<&Row> = changes.iter().map(|(r, _, _)| *r).collect();
        let view = amx_sql::convert::rows_to_batch(&rows, &self.view).map_err(|e| format!("{e:#}"))?;
        let mut columns: Vec<ArrayRef> =
            vec![Arc::new(Int64Array::from_iter_values(changes.iter().map(|(_, t, _)| *t as i64)))];
        if self.spec.progress {
            columns.push(Arc::new(BooleanArray::from(vec![false; changes.len()])));
        }
        columns.push(Arc::new(Int64Array::from_iter_values(changes.iter().map(|(_, _, d)| *d))));
        columns.extend(view.columns().iter().cloned());
        RecordBatch::try_new(self.schema.clone(), columns).map(Some).map_err(|e| e.to_string())
    }
}

/// A cursor: rows waiting to be fetched, and the subscription that makes more.
struct Cursor {
    schema: SchemaRef,
    buffer: VecDeque<RecordBatch>,
    subscription: Option<(Subscription, SubscribeRows)>,
}

impl Cursor {
    fn buffered(&self) -> usize {
        self.buffer.iter().map(RecordBatch::num_rows).sum()
    }

    fn push(&mut self, batch: Option<RecordBatch>) {
        if let Some(b) = batch.filter(|b| b.num_rows() > 0) {
            self.buffer.push_back(b);
        }
    }

    /// Up to `count` rows (`None`: all there are): from a subscription, waits up to `timeout`
    /// (`None`: until one comes) for a first row, then takes what has come without waiting.
    async fn fetch(&mut self, count: Option<usize>, timeout: Option<Duration>) -> Result<Vec<RecordBatch>, String> {
        let limit = count.unwrap_or(usize::MAX);
        if limit == 0 {
            return Ok(Vec::new());
        }
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        while self.buffer.is_empty() {
            let Some((subscription, rows)) = self.subscription.as_mut() else { break };
            let event = match deadline {
                Some(d) => match tokio::time::timeout_at(d, subscription.recv()).await {
                    Ok(e) => e,
                    Err(_) => break,
                },
                None => subscription.recv().await,
            };
            match event {
                Some(event) => {
                    let batch = rows.batch(event)?;
                    self.push(batch);
                }
                None => {
                    self.subscription = None;
                }
            }
        }
        while self.buffered() < limit {
            let Some((subscription, rows)) = self.subscription.as_mut() else { break };
            match subscription.try_recv() {
                Some(event) => {
                    let batch = rows.batch(event)?;
                    self.push(batch);
                }
                // Nothing queued (an ended subscription is found at the next wait).
                None => break,
            }
        }
        let mut out = Vec::new();
        let mut left = limit;
        while left > 0 {
            let Some(front) = self.buffer.pop_front() else { break };
            if front.num_rows() <= left {
                left -= front.num_rows();
                out.push(front);
            } else {
                out.push(front.slice(0, left));
                self.buffer.push_front(front.slice(left, front.num_rows() - left));
                left = 0;
            }
        }
        Ok(out)
    }
}

// ---------------------------------------------------------------------------------------
// Running statements

/// A query response of `batches`, described as `schema` in `format`.
fn rows_response(schema: &SchemaRef, batches: &[RecordBatch], format: &Format, tag: &str) -> PgWireResult<Response> {
    let fields = Arc::new(types::fields(schema, format));
    let mut rows = Vec::new();
    for batch in batches {
        rows.extend(types::data_rows(batch, &fields)?.into_iter().map(Ok));
    }
    let mut response = QueryResponse::new(fields, stream::iter(rows));
    response.set_command_tag(tag);
    Ok(Response::Query(response))
}

fn text_batch(columns: Vec<(&str, Vec<Option<String>>)>) -> PgWireResult<RecordBatch> {
    RecordBatch::try_from_iter_with_nullable(
        columns.into_iter().map(|(n, v)| (n, Arc::new(StringArray::from(v)) as ArrayRef, true)),
    )
    .map_err(|e| user_error("XX000", e.to_string()))
}

fn kind_name(kind: CollectionKind) -> &'static str {
    match kind {
        CollectionKind::Relation => "relation",
        CollectionKind::BuiltinView => "built-in view",
        CollectionKind::View => "materialized view",
        CollectionKind::Introspection => "introspection",
    }
}

impl Backend {
    /// The session hook that adds `pg_catalog` and `information_schema` to a query.
    fn catalog_hook(entries: Arc<Vec<CatalogEntry>>) -> PrepareSession {
        Arc::new(move |ctx, tables| {
            // A query that reads only the engine's collections (the common case, and the hot
            // path) gets the catalog's functions, not its tables: building `pg_class`,
            // `pg_attribute`, … and an empty table per collection cost about a millisecond a
            // query.
            if tables.iter().all(|t| entries.iter().any(|e| e.name == *t)) {
                catalog::register_functions(ctx);
                return Ok(());
            }
            ctx.state_ref().write().config_mut().options_mut().catalog.information_schema = true;
            // Collections the query does not read, as empty tables: information_schema lists
            // them (their contents are never read).
            for e in entries.iter().filter(|e| !tables.contains(&e.name)) {
                let table = datafusion::datasource::empty::EmptyTable::new(e.schema.clone());
                ctx.register_table(datafusion::common::TableReference::bare(e.name.as_str()), Arc::new(table))?;
            }
            catalog::register(ctx, &entries)
        })
    }

    /// Runs one engine SQL statement. A query whose answer's columns differ from `described`
    /// (a relation it reads was replaced since it was prepared) is refused with `0A000`, as
    /// PostgreSQL refuses it, rather than sending rows of another shape than described.
    async fn run_sql<C>(
        &self,
        client: &mut C,
        sql: &str,
        params: Vec<ScalarValue>,
        format: &Format,
        described: Option<&SchemaRef>,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let started = Instant::now();
        let sql = catalog::rewrite(sql);
        let entries = Arc::new(self.controller.catalog_entries());
        if let Some(answer) = catalog::answer_known(&sql, &entries) {
            let batch = answer.map_err(|e| user_error("XX000", amx_sql::error::message(&e)))?;
            return rows_response(&batch.schema(), &[batch], format, "SELECT");
        }
        let extras =
            QueryExtras { params, prepare: Some(Self::catalog_hook(entries)), refuse_views: views_refused(client) };
        let (timeout, past) = self.statement_timeout(client);
        let answer = tokio::time::timeout(timeout, self.controller.execute_sql_with(&sql, extras)).await;
        let ok = matches!(answer, Ok(Ok(_)));
        self.metrics.observe_query(crate::metrics::Interface::Pgwire, ok, started.elapsed());
        if let Ok(Err(ClusterError::Forbidden(message))) = &answer {
            self.metrics.auth_refused(crate::metrics::Interface::Pgwire, "forbidden");
            tracing::info!(user = ?client_user(client), %message, "pgwire: a statement beyond its user's role refused (42501)");
        }
        let answer = answer.map_err(|_| past)?;
        let answer = match answer {
            Ok(answer) => answer,
            Err(e @ ClusterError::Sql(_)) => match catalog::answer_empty(&sql) {
                Some(batch) => return rows_response(&batch.schema(), &[batch], format, "SELECT"),
                None => return Err(cluster_error(e)),
            },
            Err(e) => return Err(cluster_error(e)),
        };
        tracing::debug!(elapsed_ms = started.elapsed().as_secs_f64() * 1e3, "pgwire statement");
        let answer = match answer {
            SqlAnswer::Rows { schema, batches, timestamp } => {
                SqlAnswer::Rows { schema: types::postgres_column_names(&sql, &schema), batches, timestamp }
            }
            other => other,
        };
        Ok(match answer {
            SqlAnswer::Rows { schema, .. } if described.is_some_and(|d| !same_columns(d, &schema)) => {
                return Err(user_error(
                    "0A000",
                    "cached plan must not change result type: a relation the prepared statement reads was replaced; \
                     prepare it again",
                ));
            }
            SqlAnswer::Rows { schema, batches, .. } => rows_response(&schema, &batches, format, "SELECT")?,
            SqlAnswer::Created { view, existed } => {
                if existed {
                    client.send(notice(format!("relation \"{view}\" already exists, skipping"))).await?;
                }
                Response::Execution(Tag::new("CREATE MATERIALIZED VIEW"))
            }
            SqlAnswer::Dropped { view, existed } => {
                if !existed {
                    client.send(notice(format!("materialized view \"{view}\" does not exist, skipping"))).await?;
                }
                Response::Execution(Tag::new("DROP MATERIALIZED VIEW"))
            }
        })
    }

    fn subscription(&self, spec: &SubscribeSpec) -> PgWireResult<(Subscription, SubscribeRows)> {
        let open = self
            .metrics
            .client_subscription(crate::metrics::Interface::Pgwire)
            .map_err(|message| user_error("53000", message))?;
        let subscription = self.controller.subscribe(&spec.view, "pgwire").map_err(cluster_error)?;
        let mut rows = SubscribeRows::new(spec.clone(), subscription.schema.clone());
        rows.open = Some(open);
        Ok((subscription, rows))
    }

    /// `COPY (SUBSCRIBE …) TO STDOUT`: every change as a text line, flushed as it comes; ends
    /// (with `COPY n`) when the view is dropped.
    async fn copy_subscribe<C>(&self, client: &mut C, spec: &SubscribeSpec) -> PgWireResult<Response>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let (subscription, rows) = self.subscription(spec)?;
        let columns = rows.schema.fields().len();
        client
            .send(PgWireBackendMessage::CopyOutResponse(CopyOutResponse::new(0, columns as i16, vec![0; columns])))
            .await?;
        let fields = Arc::new(types::fields(&rows.schema, &Format::UnifiedText));
        let mut encoder = CopyEncoder::new_text(fields, CopyTextOptions::default());
        let mut count = 0usize;
        let mut changes = Changes::new(subscription, rows, self.sockets.clone(), client.socket_addr());
        while let Some(batch) = changes.next().await? {
            let mut out = Vec::new();
            types::copy_rows(&batch, &mut encoder, &mut out)?;
            count += batch.num_rows();
            client.send(PgWireBackendMessage::CopyData(CopyData::new(out.into()))).await?;
        }
        client.send(PgWireBackendMessage::CopyDone(CopyDone::new())).await?;
        Ok(Response::Execution(Tag::new("COPY").with_rows(count)))
    }

    /// The notice a bare `SUBSCRIBE` gets first.
    fn subscribe_notice() -> PgWireBackendMessage {
        notice(
            "SUBSCRIBE streams rows until the view is dropped; clients that buffer a whole result \
             (psql, most drivers) show nothing until then: use COPY (SUBSCRIBE …) TO STDOUT, or \
             DECLARE c CURSOR FOR SUBSCRIBE … and FETCH n c WITH (timeout = '1s')"
                .into(),
        )
    }

    /// A bare `SUBSCRIBE` in the simple protocol: after the notice, the row description, then
    /// each batch of changes as data rows, flushed as it comes (a client that reads every
    /// message sees each change at once), and `SUBSCRIBE n` once the subscription ends.
    async fn streamed_subscribe<C>(&self, client: &mut C, spec: &SubscribeSpec) -> PgWireResult<Response>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let (subscription, rows) = self.subscription(spec)?;
        client.feed(Self::subscribe_notice()).await?;
        let fields = Arc::new(types::fields(&rows.schema, &Format::UnifiedText));
        let description = pgwire::messages::data::RowDescription::new(fields.iter().map(Into::into).collect());
        client.send(PgWireBackendMessage::RowDescription(description)).await?;
        let mut count = 0usize;
        let mut changes = Changes::new(subscription, rows, self.sockets.clone(), client.socket_addr());
        while let Some(batch) = changes.next().await? {
            count += batch.num_rows();
            for row in types::data_rows(&batch, &fields)? {
                client.feed(PgWireBackendMessage::DataRow(row)).await?;
            }
            client.flush().await?;
        }
        Ok(Response::Execution(Tag::new("SUBSCRIBE").with_rows(count)))
    }

    /// A bare `SUBSCRIBE` in the extended protocol: rows as one never-ending result (the
    /// portal's, sent as the client executes it), after a notice.
    async fn bare_subscribe<C>(&self, client: &mut C, spec: &SubscribeSpec, format: &Format) -> PgWireResult<Response>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let (subscription, rows) = self.subscription(spec)?;
        client.send(Self::subscribe_notice()).await?;
        let fields = Arc::new(types::fields(&rows.schema, format));
        let encode_fields = fields.clone();
        let changes = Changes::new(subscription, rows, self.sockets.clone(), client.socket_addr());
        let batches = stream::unfold(changes, |mut changes| async move {
            match changes.next().await {
                Ok(Some(batch)) => Some((Ok(batch), changes)),
                Ok(None) => None,
                Err(e) => Some((Err(e), changes)),
            }
        });
        let data = batches.flat_map(move |batch| {
            let rows = batch.and_then(|b| types::data_rows(&b, &encode_fields));
            stream::iter(match rows {
                Ok(rows) => rows.into_iter().map(Ok).collect::<Vec<_>>(),
                Err(e) => vec![Err(e)],
            })
        });
        let mut response = QueryResponse::new(fields, data);
        response.set_command_tag("SUBSCRIBE");
        Ok(Response::Query(response))
    }

    async fn show(&self, client: &impl ClientInfo, show: &Show) -> PgWireResult<RecordBatch> {
        let entries = self.controller.catalog_entries();
        let jobs = self.controller.jobs();
        let job_name = |owner: Option<amx_cluster::protocol::JobId>| {
            owner.map(|id| {
                jobs.iter().find(|j| j.id == id).and_then(|j| j.name.clone()).unwrap_or_else(|| id.to_string())
            })
        };
        let views = |pred: &dyn Fn(CollectionKind) -> bool, with_kind: bool| {
            let list: Vec<&CatalogEntry> = entries.iter().filter(|e| pred(e.kind)).collect();
            let mut columns = vec![("name", list.iter().map(|e| Some(e.name.clone())).collect())];
            if with_kind {
                columns.push(("kind", list.iter().map(|e| Some(kind_name(e.kind).to_owned())).collect()));
            }
            columns.push(("job", list.iter().map(|e| job_name(e.owner)).collect()));
            text_batch(columns)
        };
        match show {
            Show::Views => views(&|k| !matches!(k, CollectionKind::Relation | CollectionKind::Introspection), true),
            Show::MaterializedViews => views(&|k| k == CollectionKind::View, false),
            Show::Tables => {
                let list: Vec<&CatalogEntry> = entries.iter().filter(|e| e.kind == CollectionKind::Relation).collect();
                text_batch(vec![("name", list.iter().map(|e| Some(e.name.clone())).collect())])
            }
            Show::Sources => {
                let running: Vec<(&JobInfo, &amx_cluster::job::SourceConfig)> = jobs
                    .iter()
                    .filter(|j| j.state != amx_cluster::controller::JobState::Cancelled)
                    .flat_map(|j| j.sources.iter().map(move |s| (j, s)))
                    .collect();
                let text = |f: &dyn Fn(&JobInfo, &amx_cluster::job::SourceConfig) -> Option<String>| {
                    running.iter().map(|(j, s)| f(j, s)).collect::<Vec<_>>()
                };
                text_batch(vec![
                    ("name", text(&|_, s| Some(s.name.clone()))),
                    ("job", text(&|j, _| Some(j.name.clone().unwrap_or_else(|| j.id.to_string())))),
                    ("kind", text(&|_, s| Some(serde_json::to_value(s.kind).ok()?.as_str()?.to_owned()))),
                    ("format", text(&|_, s| Some(s.format.clone()))),
                    ("path", text(&|_, s| (!s.path.is_empty()).then(|| s.path.clone()))),
                ])
            }
            Show::Jobs => {
                let text = |f: &dyn Fn(&JobInfo) -> Option<String>| jobs.iter().map(f).collect::<Vec<_>>();
                let json = |v: serde_json::Value| v.as_str().map(str::to_owned);
                text_batch(vec![
                    ("id", text(&|j| Some(j.id.to_string()))),
                    ("name", text(&|j| j.name.clone())),
                    ("kind", text(&|j| json(serde_json::to_value(j.kind).ok()?))),
                    ("state", text(&|j| json(serde_json::to_value(j.state).ok()?))),
                    (
                        "sources",
                        text(&|j| Some(j.sources.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", "))),
                    ),
                    ("views", text(&|j| Some(j.views.iter().map(|v| v.name.as_str()).collect::<Vec<_>>().join(", ")))),
                    ("errors", text(&|j| (!j.errors.is_empty()).then(|| j.errors.join("; ")))),
                ])
            }
            Show::Columns(name) => {
                let entry = entries
                    .iter()
                    .find(|e| &e.name == name)
                    .ok_or_else(|| user_error("42P01", format!("unknown relation or view {name:?}")))?;
                let fields = entry.schema.fields();
                RecordBatch::try_from_iter(vec![
                    (
                        "name",
                        Arc::new(StringArray::from_iter_values(fields.iter().map(|f| f.name().as_str()))) as ArrayRef,
                    ),
                    (
                        "nullable",
                        Arc::new(BooleanArray::from_iter(fields.iter().map(|f| Some(f.is_nullable())))) as ArrayRef,
                    ),
                    (
                        "type",
                        Arc::new(StringArray::from_iter_values(
                            fields.iter().map(|f| types::pg_type_name(f.data_type())),
                        )) as ArrayRef,
                    ),
                ])
                .map_err(|e| user_error("XX000", e.to_string()))
            }
            Show::Setting(name) => {
                let value = setting(client, name)
                    .ok_or_else(|| user_error("42704", format!("unrecognized configuration parameter \"{name}\"")))?;
                text_batch(vec![(name.as_str(), vec![Some(value)])])
            }
            Show::All => {
                let names: Vec<&str> = SETTINGS.iter().map(|(n, _)| *n).collect();
                text_batch(vec![
                    ("name", names.iter().map(|n| Some((*n).to_owned())).collect()),
                    ("setting", names.iter().map(|n| setting(client, n)).collect()),
                ])
            }
        }
    }

    /// The columns a statement answers with, known before it runs (`None`: a tag only), and
    /// the type of each parameter. A parameter the query does not type (`SELECT $1`) takes
    /// the type the client declared for it (`declared`, by position), else text (as
    /// PostgreSQL takes an untyped literal), and the columns are those of the query with it:
    /// the same as it then runs with.
    async fn describe(
        &self,
        client: &impl ClientInfo,
        statement: &Statement,
        declared: &[Option<Type>],
    ) -> PgWireResult<(Option<SchemaRef>, Vec<Option<DataType>>)> {
        Ok(match statement {
            Statement::Sql(sql) => {
                let sql = catalog::rewrite(sql);
                let first = sql.split_whitespace().next().unwrap_or("").to_ascii_uppercase();
                if first == "CREATE" || first == "DROP" {
                    return Ok((None, Vec::new()));
                }
                let entries = Arc::new(self.controller.catalog_entries());
                if let Some(answer) = catalog::answer_known(&sql, &entries) {
                    let batch = answer.map_err(|e| user_error("XX000", amx_sql::error::message(&e)))?;
                    return Ok((Some(batch.schema()), Vec::new()));
                }
                let catalog: Vec<(String, SchemaRef)> =
                    entries.iter().map(|e| (e.name.clone(), e.schema.clone())).collect();
                let extras = QueryExtras {
                    params: Vec::new(),
                    prepare: Some(Self::catalog_hook(entries)),
                    refuse_views: views_refused(client),
                };
                let mut shape =
                    amx_cluster::sql::describe_query(&catalog, &sql, &extras).await.map_err(cluster_error)?;
                // DataFusion types `$1 = $2`'s parameters as NULL: neither is typed.
                for p in shape.parameters.iter_mut().filter(|p| **p == Some(DataType::Null)) {
                    *p = None;
                }
                if shape.parameters.iter().any(Option::is_none) {
                    let mut params = Vec::with_capacity(shape.parameters.len());
                    for (i, p) in shape.parameters.iter_mut().enumerate() {
                        let ty = p.get_or_insert_with(|| {
                            declared.get(i).cloned().flatten().as_ref().map_or(DataType::Utf8, types::arrow_type)
                        });
                        params.push(ScalarValue::try_from(&*ty).map_err(|e| user_error("XX000", e.to_string()))?);
                    }
                    let extras = QueryExtras { params, ..extras };
                    shape.schema =
                        amx_cluster::sql::describe_query(&catalog, &sql, &extras).await.map_err(cluster_error)?.schema;
                }
                (Some(types::postgres_column_names(&sql, &shape.schema)), shape.parameters)
            }
            Statement::Subscribe { spec, copy: false } => {
                let view = self
                    .controller
                    .schema(&spec.view)
                    .ok_or_else(|| user_error("42P01", format!("unknown relation or view {:?}", spec.view)))?;
                (Some(SubscribeRows::new(spec.clone(), view).schema), Vec::new())
            }
            Statement::Fetch { cursor, .. } => {
                let session = session(client);
                let cursors = session.cursors.lock().await;
                let cursor = cursors
                    .get(cursor)
                    .ok_or_else(|| user_error("34000", format!("cursor \"{cursor}\" does not exist")))?;
                (Some(cursor.schema.clone()), Vec::new())
            }
            Statement::Show(show) => (Some(self.show(client, show).await?.schema()), Vec::new()),
            _ => (None, Vec::new()),
        })
    }

    /// Runs one statement; its answer is in `format`. `described`: the columns the client was
    /// told at Describe (a prepared statement), which a query's answer must still have; `None`
    /// for the simple protocol.
    async fn run<C>(
        &self,
        client: &mut C,
        statement: &Statement,
        params: Vec<ScalarValue>,
        format: &Format,
        described: Option<&SchemaRef>,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match statement {
            Statement::Sql(sql) => self.run_sql(client, sql, params, format, described).await,
            Statement::Subscribe { spec, copy: true } => self.copy_subscribe(client, spec).await,
            // The simple protocol (nothing described): rows sent as they come.
            Statement::Subscribe { spec, copy: false } if described.is_none() => {
                self.streamed_subscribe(client, spec).await
            }
            Statement::Subscribe { spec, copy: false } => self.bare_subscribe(client, spec, format).await,
            Statement::CopyQuery(sql) => {
                let answer = self.query_batches(client, sql, params).await?;
                let fields = Arc::new(types::fields(&answer.0, &Format::UnifiedText));
                let mut encoder = CopyEncoder::new_text(fields, CopyTextOptions::default());
                let mut chunks = Vec::new();
                for batch in &answer.1 {
                    let mut out = Vec::new();
                    types::copy_rows(batch, &mut encoder, &mut out)?;
                    if !out.is_empty() {
                        chunks.push(Ok(CopyData::new(out.into())));
                    }
                }
                let columns = answer.0.fields().len();
                Ok(Response::CopyOut(CopyResponse::new(0, columns, stream::iter(chunks))))
            }
            Statement::Declare { cursor, body } => {
                let session = session(client);
                let in_block =
                    session.explicit_block.load(Ordering::Relaxed) || session.implicit_block.load(Ordering::Relaxed);
                if client.transaction_status() == TransactionStatus::Idle && !in_block {
                    return Err(user_error(
                        "25P01",
                        "DECLARE CURSOR can only be used in transaction blocks (BEGIN first)",
                    ));
                }
                let new = match body {
                    CursorBody::Subscribe(spec) => {
                        let (subscription, rows) = self.subscription(spec)?;
                        Cursor {
                            schema: rows.schema.clone(),
                            buffer: VecDeque::new(),
                            subscription: Some((subscription, rows)),
                        }
                    }
                    CursorBody::Query(sql) => {
                        let (schema, batches) = self.query_batches(client, sql, params).await?;
                        Cursor { schema, buffer: batches.into(), subscription: None }
                    }
                };
                let mut cursors = session.cursors.lock().await;
                if cursors.contains_key(cursor) {
                    return Err(user_error("42P03", format!("cursor \"{cursor}\" already exists")));
                }
                cursors.insert(cursor.clone(), new);
                Ok(Response::Execution(Tag::new("DECLARE CURSOR")))
            }
            Statement::Fetch { cursor, count, timeout } => {
                let session = session(client);
                let mut cursors = session.cursors.lock().await;
                let open = cursors
                    .get_mut(cursor)
                    .ok_or_else(|| user_error("34000", format!("cursor \"{cursor}\" does not exist")))?;
                let batches = open.fetch(*count, *timeout).await.map_err(|e| user_error("XX000", e))?;
                let schema = open.schema.clone();
                rows_response(&schema, &batches, format, "FETCH")
            }
            Statement::Close(cursor) => {
                let session = session(client);
                let mut cursors = session.cursors.lock().await;
                match cursor {
                    None => cursors.clear(),
                    Some(name) => {
                        cursors
                            .remove(name)
                            .ok_or_else(|| user_error("34000", format!("cursor \"{name}\" does not exist")))?;
                    }
                }
                Ok(Response::Execution(Tag::new("CLOSE CURSOR")))
            }
            Statement::Show(show) => {
                let batch = self.show(client, show).await?;
                rows_response(&batch.schema(), &[batch], format, "SHOW")
            }
            Statement::Set { name, value } => {
                let mut value = value.clone();
                if name == "statement_timeout"
                    && let Some(v) = &value
                {
                    let Some(timeout) = parse_statement_timeout(v) else {
                        return Err(user_error(
                            "22023",
                            format!("invalid value for parameter \"statement_timeout\": \"{v}\""),
                        ));
                    };
                    // Kept (and shown) as PostgreSQL shows it: `-0s` is `0`, `1.5s` is `1500ms`.
                    value = Some(statement_timeout_text(timeout));
                }
                let session = session(client);
                let mut settings = session.settings.lock().unwrap_or_else(|p| p.into_inner());
                let tag = match value {
                    Some(v) => {
                        settings.insert(name.clone(), v);
                        "SET"
                    }
                    None => {
                        settings.remove(name);
                        "RESET"
                    }
                };
                Ok(Response::Execution(Tag::new(tag)))
            }
            Statement::Tag { tag, txn } => Ok(match txn {
                Txn::None => Response::Execution(Tag::new(tag)),
                Txn::Begin => {
                    session(client).explicit_block.store(true, Ordering::Relaxed);
                    Response::TransactionStart(Tag::new(tag))
                }
                Txn::End => {
                    // Cursors live in their transaction.
                    let session = session(client);
                    session.explicit_block.store(false, Ordering::Relaxed);
                    session.cursors.lock().await.clear();
                    Response::TransactionEnd(Tag::new(tag))
                }
            }),
        }
    }

    /// How long a statement of this session may run: the session's `statement_timeout`
    /// when it is set and shorter than the server's `sql.timeout_ms`, else the server's; and
    /// the error a statement past it gets (`57014`, with PostgreSQL's message for the
    /// session's).
    fn statement_timeout(&self, client: &impl ClientInfo) -> (Duration, PgWireError) {
        let session = setting(client, "statement_timeout").and_then(|v| parse_statement_timeout(&v)).flatten();
        match session {
            Some(t) if t < self.timeout => (t, user_error("57014", "canceling statement due to statement timeout")),
            _ => (
                self.timeout,
                user_error(
                    "57014",
                    format!("canceling statement: it ran past sql.timeout_ms ({} ms)", self.timeout.as_millis()),
                ),
            ),
        }
    }

    /// A query's answer as Arrow batches.
    async fn query_batches(
        &self,
        client: &impl ClientInfo,
        sql: &str,
        params: Vec<ScalarValue>,
    ) -> PgWireResult<(SchemaRef, Vec<RecordBatch>)> {
        let sql = catalog::rewrite(sql);
        let entries = Arc::new(self.controller.catalog_entries());
        let extras =
            QueryExtras { params, prepare: Some(Self::catalog_hook(entries)), refuse_views: views_refused(client) };
        let (timeout, past) = self.statement_timeout(client);
        let answer = tokio::time::timeout(timeout, self.controller.execute_sql_with(&sql, extras))
            .await
            .map_err(|_| past)?
            .map_err(cluster_error)?;
        match answer {
            SqlAnswer::Rows { schema, batches, .. } => Ok((schema, batches)),
            _ => Err(user_error("0A000", "a cursor or COPY reads a query, not a view statement")),
        }
    }
}

/// `statement_timeout` as PostgreSQL takes it: milliseconds, or a number with a unit (`us`,
/// `ms`, `s`, `min`, `h`, `d`; PostgreSQL's `postgresql.conf` units); `0`: none. `None`: not a
/// duration, or one outside PostgreSQL's range for it (0 to 2,147,483,647 ms: a negative one
/// is refused, as PostgreSQL refuses it).
fn parse_statement_timeout(value: &str) -> Option<Option<Duration>> {
    let value = value.trim();
    let split = value.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-')).unwrap_or(value.len());
    let (number, unit) = value.split_at(split);
    let number: f64 = number.parse().ok().filter(|n: &f64| n.is_finite())?;
    let ms = number
        * match unit.trim() {
            "" | "ms" => 1.0,
            "us" => 0.001,
            "s" => 1e3,
            "min" => 60e3,
            "h" => 3600e3,
            "d" => 86_400e3,
            _ => return None,
        };
    // PostgreSQL rounds to whole milliseconds; at most i32::MAX of them.
    let ms = ms.round();
    if !(0.0..=f64::from(i32::MAX)).contains(&ms) {
        return None;
    }
    Some((ms >= 1.0).then(|| Duration::from_millis(ms as u64)))
}

/// A `statement_timeout` as PostgreSQL shows it (its GUC display: the largest of `d`, `h`,
/// `min`, `s`, `ms` the milliseconds are a whole number of; `0` for none).
fn statement_timeout_text(timeout: Option<Duration>) -> String {
    let Some(ms) = timeout.map(|t| t.as_millis()).filter(|ms| *ms > 0) else { return "0".to_owned() };
    let unit = [(86_400_000, "d"), (3_600_000, "h"), (60_000, "min"), (1_000, "s")]
        .into_iter()
        .find(|(size, _)| ms % size == 0);
    match unit {
        Some((size, name)) => format!("{}{name}", ms / size),
        None => format!("{ms}ms"),
    }
}

/// A setting's value in this session (`None`: unknown setting).
fn setting(client: &impl ClientInfo, name: &str) -> Option<String> {
    let name = name.to_ascii_lowercase();
    let session = session(client);
    if let Some(v) = session.settings.lock().unwrap_or_else(|p| p.into_inner()).get(&name) {
        return Some(v.clone());
    }
    if name == "application_name"
        && let Some(v) = client.metadata().get(pgwire::api::METADATA_APPLICATION_NAME)
    {
        return Some(v.clone());
    }
    SETTINGS.iter().find(|(n, _)| *n == name).map(|(_, v)| (*v).to_owned())
}

// ---------------------------------------------------------------------------------------
// The protocol handlers

#[async_trait]
impl SimpleQueryHandler for Backend {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let statements = statement::split(query).map_err(|e| user_error("42601", e))?;
        let mut responses = Vec::new();
        let session = session(client);
        let implicit = statements.len() > 1;
        session.implicit_block.store(implicit, Ordering::Relaxed);
        for text in statements {
            let span = query_span("", &text);
            let result = match statement::classify(&text) {
                Ok(statement) => {
                    let closing = closed_cursors(client, &statement).await;
                    let result = self
                        .run(client, &statement, Vec::new(), &Format::UnifiedText, None)
                        .instrument(span.clone())
                        .await;
                    if result.is_ok() {
                        for name in closing {
                            client.portal_store().rm_portal(&name);
                        }
                    }
                    result
                }
                Err(e) => Err(unsupported(e)),
            };
            traced(&span, &result);
            match result {
                Ok(response) => responses.push(response),
                Err(PgWireError::UserError(info)) => {
                    // PostgreSQL stops a multi-statement query string at its first error.
                    responses.push(Response::Error(info));
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        if implicit {
            session.implicit_block.store(false, Ordering::Relaxed);
            if !session.explicit_block.load(Ordering::Relaxed) {
                // The implicit transaction ended, and its cursors with it.
                session.cursors.lock().await.clear();
            }
        }
        if responses.is_empty() {
            responses.push(Response::EmptyQuery);
        }
        Ok(responses)
    }
}

#[async_trait]
impl QueryParser for Parser {
    type Statement = Prepared;

    async fn parse_sql<C>(&self, client: &C, sql: &str, types: &[Option<Type>]) -> PgWireResult<Option<Prepared>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let mut statements = statement::split(sql).map_err(|e| user_error("42601", e))?;
        if statements.len() > 1 {
            return Err(user_error("42601", "cannot insert multiple commands into a prepared statement"));
        }
        let Some(text) = statements.pop() else { return Ok(None) };
        let span = query_span("parse", &text);
        let described = async {
            let statement = statement::classify(&text).map_err(unsupported)?;
            let backend = Backend::new(self.controller.clone(), Duration::from_secs(60), self.metrics.clone());
            let (schema, params) = backend.describe(client, &statement, types).await?;
            Ok((statement, schema, params))
        }
        .instrument(span.clone())
        .await;
        traced(&span, &described);
        let (statement, schema, params) = described?;
        Ok(Some(Prepared { text, statement, schema, params }))
    }

    fn get_parameter_types(&self, stmt: &Prepared) -> PgWireResult<Vec<Type>> {
        Ok(stmt.params.iter().map(|p| p.as_ref().map_or(Type::TEXT, types::pg_type)).collect())
    }

    fn get_result_schema(&self, stmt: &Prepared, format: Option<&Format>) -> PgWireResult<Vec<FieldInfo>> {
        Ok(match &stmt.schema {
            Some(schema) => types::fields(schema, format.unwrap_or(&Format::UnifiedText)),
            None => Vec::new(),
        })
    }
}

#[async_trait]
impl ExtendedQueryHandler for Backend {
    type Statement = Prepared;
    type QueryParser = Parser;

    fn query_parser(&self) -> Arc<Parser> {
        self.parser.clone()
    }

    async fn do_query<C>(&self, client: &mut C, portal: &Portal<Prepared>, _max_rows: usize) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Prepared>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let prepared = &portal.statement.statement;
        let mut params = Vec::with_capacity(portal.parameter_len());
        for idx in 0..portal.parameter_len() {
            let want = prepared.params.get(idx).and_then(Option::as_ref);
            let sent = portal
                .statement
                .parameter_types
                .get(idx)
                .cloned()
                .flatten()
                .filter(|t| *t != Type::UNKNOWN)
                .unwrap_or_else(|| want.map_or(Type::TEXT, types::pg_type));
            params.push(types::parameter(portal, idx, &sent, want)?);
        }
        let closing = closed_cursors(client, &prepared.statement).await;
        let span = query_span("", &prepared.text);
        let result = self
            .run(client, &prepared.statement, params, &portal.result_column_format, prepared.schema.as_ref())
            .instrument(span.clone())
            .await;
        traced(&span, &result);
        if result.is_ok() {
            declared_portal(client, &prepared.statement).await;
            for name in closing {
                client.portal_store().rm_portal(&name);
            }
        }
        result
    }
}

/// The SQL cursors `statement` closes when it succeeds (`CLOSE c`, `CLOSE ALL`, the end of
/// the transaction), whose protocol portals go with them ([`declared_portal`]).
async fn closed_cursors(client: &impl ClientInfo, statement: &Statement) -> Vec<String> {
    match statement {
        Statement::Close(Some(cursor)) => vec![cursor.clone()],
        Statement::Close(None) | Statement::Tag { txn: Txn::End, .. } => {
            session(client).cursors.lock().await.keys().cloned().collect()
        }
        _ => Vec::new(),
    }
}

/// Keeps the protocol's portals in step with the SQL cursors, as in PostgreSQL, where a cursor
/// `DECLARE`d in SQL is a portal of its name: a client may `Describe` it (psycopg's named
/// cursors do, to learn their columns) or `Execute` it (which fetches what is left). After a
/// `DECLARE c`, portal `c` describes the cursor's columns and executes as `FETCH ALL FROM c`
/// (the portals of cursors closed go: [`closed_cursors`]).
async fn declared_portal<C>(client: &mut C, statement: &Statement)
where
    C: ClientInfo + ClientPortalStore,
    C::PortalStore: PortalStore<Statement = Prepared>,
{
    let Statement::Declare { cursor, .. } = statement else { return };
    let Some(schema) = session(client).cursors.lock().await.get(cursor).map(|c| c.schema.clone()) else { return };
    let fetch = Prepared {
        text: format!("FETCH ALL FROM \"{}\"", cursor.replace('"', "\"\"")),
        statement: Statement::Fetch { cursor: cursor.clone(), count: None, timeout: None },
        schema: Some(schema),
        params: Vec::new(),
    };
    let stored = pgwire::api::stmt::StoredStatement::new(cursor.clone(), fetch, Vec::new());
    client.portal_store().put_portal(Arc::new(Portal::new_cursor(cursor.clone(), Arc::new(stored))));
}

/// The span of one pgwire statement, named and described as the OpenTelemetry conventions for
/// database spans have it, from the server's side (`pgwire {OPERATION}`; `db.system.name`
/// `aimatrix`, `db.operation.name`, `db.query.text` without its values: see
/// [`statement::sanitized`]). `step` names a step of the extended protocol (`parse`: the
/// statement planned and described, `pgwire parse {OPERATION}`); empty: running it.
fn query_span(step: &str, text: &str) -> tracing::Span {
    let operation = statement::operation(text);
    let name = match (step, operation.as_str()) {
        (_, "?") => "pgwire".to_owned(),
        ("", _) => format!("pgwire {operation}"),
        _ => format!("pgwire {step} {operation}"),
    };
    tracing::info_span!(
        "pgwire query",
        otel.name = %name,
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        db.system.name = "aimatrix",
        db.operation.name = %operation,
        db.query.text = %statement::sanitized(text),
        db.response.status_code = tracing::field::Empty,
    )
}

/// Records a statement's outcome on its span: the SQLSTATE of an error, and an error status.
fn traced(span: &tracing::Span, result: &PgWireResult<impl Sized>) {
    match result {
        Ok(_) => {}
        Err(PgWireError::UserError(info)) => {
            span.record("db.response.status_code", info.code.as_str());
            span.record("otel.status_code", "ERROR");
        }
        Err(_) => {
            span.record("otel.status_code", "ERROR");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statement_timeouts_read_as_postgresql_reads_them() {
        let ms = |v: &str| parse_statement_timeout(v).map(|t| t.map(|d| d.as_millis()));
        assert_eq!(ms("0"), Some(None));
        assert_eq!(ms("-5"), None, "PostgreSQL: outside the valid range (0 .. 2147483647)");
        assert_eq!(ms("250"), Some(Some(250)));
        assert_eq!(ms("1.5s"), Some(Some(1500)));
        assert_eq!(ms("2 min"), Some(Some(120_000)));
        assert_eq!(ms("1h"), Some(Some(3_600_000)));
        assert_eq!(ms("1d"), Some(Some(86_400_000)));
        assert_eq!(ms("1500us"), Some(Some(2)));
        assert_eq!(ms("400us"), Some(None), "rounded to 0 ms: none");
        for bad in ["soon", "", "5 parsecs", "1e400", "30d"] {
            assert_eq!(ms(bad), None, "{bad}");
        }
        // As PostgreSQL 16 shows them after `SET statement_timeout = …`.
        let shown = |v: &str| statement_timeout_text(parse_statement_timeout(v).expect(v));
        for (set, show) in [
            ("-0s", "0"),
            ("0", "0"),
            ("1.5s", "1500ms"),
            ("60s", "1min"),
            ("2 min", "2min"),
            ("7200000", "2h"),
            ("1d", "1d"),
            ("250", "250ms"),
            ("5s", "5s"),
        ] {
            assert_eq!(shown(set), show, "{set}");
        }
    }
}
