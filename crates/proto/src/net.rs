//! A listening socket that a flood cannot knock over, shared by the agent's listener and the
//! server's comms port. A failed `accept` (out of file descriptors, most often) pauses the loop
//! instead of ending the process or spinning on it, and connections that have not yet proved who
//! they are (the TLS handshake, a polling agent's preface) are limited in number: past the limit, a
//! new connection is closed at once, so idle connections cannot use up the process's descriptors.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How long a connection may take to prove who it is: the TLS handshake, and on the comms port the
/// line a polling agent sends first.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What went wrong while accepting, for the caller's log.
#[derive(Debug)]
pub enum Trouble<'a> {
    /// `accept` failed; the listener waits `pause` before it tries again.
    AcceptFailed {
        error: &'a io::Error,
        pause: Duration,
    },
    /// `limit` connections are in their handshake: new ones are closed at once until one ends.
    /// Reported once each time the limit is reached.
    Full { limit: usize },
}

/// A TCP listener whose connections each hold a handshake permit until they have authenticated.
pub struct Listener {
    listener: TcpListener,
    handshakes: Arc<Semaphore>,
    limit: usize,
    failures: u32,
    full: bool,
}

/// The pause after `failures` failed accepts in a row: 50 ms, doubling, at most 1 second.
pub fn accept_backoff(failures: u32) -> Duration {
    Duration::from_millis(50u64 << failures.saturating_sub(1).min(5)).min(Duration::from_secs(1))
}

impl Listener {
    /// `limit`: how many connections may be in their handshake at once.
    pub fn new(listener: TcpListener, limit: usize) -> Listener {
        Listener {
            listener,
            handshakes: Arc::new(Semaphore::new(limit)),
            limit,
            failures: 0,
            full: false,
        }
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The next connection, with its handshake permit: drop the permit once the peer has
    /// authenticated (or the connection ends). Never fails; `report` hears of what went wrong.
    pub async fn accept(
        &mut self,
        mut report: impl FnMut(Trouble<'_>),
    ) -> (TcpStream, SocketAddr, OwnedSemaphorePermit) {
        loop {
            let (tcp, peer) = match self.listener.accept().await {
                Ok(accepted) => {
                    self.failures = 0;
                    accepted
                }
                // The peer gave up before it was accepted: nothing to wait for.
                Err(error)
                    if matches!(
                        error.kind(),
                        io::ErrorKind::ConnectionAborted
                            | io::ErrorKind::ConnectionReset
                            | io::ErrorKind::Interrupted
                    ) =>
                {
                    continue;
                }
                Err(error) => {
                    self.failures = self.failures.saturating_add(1);
                    let pause = accept_backoff(self.failures);
                    report(Trouble::AcceptFailed {
                        error: &error,
                        pause,
                    });
                    tokio::time::sleep(pause).await;
                    continue;
                }
            };
            match self.handshakes.clone().try_acquire_owned() {
                Ok(permit) => {
                    self.full = false;
                    return (tcp, peer, permit);
                }
                Err(_) => {
                    if !self.full {
                        self.full = true;
                        report(Trouble::Full { limit: self.limit });
                    }
                    drop(tcp);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[test]
    fn the_pause_doubles_from_50_ms_to_1_second() {
        let pauses: Vec<u64> = (1..=8)
            .map(|n| accept_backoff(n).as_millis() as u64)
            .collect();
        assert_eq!(pauses, [50, 100, 200, 400, 800, 1000, 1000, 1000]);
        assert_eq!(accept_backoff(u32::MAX), Duration::from_secs(1));
    }

    #[tokio::test]
    async fn past_the_limit_a_connection_is_closed_at_once_until_a_permit_is_back() {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut listener = Listener::new(tcp, 1);
        let address = listener.local_addr().unwrap();
        let _first = TcpStream::connect(address).await.unwrap();
        let (_held, _, permit) = listener.accept(|_| panic!("no trouble yet")).await;

        // The second and third find the limit reached: closed at once, reported once.
        let mut second = TcpStream::connect(address).await.unwrap();
        let mut third = TcpStream::connect(address).await.unwrap();
        let _fourth = TcpStream::connect(address).await.unwrap();
        let reports = std::sync::Mutex::new(Vec::new());
        let accepting = listener.accept(|t| reports.lock().unwrap().push(format!("{t:?}")));
        tokio::pin!(accepting);
        let mut byte = [0u8; 1];
        for closed in [&mut second, &mut third] {
            tokio::select! {
                _ = &mut accepting => panic!("accepted past the limit"),
                read = tokio::time::timeout(Duration::from_secs(10), closed.read(&mut byte)) => {
                    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "not closed: {read:?}");
                }
            }
        }
        // The fourth may have been closed too; once the permit is back, a new one is accepted.
        drop(permit);
        let _fifth = TcpStream::connect(address).await.unwrap();
        let accepted = tokio::time::timeout(Duration::from_secs(10), accepting).await;
        assert!(accepted.is_ok(), "nothing accepted once a permit was back");
        assert_eq!(*reports.lock().unwrap(), ["Full { limit: 1 }"]);
    }
}
