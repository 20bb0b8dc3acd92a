//! A loopback TCP proxy in front of one upstream, through which network faults are injected into the service's connections: partitions, latency, resets.

use super::InfraError;
use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Chunks read ahead of a delayed writer; bounds the memory a slow
/// direction holds and passes backpressure on to the sender.
const QUEUE: usize = 64;
const CHUNK: usize = 16 * 1024;

/// What the proxy does to the bytes of every connection, new and live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProxyMode {
    #[default]
    Pass,
    /// A partition as a client sees it: connections stay open, new ones are
    /// accepted, and no byte moves in either direction until the mode changes
    /// (bytes already read are held, then delivered in order).
    Blackhole,
    /// Every chunk is forwarded this long after it was read, in both
    /// directions, in order; a round trip takes twice as long.
    Latency(Duration),
}

/// What the proxy has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProxyStats {
    pub accepted: u64,
    /// Connections closed at once because of `set_refuse(true)`.
    pub refused: u64,
    /// Connections aborted with a TCP RST by `reset_all`.
    pub resets: u64,
    /// Connections open now.
    pub live: usize,
}

struct Live {
    cancel: CancellationToken,
    done: oneshot::Receiver<()>,
}

#[derive(Default)]
struct Shared {
    accepted: AtomicU64,
    refused: AtomicU64,
    resets: AtomicU64,
    refuse: AtomicBool,
    next_id: AtomicU64,
    live: Mutex<HashMap<u64, Live>>,
}

impl Shared {
    fn live(&self) -> MutexGuard<'_, HashMap<u64, Live>> {
        // The map stays consistent whatever a panicking holder did.
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A TCP proxy on 127.0.0.1 owned by the suite; dropping it aborts every
/// connection through it.
pub struct FaultProxy {
    addr: SocketAddr,
    mode: watch::Sender<ProxyMode>,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    accept: Option<JoinHandle<()>>,
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `upstream`, in `Pass`
    /// mode.
    pub async fn start(upstream: SocketAddr) -> Result<Self, InfraError> {
        if !upstream.ip().is_loopback() {
            return Err(InfraError::State(format!(
                "the proxy forwards to loopback only, not {upstream}"
            )));
        }
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .map_err(|e| InfraError::io("binding the proxy on 127.0.0.1", e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| InfraError::io("reading the proxy's address", e))?;
        let (mode, _) = watch::channel(ProxyMode::Pass);
        let shared = Arc::new(Shared::default());
        let shutdown = CancellationToken::new();
        let accept = tokio::spawn(accept_loop(
            listener,
            upstream,
            mode.subscribe(),
            shared.clone(),
            shutdown.clone(),
        ));
        Ok(Self {
            addr,
            mode,
            shared,
            shutdown,
            accept: Some(accept),
        })
    }

    /// Where clients connect instead of the upstream.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Applies to live connections at once, and to every new one.
    pub fn set_mode(&self, mode: ProxyMode) {
        self.mode.send_replace(mode);
    }

    /// While on, new connections are accepted and aborted with a RST at
    /// once, as a host with nothing listening would; live ones are untouched.
    #[cfg(test)]
    pub fn set_refuse(&self, refuse: bool) {
        self.shared.refuse.store(refuse, Ordering::Relaxed);
    }

    /// Aborts every live connection with a TCP RST to both its client and
    /// its upstream; returns how many. The resets happen on the connections'
    /// tasks within moments; `reset_all_and_wait` returns once they have.
    pub fn reset_all(&self) -> usize {
        self.take_and_cancel_all().len()
    }

    /// `reset_all`, returning once every reset connection is closed.
    pub async fn reset_all_and_wait(&self) -> usize {
        let taken = self.take_and_cancel_all();
        let count = taken.len();
        for done in taken {
            // An error only means the task has already finished.
            let _ = done.await;
        }
        count
    }

    pub fn stats(&self) -> ProxyStats {
        ProxyStats {
            accepted: self.shared.accepted.load(Ordering::Relaxed),
            refused: self.shared.refused.load(Ordering::Relaxed),
            resets: self.shared.resets.load(Ordering::Relaxed),
            live: self.shared.live().len(),
        }
    }

    /// Stops accepting and aborts every live connection.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(accept) = self.accept.take() {
            let _ = accept.await;
        }
        self.reset_all_and_wait().await;
    }

