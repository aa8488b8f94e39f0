//! The HTTP/1.1 accept loop: axum's router served by hyper with the server's own buffer limit
//! (`axum::serve` does not expose it).
//!
//! Why: hyper grows each connection's read buffer up to about 400 KiB while a large sync
//! request streams in, and keeps it while the connection stays open. With fifty phones
//! holding keep-alive connections that was 10–12 MB of the server's peak heap. A 64 KiB cap
//! costs more, smaller reads, nothing else; headers (the largest is a bearer token) fit easily.

use std::future::Future;
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tower::ServiceExt;

/// The most a connection buffers of what it reads (and queues to write) at once.
pub const CONNECTION_BUFFER_BYTES: usize = 64 * 1024;

/// Accepts connections until `shutdown` completes, then waits for the requests in flight to
/// finish. (An upgraded connection, a WebSocket, is its handler's from then on, as with
/// `axum::serve`.)
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let mut builder = hyper::server::conn::http1::Builder::new();
    // No header read timeout: hyper's also closes a keep-alive connection idle that long, and a
    // client sending on it just then gets "connection closed before message completed" (the
    // interop bench's phones did, after 30 s).
    builder.max_buf_size(CONNECTION_BUFFER_BYTES);
    // Dropping `stop` tells every connection to finish; each holds a `running` receiver, so
    // `running.closed()` completes once the last one has.
    let (stop, stopping) = watch::channel(());
    let (running, running_rx) = watch::channel(());
    let mut shutdown = std::pin::pin!(shutdown);

    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => without_nagle(stream),
                Err(error) => {
                    wait_after_accept_error(error).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let service = router
            .clone()
            .map_request(|request: hyper::Request<Incoming>| request.map(axum::body::Body::new));
        let connection = builder
            .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service))
            .with_upgrades();
        let (mut stopping, still_running) = (stopping.clone(), running_rx.clone());
        tokio::spawn(async move {
            let mut connection = std::pin::pin!(connection);
            let ended = tokio::select! {
                ended = connection.as_mut() => ended,
                _ = stopping.changed() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(error) = ended {
                // A client closing mid-request is routine: not worth more than a debug line.
                tracing::debug!(%error, "connection ended with an error");
            }
            drop(still_running);
        });
    }

    drop((listener, stop, running_rx));
    running.closed().await;
    Ok(())
}

/// Sync messages are small and latency-bound: with Nagle's algorithm on, a WebSocket push
/// queued behind an unacknowledged write waited for the client's delayed ACK (one visit
/// reached its 9 subscribers in 43 ms on the interop bench, 19-21 ms with it off).
fn without_nagle(stream: TcpStream) -> TcpStream {
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%error, "cannot set TCP_NODELAY");
    }
    stream
}

/// Errors that concern one connection (reset before it was accepted) are skipped; others
/// (out of file descriptors) would repeat at once, so the loop waits a second first.
async fn wait_after_accept_error(error: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        error.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::error!(%error, "cannot accept a connection; retrying in a second");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_connections_send_small_writes_at_once() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
        let address = listener.local_addr().expect("its address");
        let (client, accepted) = tokio::join!(TcpStream::connect(address), listener.accept());
        let (_client, (stream, _)) = (client.expect("connects"), accepted.expect("accepts"));
        assert!(
            !stream.nodelay().expect("readable"),
            "Nagle is on by default"
        );
        assert!(without_nagle(stream).nodelay().expect("readable"));
    }
}
