//! Accepted connections, at most `server.max_connections` open at once. Past the cap the server
//! stops accepting (clients wait in the listen backlog) until a connection closes; each accepted
//! connection holds its place until it is dropped. TCP_NODELAY is set on every connection:
//! without it, Nagle's algorithm and delayed ACKs add ~40 ms to small responses.
//!
//! Under TLS (`tls`), each connection's handshake runs as a task of its own, bounded in time, so
//! a slow or silent client delays nobody else; it takes the certificates current when it starts.
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::security::tls::Certificates;

/// An accepted connection and its place under the cap.
pub struct Connection {
    stream: TcpStream,
    _place: OwnedSemaphorePermit,
}

/// After an accept error that is not the client's (out of file descriptors, say), wait this
/// long before accepting again rather than spinning.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// The listener's connections, within `max` open at once. Dropping the stream closes the listener.
pub fn incoming(
    listener: TcpListener,
    max: usize,
) -> impl Stream<Item = Result<Connection, io::Error>> {
    let places = Arc::new(Semaphore::new(max));
    futures_util::stream::unfold((listener, places), |(listener, places)| async move {
        let place = places.clone().acquire_owned().await.ok()?;
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    if let Err(e) = stream.set_nodelay(true) {
                        tracing::debug!(error = %e, "TCP_NODELAY could not be set");
                    }
                    let connection = Connection {
                        stream,
                        _place: place,
                    };
                    return Some((Ok(connection), (listener, places)));
                }
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                }
            }
        }
    })
}

/// How long a client may take to complete its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshaken connections waiting for the server to take them.
const HANDSHAKEN_BUFFER: usize = 16;

/// The TLS connections of `plain`, each with the certificates current at its handshake. A
/// failed handshake is the client's affair (a wrong CA, no client certificate under mTLS, plain
/// text): it closes that connection only. Dropping the stream stops accepting.
pub fn tls(
    plain: impl Stream<Item = Result<Connection, io::Error>> + Send + 'static,
    certificates: Arc<Certificates>,
) -> impl Stream<Item = Result<TlsStream<Connection>, io::Error>> {
    let (handshaken, taken) = mpsc::channel(HANDSHAKEN_BUFFER);
    tokio::spawn(async move {
        tokio::pin!(plain);
        loop {
            let next = tokio::select! {
                _ = handshaken.closed() => return,
                next = plain.next() => next,
            };
            let connection = match next {
                None => return,
                Some(Err(e)) => {
                    if handshaken.send(Err(e)).await.is_err() {
                        return;
                    }
                    continue;
                }
                Some(Ok(connection)) => connection,
            };
            let acceptor = TlsAcceptor::from(certificates.current());
            let handshaken = handshaken.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(connection)).await {
                    Ok(Ok(stream)) => {
                        let _ = handshaken.send(Ok(stream)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!("TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(taken)
}

/// Errors of one connection, which say nothing about the next one.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
    )
}

impl Connected for Connection {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