    fn take_and_cancel_all(&self) -> Vec<oneshot::Receiver<()>> {
        let taken: Vec<Live> = self.shared.live().drain().map(|(_, live)| live).collect();
        taken
            .into_iter()
            .map(|live| {
                live.cancel.cancel();
                live.done
            })
            .collect()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        // Every connection's token is a child of this one.
        self.shutdown.cancel();
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    mode: watch::Receiver<ProxyMode>,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let client = match accepted {
            Ok((client, _)) => client,
            Err(_) => {
                // Out of descriptors or similar: the condition passes, and a
                // tight retry would only spin.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        shared.accepted.fetch_add(1, Ordering::Relaxed);
        if shared.refuse.load(Ordering::Relaxed) {
            shared.refused.fetch_add(1, Ordering::Relaxed);
            abort(client);
            continue;
        }
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let cancel = shutdown.child_token();
        let (done_tx, done) = oneshot::channel();
        shared.live().insert(
            id,
            Live {
                cancel: cancel.clone(),
                done,
            },
        );
        tokio::spawn(connection(
            client,
            upstream,
            mode.clone(),
            cancel,
            shared.clone(),
            id,
            done_tx,
        ));
    }
}

/// Closes with a RST instead of a FIN: the peer's next read or write fails
/// with "connection reset".
fn abort(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

fn abort_both(client: TcpStream, upstream: Option<TcpStream>) {
    abort(client);
    if let Some(upstream) = upstream {
        abort(upstream);
    }
}

async fn connection(
    mut client: TcpStream,
    upstream_addr: SocketAddr,
    mode: watch::Receiver<ProxyMode>,
    cancel: CancellationToken,
    shared: Arc<Shared>,
    id: u64,
    done: oneshot::Sender<()>,
) {
    let mut upstream = None;
    let outcome = tokio::select! {
        _ = cancel.cancelled() => None,
        relayed = relay(&mut client, &mut upstream, upstream_addr, mode) => Some(relayed),
    };
    match outcome {
        // Both directions ended with a FIN: close the same way.
        Some(Ok(())) => {}
        // One side failed (reset, or the upstream is down): the other side
        // learns it the same abrupt way.
        Some(Err(_)) => abort_both(client, upstream),
        None => {
            abort_both(client, upstream);
            shared.resets.fetch_add(1, Ordering::Relaxed);
        }
    }
    shared.live().remove(&id);
    let _ = done.send(());
}

async fn relay(
    client: &mut TcpStream,
    upstream_slot: &mut Option<TcpStream>,
    upstream_addr: SocketAddr,
    mut mode: watch::Receiver<ProxyMode>,
) -> io::Result<()> {
    // A connection accepted during a partition does not reach the upstream
    // either, until the partition heals.
    flowing(&mut mode).await;
    let upstream = upstream_slot.insert(TcpStream::connect(upstream_addr).await?);
    // Small protocol frames (AMQP heartbeats, wire-protocol replies) must not
    // wait for Nagle on top of whatever delay the mode adds.
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (client_read, client_write) = client.split();
    let (upstream_read, upstream_write) = upstream.split();
    tokio::try_join!(
        pipe(client_read, upstream_write, mode.clone()),
        pipe(upstream_read, client_write, mode),
    )?;
    Ok(())
}

/// One direction. The reader stamps each chunk with when it is due and the
/// writer waits for that moment, so latency delays without throttling.
async fn pipe<R, W>(
    mut reader: R,
    mut writer: W,
    mode: watch::Receiver<ProxyMode>,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(QUEUE);
    let mut read_mode = mode.clone();
    let read = async move {
        let mut buf = vec![0u8; CHUNK];
        loop {
            flowing(&mut read_mode).await;
            let n = reader.read(&mut buf).await?;
            if n == 0 {
                // Dropping the sender tells the writer to pass the FIN on.
                return Ok::<(), io::Error>(());
            }
            let delay = match *read_mode.borrow() {
                ProxyMode::Latency(delay) => delay,
                ProxyMode::Pass | ProxyMode::Blackhole => Duration::ZERO,
            };
            if tx
                .send((Instant::now() + delay, buf[..n].to_vec()))
                .await
                .is_err()
            {
                return Ok(());
            }
        }
    };
    let mut write_mode = mode;
    let write = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            flowing(&mut write_mode).await;
            writer.write_all(&chunk).await?;
        }
        writer.shutdown().await
    };
    tokio::try_join!(read, write)?;
    Ok(())
}

/// Returns once the mode lets bytes move.
async fn flowing(mode: &mut watch::Receiver<ProxyMode>) {
    // An error means the proxy is gone; its connections are being cancelled.
    let _ = mode.wait_for(|m| *m != ProxyMode::Blackhole).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Echoes every byte back until the peer closes; counts the resets it sees.
    async fn echo_server() -> (SocketAddr, Arc<AtomicU64>) {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let resets = Arc::new(AtomicU64::new(0));
        let seen = resets.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    loop {
                        match stream.read(&mut buf).await {
                            Ok(0) => return,
                            Ok(n) => {
                                if stream.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                            Err(e) => {
                                if e.kind() == io::ErrorKind::ConnectionReset {
                                    seen.fetch_add(1, Ordering::Relaxed);
                                }
                                return;
                            }
                        }
                    }
                });
            }
        });
        (addr, resets)
    }

    async fn round_trip(stream: &mut TcpStream, bytes: &[u8]) -> Vec<u8> {
        stream.write_all(bytes).await.unwrap();
        let mut back = vec![0u8; bytes.len()];
        tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut back))
            .await
            .expect("echo within 5 s")
            .unwrap();
        back
    }

    async fn read_stalls(stream: &mut TcpStream, for_: Duration) -> bool {
        let mut byte = [0u8; 1];
        tokio::time::timeout(for_, stream.read(&mut byte))
            .await
            .is_err()
    }

    #[tokio::test]
    async fn pass_forwards_bytes_both_ways_and_half_closes() {
        let (echo, _) = echo_server().await;
        let proxy = FaultProxy::start(echo).await.unwrap();
        let mut client = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut client, b"hello").await, b"hello");
        let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(round_trip(&mut client, &big).await, big);
        // Our FIN reaches the echo server, whose FIN comes back as EOF.
        client.shutdown().await.unwrap();
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut rest))
            .await
            .unwrap()
            .unwrap();
        assert!(rest.is_empty());
        assert_eq!(proxy.stats().accepted, 1);
        proxy.stop().await;
    }

    #[tokio::test]
    async fn blackhole_stalls_live_and_new_connections_then_delivers_in_order() {
        let (echo, _) = echo_server().await;
        let proxy = FaultProxy::start(echo).await.unwrap();
        let mut live = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut live, b"before").await, b"before");

        proxy.set_mode(ProxyMode::Blackhole);
        live.write_all(b"during").await.unwrap();
        assert!(read_stalls(&mut live, Duration::from_millis(500)).await);
        // New connections are accepted (the connect succeeds) but go nowhere.
        let mut fresh = TcpStream::connect(proxy.addr()).await.unwrap();
        fresh.write_all(b"new").await.unwrap();
        assert!(read_stalls(&mut fresh, Duration::from_millis(300)).await);
        assert_eq!(proxy.stats().accepted, 2);

        proxy.set_mode(ProxyMode::Pass);
        let mut back = [0u8; 6];
        tokio::time::timeout(Duration::from_secs(5), live.read_exact(&mut back))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&back, b"during");
        let mut back = [0u8; 3];
        tokio::time::timeout(Duration::from_secs(5), fresh.read_exact(&mut back))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&back, b"new");
        proxy.stop().await;
    }

    #[tokio::test]
    async fn latency_delays_each_direction_and_keeps_order() {
        let (echo, _) = echo_server().await;
        let proxy = FaultProxy::start(echo).await.unwrap();
        let mut client = TcpStream::connect(proxy.addr()).await.unwrap();
        let started = std::time::Instant::now();
        round_trip(&mut client, b"warm").await;
        let baseline = started.elapsed();

        let delay = Duration::from_millis(150);
        proxy.set_mode(ProxyMode::Latency(delay));
        let started = std::time::Instant::now();
        assert_eq!(round_trip(&mut client, b"slow").await, b"slow");
        let elapsed = started.elapsed();
        assert!(
            elapsed >= 2 * delay,
            "a round trip crosses the proxy twice: {elapsed:?} (baseline {baseline:?})"
        );

        // Many small writes pipeline: order kept, total far below n * delay.
        let mut expected = Vec::new();
        let started = std::time::Instant::now();
        for i in 0..20u8 {
            client.write_all(&[i; 10]).await.unwrap();
            expected.extend_from_slice(&[i; 10]);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut back = vec![0u8; expected.len()];
        tokio::time::timeout(Duration::from_secs(10), client.read_exact(&mut back))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(back, expected);
        assert!(started.elapsed() < 20 * delay, "{:?}", started.elapsed());

        proxy.set_mode(ProxyMode::Pass);
        assert_eq!(round_trip(&mut client, b"fast").await, b"fast");
        proxy.stop().await;
    }

    #[tokio::test]
    async fn reset_all_aborts_live_connections_with_a_rst() {
        let (echo, upstream_resets) = echo_server().await;
        let proxy = FaultProxy::start(echo).await.unwrap();
        let mut first = TcpStream::connect(proxy.addr()).await.unwrap();
        let mut second = TcpStream::connect(proxy.addr()).await.unwrap();
        round_trip(&mut first, b"a").await;
        round_trip(&mut second, b"b").await;

        assert_eq!(proxy.reset_all_and_wait().await, 2);
        for client in [&mut first, &mut second] {
            let mut byte = [0u8; 1];
            let read = tokio::time::timeout(Duration::from_secs(5), client.read(&mut byte))
                .await
                .unwrap();
            let error = read.expect_err("a reset connection fails the read");
            assert_eq!(error.kind(), io::ErrorKind::ConnectionReset, "{error}");
        }
        let stats = proxy.stats();
        assert_eq!((stats.resets, stats.live), (2, 0));
        let deadline = Instant::now() + Duration::from_secs(5);
        while upstream_resets.load(Ordering::Relaxed) < 2 {
            assert!(Instant::now() < deadline, "the upstream saw the resets too");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }

        // The proxy itself keeps serving.
        let mut again = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut again, b"c").await, b"c");
        proxy.stop().await;
    }

    #[tokio::test]
    async fn the_sync_reset_all_resets_without_waiting() {
        let (echo, _) = echo_server().await;
        let proxy = FaultProxy::start(echo).await.unwrap();
        let mut client = TcpStream::connect(proxy.addr()).await.unwrap();
        round_trip(&mut client, b"x").await;
        assert_eq!(proxy.reset_all(), 1);
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), client.read(&mut byte))
            .await
            .unwrap();
        assert_eq!(
            read.expect_err("reset").kind(),
            io::ErrorKind::ConnectionReset
        );
        proxy.stop().await;
    }

    #[tokio::test]
    async fn refuse_aborts_new_connections_and_an_absent_upstream_resets() {
        let (echo, _) = echo_server().await;
        let proxy = FaultProxy::start(echo).await.unwrap();
        let mut live = TcpStream::connect(proxy.addr()).await.unwrap();
        round_trip(&mut live, b"x").await;
        proxy.set_refuse(true);
        let mut refused = TcpStream::connect(proxy.addr()).await.unwrap();
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), refused.read(&mut byte))
            .await
            .unwrap();
        assert_eq!(
            read.expect_err("refused").kind(),
            io::ErrorKind::ConnectionReset
        );
        assert_eq!(
            round_trip(&mut live, b"y").await,
            b"y",
            "live ones untouched"
        );
        assert_eq!(proxy.stats().refused, 1);
        proxy.set_refuse(false);
        proxy.stop().await;

        // Nothing listens upstream: the client is reset, as by the host itself.
        let gone = {
            let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
            listener.local_addr().unwrap()
        };
        let proxy = FaultProxy::start(gone).await.unwrap();
        let mut client = TcpStream::connect(proxy.addr()).await.unwrap();
        let read = tokio::time::timeout(Duration::from_secs(5), client.read(&mut byte))
            .await
            .unwrap();
        assert_eq!(
            read.expect_err("no upstream").kind(),
            io::ErrorKind::ConnectionReset
        );
        proxy.stop().await;
    }

    #[tokio::test]
    async fn stopping_aborts_connections_and_frees_the_port() {
        let (echo, _) = echo_server().await;
        let proxy = FaultProxy::start(echo).await.unwrap();
        let addr = proxy.addr();
        let mut client = TcpStream::connect(addr).await.unwrap();
        round_trip(&mut client, b"x").await;
        proxy.stop().await;
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), client.read(&mut byte))
            .await
            .unwrap();
        assert!(read.is_err(), "{read:?}");
        assert!(TcpStream::connect(addr).await.is_err());
    }

    #[tokio::test]
    async fn only_loopback_upstreams() {
        let outside = SocketAddr::from(([192, 0, 2, 1], 5672));
        assert!(FaultProxy::start(outside).await.is_err());
    }
}
