//! Membership datagrams on long-lived streams (`/starling/swim-stream/1`):
//! one outbound stream per admitted cell peer, opened at the first
//! datagram and kept, each datagram a frame on it (`datagram_frame`).
//!
//! The driver's thin I/O around the framing: a writer task per peer fed
//! by a bounded queue, a reader task per inbound stream, and one channel
//! of [`LinkEvent`]s back to the `Mesh` loop. A peer that does not speak
//! the protocol (a member built before it) is reported once and gets its
//! datagrams over the request-response protocol `/starling/swim/1`, which
//! every member still answers.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use libp2p::futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::{PeerId, StreamProtocol};
use libp2p_stream::{Control, OpenStreamError};
use tokio::sync::mpsc;

use crate::datagram_frame::{self, FramedDatagram, HEADER_LEN};

/// The protocol of framed membership datagrams.
pub const SWIM_STREAM_PROTOCOL: StreamProtocol = StreamProtocol::new("/starling/swim-stream/1");
/// Frames queued per peer before datagrams to it are dropped: SWIM
/// datagrams that wait long are worth nothing (a late ack is a lost ack).
const QUEUE_PER_PEER: usize = 32;
/// Datagrams read from all inbound streams that wait for the driver; a
/// full queue holds the readers (and QUIC's flow control the senders).
const INBOUND_QUEUE: usize = 1024;
/// Inbound streams read at once; more are refused (a peer opening stream
/// after stream must not cost a task each).
const MAX_READERS: usize = 1024;

/// What the link tasks tell the driver.
#[derive(Debug)]
pub enum LinkEvent {
    /// A datagram from `peer` (not yet checked for admission or cell).
    Datagram(PeerId, FramedDatagram),
    /// `peer` does not speak [`SWIM_STREAM_PROTOCOL`].
    Legacy(PeerId),
    /// Datagrams lost on a link, with the reason.
    Dropped(&'static str, usize),
}

/// How a datagram left [`DatagramLinks::send`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// Queued on the peer's stream.
    Framed,
    /// The peer speaks only the request-response protocol: the caller
    /// sends it that way.
    Legacy,
    /// Dropped, for this reason (counted by the caller).
    Dropped(&'static str),
}

/// The member's datagram links.
pub struct DatagramLinks {
    control: Control,
    writers: HashMap<PeerId, mpsc::Sender<Vec<u8>>>,
    legacy: HashSet<PeerId>,
    /// Sends every datagram by request-response and accepts no stream,
    /// as a member built before the streams (a test double).
    all_legacy: bool,
    events: mpsc::Sender<LinkEvent>,
}

impl DatagramLinks {
    /// Links over `control`'s behaviour; starts accepting inbound streams
    /// (unless `all_legacy`) and returns the receiver of their events.
    /// Must run inside a tokio runtime.
    pub fn start(
        mut control: Control,
        all_legacy: bool,
    ) -> Result<(Self, mpsc::Receiver<LinkEvent>), String> {
        let (events, receiver) = mpsc::channel(INBOUND_QUEUE);
        if !all_legacy {
            let incoming = control
                .accept(SWIM_STREAM_PROTOCOL)
                .map_err(|e| format!("cannot accept {SWIM_STREAM_PROTOCOL}: {e}"))?;
            tokio::spawn(accept_links(incoming, events.clone()));
        }
        let links = Self {
            control,
            writers: HashMap::new(),
            legacy: HashSet::new(),
            all_legacy,
            events,
        };
        Ok((links, receiver))
    }

    /// Queues `datagram` for `peer` (an admitted peer), opening its stream
    /// if there is none or the last one failed.
    pub fn send(&mut self, peer: PeerId, datagram: &FramedDatagram) -> Sent {
        if self.all_legacy || self.legacy.contains(&peer) {
            return Sent::Legacy;
        }
        let frame = match datagram_frame::encode_frame(datagram) {
            Ok(frame) => frame,
            Err(_) => return Sent::Dropped("oversized"),
        };
        if let Some(writer) = self.writers.get(&peer) {
            match writer.try_send(frame) {
                Ok(()) => return Sent::Framed,
                Err(mpsc::error::TrySendError::Full(_)) => return Sent::Dropped("link_full"),
                // The stream failed: open another below.
                Err(mpsc::error::TrySendError::Closed(frame)) => {
                    self.writers.remove(&peer);
                    return self.open(peer, frame);
                }
            }
        }
        self.open(peer, frame)
    }

