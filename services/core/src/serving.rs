//! Serving HTTP to clients: an axum router on hyper, with the limits
//! `axum::serve` leaves off. It gives hyper no timer, so a connection that sends
//! nothing, or its headers a byte at a time, is kept forever, and a few thousand
//! of them exhaust the file descriptors. Here a client must send a request's
//! headers within [`HEADER_TIMEOUT`] of connecting or of its previous response;
//! request bodies that stall are ended by [`BODY_STALL_TIMEOUT`] (a layer the
//! routers add). Otherwise this is axum's own accept loop (hyper-util's builder,
//! graceful shutdown of each connection), with `TCP_NODELAY` on and without
//! connection upgrades (nothing here speaks WebSocket).

use std::{future::Future, sync::Arc, time::Duration};

use axum::Router;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto::Builder,
    service::TowerToHyperService,
};
use tokio::{net::TcpListener, task::JoinSet};
use tokio_util::sync::CancellationToken;

/// Longest a client may take to send a request's headers, counted from the
/// connection's start or its previous response (so also an idle keep-alive).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a request body may pause between two chunks.
pub const BODY_STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `app` on `listener` until `shutdown`; then stops accepting, lets each
/// connection finish its request in flight, and returns once all have closed.
pub async fn serve(listener: TcpListener, app: Router, shutdown: impl Future<Output = ()>) {
    // HTTP/1 only (the build has no HTTP/2): no version sniffing, which would wait
    // for a first byte without any timer.
    let mut builder = Builder::new(TokioExecutor::new()).http1_only();
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    let builder = Arc::new(builder);
    let closing = CancellationToken::new();
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    // Out of file descriptors, say: wait for some to close, do not spin.
                    tracing::warn!(error = %err, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Finished connections are reaped as new ones come.
        while connections.try_join_next().is_some() {}
        let _ = stream.set_nodelay(true);
        let (builder, closing, service) = (builder.clone(), closing.clone(), TowerToHyperService::new(app.clone()));
        connections.spawn(async move {
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                served = connection.as_mut() => {
                    if let Err(err) = served {
                        tracing::debug!(error = %err, "client connection ended");
                    }
                    return;
                }
                () = closing.cancelled() => connection.as_mut().graceful_shutdown(),
            }
            let _ = connection.await;
        });
    }
    drop(listener);
    closing.cancel();
    while connections.join_next().await.is_some() {}
}
