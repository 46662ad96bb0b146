//! The `/metrics` endpoint of `trace --metrics`: a listener bound before anything is attached,
//! served on the trace's own (current-thread) tokio runtime between polls, and fed from every
//! query record the trace completes. Conntrack and the kernel's counters are read at most once
//! per [`REFRESH`], never per scrape. Stopping closes the listening socket.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};

use super::{Error, Tracer};
use crate::{
    flow::record::QueryRecord,
    report::metrics::{Metrics, NodeInfo},
};

/// How often conntrack and the kernel's counters are read.
pub const REFRESH: Duration = Duration::from_secs(3);
/// The longest request read, headers included.
const MAX_REQUEST: usize = 8192;
/// A client that has not sent its request, or read the answer, by then is dropped.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// The content type of OpenMetrics text.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The address bound, not yet served.
pub struct Listener {
    std: std::net::TcpListener,
}

impl Listener {
    /// Binds `addr` (before the trace attaches anything: a port in use fails the command first).
    pub fn bind(addr: SocketAddr) -> Result<Self, Error> {
        let listen = |source| Error::Listen { addr, source };
        let std = std::net::TcpListener::bind(addr).map_err(listen)?;
        std.set_nonblocking(true).map_err(listen)?;
        Ok(Self { std })
    }

    /// The address bound (port 0 resolved).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.std.local_addr().ok()
    }
}

/// The metrics of a running trace and the task serving them.
pub struct Exporter {
    metrics: Arc<Metrics>,
    server: JoinHandle<()>,
    refreshed: Option<Instant>,
}

impl Exporter {
    /// Starts serving on `rt` (it runs while the runtime is driven: during the trace's polls).
    pub fn start(
        rt: &tokio::runtime::Runtime,
        listener: Listener,
        node: NodeInfo,
    ) -> Result<Self, Error> {
        let addr = listener.local_addr();
        let listener = {
            let _entered = rt.enter();
            TcpListener::from_std(listener.std).map_err(|source| Error::Listen {
                addr: addr.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0))),
                source,
            })?
        };
        let metrics = Arc::new(Metrics::new(node));
        let server = rt.spawn(serve(listener, Arc::clone(&metrics)));
        Ok(Self {
            metrics,
            server,
            refreshed: None,
        })
    }

    /// Counts the queries a poll completed; reads conntrack and the kernel's counters when
    /// `REFRESH` has passed.
    pub fn update(&mut self, tracer: &Tracer, records: &[QueryRecord]) -> Result<(), Error> {
        for r in records {
            self.metrics.add(r);
        }
        if self.refreshed.is_some_and(|t| t.elapsed() < REFRESH) {
            return Ok(());
        }
        self.refreshed = Some(Instant::now());
        self.metrics.set_kernel(&tracer.counters()?, tracer.plan());
        let (table, stats) = tracer.conntrack();
        self.metrics.set_conntrack(table, stats);
        Ok(())
    }

    /// Stops serving: the listening socket is closed when this returns.
    pub fn stop(self, rt: &tokio::runtime::Runtime) {
        self.server.abort();
        // An aborted task's future (and the listener in it) is dropped before its handle
        // resolves.
        let _ = rt.block_on(self.server);
    }
}

/// Accepts one client at a time (a scrape is a few kilobytes of text: no client waits long,
/// and a storm of them costs the trace no more than one).
async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let answer = tokio::time::timeout(CLIENT_TIMEOUT, respond(stream, &metrics));
                if let Ok(Err(e)) = answer.await {
                    log::debug!("metrics client: {e}");
                }
            }
            Err(e) => {
                // Out of file descriptors, say: wait rather than spin.
                log::warn!("failed to accept a metrics client: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Reads one HTTP request and answers it: `GET /metrics` with the metrics, anything else with
/// 404 or 405.
async fn respond(mut stream: TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    let mut request = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < MAX_REQUEST {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        request.extend_from_slice(&buf[..n]);
    }
    let line = request.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut words = line.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (status, kind, body) = match (method, path) {
        ("GET", "/metrics") => ("200 OK", OPENMETRICS, metrics.text()),
        ("GET", _) => (
            "404 Not Found",
            "text/plain",
            "only /metrics is served\n".to_owned(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "only GET is served\n".to_owned(),
        ),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}