    fn open(&mut self, peer: PeerId, first: Vec<u8>) -> Sent {
        let (tx, rx) = mpsc::channel(QUEUE_PER_PEER);
        if tx.try_send(first).is_err() {
            return Sent::Dropped("link_full");
        }
        self.writers.insert(peer, tx);
        let control = self.control.clone();
        let events = self.events.clone();
        tokio::spawn(write_link(control, peer, rx, events));
        Sent::Framed
    }

    /// Notes that `peer` speaks only the request-response protocol.
    pub fn mark_legacy(&mut self, peer: PeerId) {
        self.writers.remove(&peer);
        self.legacy.insert(peer);
    }

    /// Lets go of a peer whose last connection closed: its writer ends
    /// (and with it the stream), and it may come back upgraded.
    pub fn forget(&mut self, peer: &PeerId) {
        self.writers.remove(peer);
        self.legacy.remove(peer);
    }
}

/// Reads every inbound datagram stream in a task of its own, up to
/// `MAX_READERS` at once.
async fn accept_links(
    mut incoming: libp2p_stream::IncomingStreams,
    to_driver: mpsc::Sender<LinkEvent>,
) {
    let readers = Arc::new(AtomicUsize::new(0));
    while let Some((peer, stream)) = incoming.next().await {
        if readers.load(Ordering::Relaxed) >= MAX_READERS {
            let _ = to_driver
                .send(LinkEvent::Dropped("too_many_streams", 1))
                .await;
            continue;
        }
        readers.fetch_add(1, Ordering::Relaxed);
        let (readers, to_driver) = (readers.clone(), to_driver.clone());
        tokio::spawn(async move {
            read_link(peer, stream, &to_driver).await;
            readers.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// Opens `peer`'s stream and writes every queued frame on it until the
/// queue closes (the driver let go of the peer) or the stream fails.
async fn write_link(
    mut control: Control,
    peer: PeerId,
    mut queue: mpsc::Receiver<Vec<u8>>,
    events: mpsc::Sender<LinkEvent>,
) {
    let mut stream = match control.open_stream(peer, SWIM_STREAM_PROTOCOL).await {
        Ok(stream) => stream,
        Err(OpenStreamError::UnsupportedProtocol(_)) => {
            let _ = events.send(LinkEvent::Legacy(peer)).await;
            give_up(&mut queue, &events, "unsupported", 0).await;
            return;
        }
        Err(e) => {
            tracing::debug!(%peer, error = %e, "cannot open a datagram stream");
            give_up(&mut queue, &events, "stream_error", 0).await;
            return;
        }
    };
    while let Some(frame) = queue.recv().await {
        let written = async {
            stream.write_all(&frame).await?;
            stream.flush().await
        };
        if let Err(e) = written.await {
            tracing::debug!(%peer, error = %e, "datagram stream failed");
            give_up(&mut queue, &events, "stream_error", 1).await;
            return;
        }
    }
    let _ = stream.close().await;
}

/// Closes a writer's queue (the driver's next datagram opens a new
/// stream) and reports what it held, and `lost` more, as dropped.
async fn give_up(
    queue: &mut mpsc::Receiver<Vec<u8>>,
    events: &mpsc::Sender<LinkEvent>,
    reason: &'static str,
    lost: usize,
) {
    // Closed first, so that nothing enters after the count.
    queue.close();
    let n = lost + queue.len();
    if n > 0 {
        let _ = events.send(LinkEvent::Dropped(reason, n)).await;
    }
}

/// Reads frames from `peer`'s stream until it ends or sends a bad frame.
async fn read_link(peer: PeerId, mut stream: libp2p::Stream, events: &mpsc::Sender<LinkEvent>) {
    loop {
        let mut header = [0u8; HEADER_LEN];
        if stream.read_exact(&mut header).await.is_err() {
            return;
        }
        let len = match datagram_frame::frame_length(header) {
            Ok(len) => len,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "bad datagram frame: closing the stream");
                let _ = events.send(LinkEvent::Dropped("invalid", 1)).await;
                return;
            }
        };
        // Grows with what arrives, up to the checked length.
        let mut payload = Vec::new();
        match (&mut stream)
            .take(len as u64)
            .read_to_end(&mut payload)
            .await
        {
            Ok(n) if n == len => {}
            _ => return,
        }
        match datagram_frame::decode_payload(&payload) {
            Ok(datagram) => {
                if events
                    .send(LinkEvent::Datagram(peer, datagram))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Err(e) => {
                tracing::debug!(%peer, error = %e, "bad datagram frame: closing the stream");
                let _ = events.send(LinkEvent::Dropped("invalid", 1)).await;
                return;
            }
        }
    }
}
