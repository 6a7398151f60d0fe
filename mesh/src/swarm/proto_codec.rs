//! A request-response codec for protobuf messages: one message per
//! stream, its end marked by the end of the stream, as libp2p's own CBOR
//! codec frames them, but in the encoding DESIGN.md asks of everything
//! that crosses agent versions. Each message type states its own largest
//! size; a longer one is an error, not a message cut short.

use std::io;
use std::marker::PhantomData;

use async_trait::async_trait;
use libp2p::futures::prelude::*;
use libp2p::request_response;
use libp2p::StreamProtocol;

/// A message of a request-response protocol, as its protobuf bytes.
pub trait WireMessage: Sized + Send {
    /// Largest encoding read from a peer.
    const MAX_BYTES: u64;
    /// The bytes sent.
    fn to_wire(&self) -> Vec<u8>;
    /// A message from a peer, or why it is refused.
    fn from_wire(bytes: &[u8]) -> Result<Self, String>;
}

/// An answer with nothing to say (a report taken): empty on the wire, and
/// whatever a later version may put in it is skipped.
impl WireMessage for () {
    const MAX_BYTES: u64 = 64;

    fn to_wire(&self) -> Vec<u8> {
        Vec::new()
    }

    fn from_wire(_: &[u8]) -> Result<Self, String> {
        Ok(())
    }
}

/// The codec of a protocol whose requests are `Req` and answers `Resp`.
pub struct ProtoCodec<Req, Resp>(PhantomData<fn() -> (Req, Resp)>);

impl<Req, Resp> Default for ProtoCodec<Req, Resp> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<Req, Resp> Clone for ProtoCodec<Req, Resp> {
    fn clone(&self) -> Self {
        Self::default()
    }
}

/// A request-response behaviour speaking protobuf.
pub type ProtoBehaviour<Req, Resp> = request_response::Behaviour<ProtoCodec<Req, Resp>>;

#[async_trait]
impl<Req: WireMessage, Resp: WireMessage> request_response::Codec for ProtoCodec<Req, Resp> {
    type Protocol = StreamProtocol;
    type Request = Req;
    type Response = Resp;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Req>
    where
        T: AsyncRead + Unpin + Send,
    {
        let bytes = read_within(io, Req::MAX_BYTES).await?;
        Req::from_wire(&bytes).map_err(invalid)
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Resp>
    where
        T: AsyncRead + Unpin + Send,
    {
        let bytes = read_within(io, Resp::MAX_BYTES).await?;
        Resp::from_wire(&bytes).map_err(invalid)
    }

    async fn write_request<T>(&mut self, _: &StreamProtocol, io: &mut T, req: Req) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        io.write_all(&req.to_wire()).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        resp: Resp,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        io.write_all(&resp.to_wire()).await
    }
}

/// The stream's bytes up to its end, or an error once they pass `max`
/// (the buffer grows with what arrives, never by a length a peer names).
async fn read_within<T: AsyncRead + Unpin + Send>(io: &mut T, max: u64) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    io.take(max.saturating_add(1))
        .read_to_end(&mut bytes)
        .await?;
    if bytes.len() as u64 > max {
        return Err(invalid(format!("a message over {max} bytes")));
    }
    Ok(bytes)
}

fn invalid(why: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

#[cfg(test)]
mod tests {
    use super::*;
    use request_response::Codec;

    /// A test message: its bytes as they are, at most 8.
    #[derive(Debug, PartialEq)]
    struct Small(Vec<u8>);

    impl WireMessage for Small {
        const MAX_BYTES: u64 = 8;
        fn to_wire(&self) -> Vec<u8> {
            self.0.clone()
        }
        fn from_wire(bytes: &[u8]) -> Result<Self, String> {
            if bytes.first() == Some(&0xff) {
                return Err("starts with 0xff".into());
            }
            Ok(Small(bytes.to_vec()))
        }
    }

    const PROTOCOL: StreamProtocol = StreamProtocol::new("/test/1");

    #[tokio::test]
    async fn a_message_goes_through_and_one_too_long_or_refused_is_an_error() {
        let mut codec = ProtoCodec::<Small, ()>::default();
        let mut wire = Vec::new();
        codec
            .write_request(&PROTOCOL, &mut wire, Small(vec![1, 2, 3]))
            .await
            .unwrap();
        let back = codec
            .read_request(&PROTOCOL, &mut libp2p::futures::io::Cursor::new(wire))
            .await
            .unwrap();
        assert_eq!(back, Small(vec![1, 2, 3]));
        let exactly = codec
            .read_request(
                &PROTOCOL,
                &mut libp2p::futures::io::Cursor::new(vec![7u8; 8]),
            )
            .await;
        assert_eq!(
            exactly.unwrap(),
            Small(vec![7; 8]),
            "the limit itself is taken"
        );
        let long = codec
            .read_request(
                &PROTOCOL,
                &mut libp2p::futures::io::Cursor::new(vec![7u8; 9]),
            )
            .await
            .unwrap_err();
        assert_eq!(long.kind(), io::ErrorKind::InvalidData);
        assert!(long.to_string().contains("over 8 bytes"), "{long}");
        let refused = codec
            .read_request(&PROTOCOL, &mut libp2p::futures::io::Cursor::new(vec![0xff]))
            .await
            .unwrap_err();
        assert!(refused.to_string().contains("0xff"), "{refused}");
        let mut ack = Vec::new();
        codec.write_response(&PROTOCOL, &mut ack, ()).await.unwrap();
        assert!(ack.is_empty());
        codec
            .read_response(&PROTOCOL, &mut libp2p::futures::io::Cursor::new(vec![1, 2]))
            .await
            .expect("what a later version adds to an acknowledgement is skipped");
    }
}
