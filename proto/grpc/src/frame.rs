//! Length-delimited frames of the peer ↔ gateway control stream.
//!
//! A frame is an unsigned LEB128 varint giving the payload length, followed by that many bytes of one
//! encoded protobuf message: the protobuf "delimited" format (prost's `encode_length_delimited`,
//! Java's `writeDelimitedTo`, Go's `protodelim`). Peers write [`v1::PeerRequest`] frames, gateways
//! write [`v1::GatewayFrame`] frames, on one QUIC bidirectional stream (see `peer.proto`).
//!
//! Payloads are at most [`MAX_FRAME_LEN`] bytes (64 KiB) unless both sides agree on another limit.
//! The length prefix is checked before any payload byte is buffered, so a peer announcing a huge frame
//! costs at most [`MAX_LENGTH_PREFIX_LEN`] bytes, and gets [`DecodeFrameError::TooLarge`].
//!
//! - Sans-IO: [`FrameDecoder`] — [`feed`](FrameDecoder::feed) it bytes as they arrive, then pull
//!   frames with [`decode_next`](FrameDecoder::decode_next) until it returns `Ok(None)`; at end of
//!   stream, [`finish`](FrameDecoder::finish) reports a truncated last frame. [`encode_frame`] writes
//!   one frame into any [`BufMut`].
//! - Async (feature `tokio`, on by default): [`FrameReader`] over any `AsyncRead` (e.g. a quinn
//!   `RecvStream`) and [`write_frame`] to any `AsyncWrite`.
//!
//! [`v1::PeerRequest`]: crate::v1::PeerRequest
//! [`v1::GatewayFrame`]: crate::v1::GatewayFrame

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message;

/// Default maximum payload length of one frame, in bytes (64 KiB). Announced to peers as
/// `SessionLimits.max_frame_bytes`; a larger frame is a protocol error.
pub const MAX_FRAME_LEN: usize = 64 * 1024;

/// Longest length prefix accepted, in bytes: a varint of at most 5 bytes (up to 2^35 - 1). Longer
/// prefixes are [`DecodeFrameError::InvalidLengthPrefix`].
pub const MAX_LENGTH_PREFIX_LEN: usize = 5;

/// Bytes a reader asks for at least while waiting for a frame header. Small, because the buffer
/// stays allocated while a connection waits for its next frame (a gateway holds one per idle
/// session); once a header is read, the buffer grows to the whole frame at once.
#[cfg(feature = "tokio")]
const MIN_READ: usize = 256;

/// An idle decoder whose buffer grew beyond this gives it back, so idle sessions stay small.
const IDLE_BUFFER_CAPACITY: usize = 16 * 1024;

/// Why a message could not be written as a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeFrameError {
    /// The encoded message is larger than the maximum frame length.
    #[error("message of {len} bytes exceeds the maximum frame length of {max} bytes")]
    TooLarge {
        /// Encoded length of the message, in bytes.
        len: usize,
        /// The maximum frame length in force.
        max: usize,
    },
    /// The destination buffer cannot grow enough to hold the frame.
    #[error("frame needs {required} bytes but the buffer has room for {remaining}")]
    BufferFull {
        /// Length of the whole frame (prefix and payload), in bytes.
        required: usize,
        /// Room left in the buffer, in bytes.
        remaining: usize,
    },
}

/// Why bytes could not be read as a frame.
///
/// [`TooLarge`](Self::TooLarge) and [`InvalidLengthPrefix`](Self::InvalidLengthPrefix) lose the frame
/// boundary: the stream cannot be resynchronised and should be closed (for the gateway: with
/// `CONNECTION_CLOSE_CODE_FRAME_TOO_LARGE` or `..._PROTOCOL_VIOLATION`). A [`FrameDecoder`] keeps
/// returning them. [`Message`](Self::Message) affects only one frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeFrameError {
    /// The length prefix announces more than the maximum frame length. Nothing of the payload was
    /// buffered.
    #[error("frame of {len} bytes exceeds the maximum frame length of {max} bytes")]
    TooLarge {
        /// The announced payload length, in bytes.
        len: u64,
        /// The maximum frame length in force.
        max: usize,
    },
    /// The length prefix is not a varint of at most [`MAX_LENGTH_PREFIX_LEN`] bytes.
    #[error("frame length prefix is longer than {MAX_LENGTH_PREFIX_LEN} bytes")]
    InvalidLengthPrefix,
    /// The stream (or buffer) ended inside a frame.
    #[error("input ended inside a frame: {buffered} bytes of {} buffered",
        expected.map_or_else(|| "a partial length prefix".to_owned(), |e| e.to_string()))]
    Truncated {
        /// The whole frame's length (prefix and payload) if the prefix was complete.
        expected: Option<usize>,
        /// Bytes of the frame that were available.
        buffered: usize,
    },
    /// The payload is not a valid encoding of the expected message.
    #[error("frame payload is not a valid message: {0}")]
    Message(#[from] prost::DecodeError),
}

/// The length of the frame `msg` encodes to: prefix and payload, in bytes.
pub fn encoded_frame_len<M: Message>(msg: &M) -> usize {
    let len = msg.encoded_len();
    prost::length_delimiter_len(len) + len
}

/// Appends `msg` as one frame to `dst`, refusing messages over [`MAX_FRAME_LEN`].
pub fn encode_frame<M: Message>(msg: &M, dst: &mut impl BufMut) -> Result<(), EncodeFrameError> {
    encode_frame_with_limit(msg, MAX_FRAME_LEN, dst)
}

/// Appends `msg` as one frame to `dst`, refusing messages over `max_frame_len` bytes. Nothing is
/// written on error.
pub fn encode_frame_with_limit<M: Message>(
    msg: &M,
    max_frame_len: usize,
    dst: &mut impl BufMut,
) -> Result<(), EncodeFrameError> {
    let len = msg.encoded_len();
    if len > max_frame_len {
        return Err(EncodeFrameError::TooLarge {
            len,
            max: max_frame_len,
        });
    }
    let required = prost::length_delimiter_len(len) + len;
    if dst.remaining_mut() < required {
        return Err(EncodeFrameError::BufferFull {
            required,
            remaining: dst.remaining_mut(),
        });
    }
    msg.encode_length_delimited(dst)
        .map_err(|e| EncodeFrameError::BufferFull {
            required: e.required_capacity(),
            remaining: e.remaining(),
        })
}

/// `msg` as one frame in a new buffer, refusing messages over [`MAX_FRAME_LEN`].
pub fn frame_to_bytes<M: Message>(msg: &M) -> Result<Bytes, EncodeFrameError> {
    let mut buf = BytesMut::with_capacity(encoded_frame_len(msg));
    encode_frame(msg, &mut buf)?;
    Ok(buf.freeze())
}

/// Decodes the one frame at the start of `src`, refusing payloads over `max_frame_len` bytes.
/// Returns the message and the number of bytes the frame took; an incomplete frame is
/// [`DecodeFrameError::Truncated`]. For a stream of frames use [`FrameDecoder`].
pub fn decode_frame<M: Message + Default>(
    src: &[u8],
    max_frame_len: usize,
) -> Result<(M, usize), DecodeFrameError> {
    match parse_header(src, max_frame_len)? {
        Some(header) if src.len() >= header.frame_len() => {
            let payload = &src[header.prefix_len..header.frame_len()];
            Ok((M::decode(payload)?, header.frame_len()))
        }
        header => Err(DecodeFrameError::Truncated {
            expected: header.map(|h| h.frame_len()),
            buffered: src.len(),
        }),
    }
}

/// A parsed length prefix.
#[derive(Debug, Clone, Copy)]
struct Header {
    /// Bytes taken by the prefix.
    prefix_len: usize,
    /// Payload bytes announced.
    payload_len: usize,
}

impl Header {
    fn frame_len(self) -> usize {
        self.prefix_len + self.payload_len
    }
}

/// Parses the varint length prefix at the start of `buf`: `Ok(None)` while it is incomplete.
fn parse_header(buf: &[u8], max_frame_len: usize) -> Result<Option<Header>, DecodeFrameError> {
    let mut len: u64 = 0;
    for (i, &byte) in buf.iter().take(MAX_LENGTH_PREFIX_LEN).enumerate() {
        len |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return match usize::try_from(len) {
                Ok(payload_len) if payload_len <= max_frame_len => Ok(Some(Header {
                    prefix_len: i + 1,
                    payload_len,
                })),
                _ => Err(DecodeFrameError::TooLarge {
                    len,
                    max: max_frame_len,
                }),
            };
        }
    }
    if buf.len() >= MAX_LENGTH_PREFIX_LEN {
        Err(DecodeFrameError::InvalidLengthPrefix)
    } else {
        Ok(None)
    }
}

/// A sans-IO decoder of a stream of frames: feed it bytes in pieces of any size, pull whole frames.
///
/// It buffers at most one partial frame plus whatever the caller fed beyond it; a length prefix over
/// the limit fails before any payload is buffered. After a framing error
/// ([`DecodeFrameError::TooLarge`], [`DecodeFrameError::InvalidLengthPrefix`]) it drops its buffer,
/// ignores further input and repeats the error.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: BytesMut,
    max_frame_len: usize,
    failed: Option<DecodeFrameError>,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameDecoder {
    /// A decoder refusing frames over [`MAX_FRAME_LEN`].
    pub fn new() -> Self {
        Self::with_max_frame_len(MAX_FRAME_LEN)
    }

    /// A decoder refusing frames over `max_frame_len` bytes.
    pub fn with_max_frame_len(max_frame_len: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            max_frame_len,
            failed: None,
        }
    }

    /// The maximum payload length in force, in bytes.
    pub fn max_frame_len(&self) -> usize {
        self.max_frame_len
    }

    /// Bytes fed but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Appends received bytes. Pull frames after each call so the buffer stays within one frame.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.failed.is_none() {
            self.buf.extend_from_slice(bytes);
        }
    }

    /// Gives back the buffer's memory when no bytes are waiting in it. An emptied buffer may
    /// still share (and keep alive) the allocation the last frame came from; a holder of many
    /// idle decoders (a gateway, one per session) calls this after pulling frames.
    pub fn release_if_empty(&mut self) {
        if self.buf.is_empty() && self.failed.is_none() {
            self.buf = BytesMut::new();
        }
    }

    /// The next complete frame's payload, `Ok(None)` if more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Bytes>, DecodeFrameError> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        let header = match parse_header(&self.buf, self.max_frame_len) {
            Ok(Some(header)) => header,
            Ok(None) => return Ok(None),
            Err(err) => {
                self.buf = BytesMut::new();
                self.failed = Some(err.clone());
                return Err(err);
            }
        };
        if self.buf.len() < header.frame_len() {
            return Ok(None);
        }
        self.buf.advance(header.prefix_len);
        let payload = self.buf.split_to(header.payload_len).freeze();
        if self.buf.is_empty() && self.buf.capacity() > IDLE_BUFFER_CAPACITY {
            self.buf = BytesMut::new();
        }
        Ok(Some(payload))
    }

    /// The next complete frame decoded as `M`, `Ok(None)` if more bytes are needed. A payload that is
    /// not a valid `M` is [`DecodeFrameError::Message`]; the frame is consumed and decoding can go on.
    pub fn decode_next<M: Message + Default>(&mut self) -> Result<Option<M>, DecodeFrameError> {
        match self.next_frame()? {
            Some(payload) => Ok(Some(M::decode(payload)?)),
            None => Ok(None),
        }
    }

    /// Call at end of input: `Ok` if it ended on a frame boundary, otherwise
    /// [`DecodeFrameError::Truncated`] (or the framing error already met).
    pub fn finish(&self) -> Result<(), DecodeFrameError> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        if self.buf.is_empty() {
            return Ok(());
        }
        let expected = parse_header(&self.buf, self.max_frame_len)?.map(Header::frame_len);
        Err(DecodeFrameError::Truncated {
            expected,
            buffered: self.buf.len(),
        })
    }

    /// How many more bytes the next frame needs, at least 1 (while the prefix is incomplete: 1).
    pub fn bytes_needed(&self) -> usize {
        match parse_header(&self.buf, self.max_frame_len) {
            Ok(Some(header)) => header.frame_len().saturating_sub(self.buf.len()).max(1),
            _ => 1,
        }
    }

    /// The buffer to read into, with room for at least the rest of the next frame.
    #[cfg(feature = "tokio")]
    fn read_buffer(&mut self) -> &mut BytesMut {
        let want = self.bytes_needed().max(MIN_READ);
        if self.buf.capacity() - self.buf.len() < want {
            self.buf.reserve(want);
        }
        &mut self.buf
    }
}

#[cfg(feature = "tokio")]
pub use self::io::{
    FrameReader, ReadFrameError, WriteFrameError, write_frame, write_frame_with_limit,
};

#[cfg(feature = "tokio")]
mod io {
    use bytes::Bytes;
    use prost::Message;
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

    use super::{
        DecodeFrameError, EncodeFrameError, FrameDecoder, MAX_FRAME_LEN, encode_frame_with_limit,
        encoded_frame_len,
    };

    /// Why a frame could not be read from a stream.
    #[derive(Debug, thiserror::Error)]
    #[non_exhaustive]
    pub enum ReadFrameError {
        /// Reading the stream failed.
        #[error("reading a frame failed: {0}")]
        Io(#[from] std::io::Error),
        /// The bytes read are not a valid frame (too large, truncated, undecodable).
        #[error(transparent)]
        Frame(#[from] DecodeFrameError),
    }

    /// Why a frame could not be written to a stream.
    #[derive(Debug, thiserror::Error)]
    #[non_exhaustive]
    pub enum WriteFrameError {
        /// Writing the stream failed.
        #[error("writing a frame failed: {0}")]
        Io(#[from] std::io::Error),
        /// The message cannot be a frame (too large).
        #[error(transparent)]
        Frame(#[from] EncodeFrameError),
    }

    /// Writes `msg` as one frame (at most [`MAX_FRAME_LEN`]) with a single `write_all`; does not
    /// flush. Not cancel safe: a cancelled write may leave a partial frame on the stream.
    pub async fn write_frame<W, M>(writer: &mut W, msg: &M) -> Result<(), WriteFrameError>
    where
        W: AsyncWrite + Unpin + ?Sized,
        M: Message,
    {
        write_frame_with_limit(writer, msg, MAX_FRAME_LEN).await
    }

    /// Writes `msg` as one frame of at most `max_frame_len` payload bytes; nothing is written if it
    /// is larger.
    pub async fn write_frame_with_limit<W, M>(
        writer: &mut W,
        msg: &M,
        max_frame_len: usize,
    ) -> Result<(), WriteFrameError>
    where
        W: AsyncWrite + Unpin + ?Sized,
        M: Message,
    {
        let mut buf = Vec::with_capacity(encoded_frame_len(msg));
        encode_frame_with_limit(msg, max_frame_len, &mut buf)?;
        writer.write_all(&buf).await?;
        Ok(())
    }

    /// Reads frames from an `AsyncRead` (e.g. a quinn `RecvStream`) through a [`FrameDecoder`].
    ///
    /// Reads are sized to the frame being read (at least 1 KiB), so an idle reader holds little
    /// memory. [`read_frame`](Self::read_frame) is cancel safe: bytes already read stay buffered.
    #[derive(Debug)]
    pub struct FrameReader<R> {
        reader: R,
        decoder: FrameDecoder,
    }

    impl<R: AsyncRead + Unpin> FrameReader<R> {
        /// A reader refusing frames over [`MAX_FRAME_LEN`].
        pub fn new(reader: R) -> Self {
            Self::with_max_frame_len(reader, MAX_FRAME_LEN)
        }

        /// A reader refusing frames over `max_frame_len` bytes.
        pub fn with_max_frame_len(reader: R, max_frame_len: usize) -> Self {
            Self {
                reader,
                decoder: FrameDecoder::with_max_frame_len(max_frame_len),
            }
        }

        /// The next frame decoded as `M`; `Ok(None)` when the stream ended cleanly between frames.
        /// A stream ending inside a frame is [`DecodeFrameError::Truncated`].
        pub async fn read_frame<M: Message + Default>(
            &mut self,
        ) -> Result<Option<M>, ReadFrameError> {
            match self.read_frame_bytes().await? {
                Some(payload) => Ok(Some(M::decode(payload).map_err(DecodeFrameError::from)?)),
                None => Ok(None),
            }
        }

        /// The next frame's raw payload; `Ok(None)` when the stream ended cleanly between frames.
        pub async fn read_frame_bytes(&mut self) -> Result<Option<Bytes>, ReadFrameError> {
            loop {
                if let Some(payload) = self.decoder.next_frame()? {
                    return Ok(Some(payload));
                }
                let read = self.reader.read_buf(self.decoder.read_buffer()).await?;
                if read == 0 {
                    self.decoder.finish()?;
                    return Ok(None);
                }
            }
        }

        /// The underlying reader.
        pub fn get_ref(&self) -> &R {
            &self.reader
        }

        /// The underlying reader, mutably (reading from it directly loses frame sync).
        pub fn get_mut(&mut self) -> &mut R {
            &mut self.reader
        }

        /// The decoder, e.g. to see how many bytes are buffered.
        pub fn decoder(&self) -> &FrameDecoder {
            &self.decoder
        }

        /// The underlying reader; bytes buffered but not yet returned as frames are lost.
        pub fn into_inner(self) -> R {
            self.reader
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1;

    fn heartbeat(id: u64) -> v1::PeerRequest {
        v1::PeerRequest {
            request_id: id,
            request: Some(v1::peer_request::Request::Heartbeat(v1::Heartbeat {
                clock: None,
            })),
        }
    }

    #[test]
    fn header_snapshot() {
        // 300 bytes of payload: varint 0xAC 0x02.
        let msg = v1::SendMessage {
            recipient: None,
            payload: Bytes::from(vec![7u8; 297]),
            client_message_id: Bytes::new(),
        };
        let frame = frame_to_bytes(&msg).unwrap();
        assert_eq!(msg.encoded_len(), 300);
        assert_eq!(&frame[..3], &[0xAC, 0x02, 0x12]);
        assert_eq!(frame.len(), 302);
        assert_eq!(encoded_frame_len(&msg), 302);
    }

    #[test]
    fn empty_message_is_a_one_byte_frame() {
        let frame = frame_to_bytes(&v1::Logout {}).unwrap();
        assert_eq!(frame.as_ref(), &[0x00]);
        let mut d = FrameDecoder::new();
        d.feed(&frame);
        assert_eq!(d.decode_next::<v1::Logout>().unwrap(), Some(v1::Logout {}));
        assert_eq!(d.decode_next::<v1::Logout>().unwrap(), None);
        d.finish().unwrap();
    }

    #[test]
    fn byte_by_byte_feeding() {
        let mut stream = BytesMut::new();
        for id in 1..=3 {
            encode_frame(&heartbeat(id), &mut stream).unwrap();
        }
        let mut d = FrameDecoder::new();
        let mut got = Vec::new();
        for byte in stream.iter() {
            d.feed(&[*byte]);
            while let Some(m) = d.decode_next::<v1::PeerRequest>().unwrap() {
                got.push(m.request_id);
            }
        }
        assert_eq!(got, vec![1, 2, 3]);
        d.finish().unwrap();
    }

    #[test]
    fn oversize_prefix_fails_before_buffering_the_payload() {
        let mut d = FrameDecoder::new();
        let mut prefix = Vec::new();
        prost::encode_length_delimiter(1 << 20, &mut prefix).unwrap();
        d.feed(&prefix);
        let err = d.next_frame().unwrap_err();
        assert_eq!(
            err,
            DecodeFrameError::TooLarge {
                len: 1 << 20,
                max: MAX_FRAME_LEN
            }
        );
        // Poisoned: later input is ignored and the error repeats.
        d.feed(&[0u8; 100]);
        assert_eq!(d.buffered(), 0);
        assert_eq!(d.next_frame().unwrap_err(), err);
        assert_eq!(d.finish().unwrap_err(), err);
    }

    #[test]
    fn limit_is_inclusive() {
        let mut d = FrameDecoder::with_max_frame_len(4);
        d.feed(&[4, 1, 2, 3, 4]);
        assert_eq!(d.next_frame().unwrap().unwrap().as_ref(), &[1, 2, 3, 4]);
        d.feed(&[5]);
        assert!(matches!(
            d.next_frame(),
            Err(DecodeFrameError::TooLarge { len: 5, max: 4 })
        ));
    }

    #[test]
    fn overlong_prefix_is_invalid() {
        let mut d = FrameDecoder::new();
        d.feed(&[0x80, 0x80, 0x80, 0x80]);
        assert_eq!(d.next_frame().unwrap(), None);
        d.feed(&[0x80]);
        assert_eq!(
            d.next_frame().unwrap_err(),
            DecodeFrameError::InvalidLengthPrefix
        );
    }

    #[test]
    fn non_minimal_prefix_is_accepted() {
        let mut d = FrameDecoder::new();
        d.feed(&[0x81, 0x00, 0xAA]);
        assert_eq!(d.next_frame().unwrap().unwrap().as_ref(), &[0xAA]);
    }

    #[test]
    fn truncated_input_is_reported_at_finish() {
        let frame = frame_to_bytes(&heartbeat(9)).unwrap();
        let mut d = FrameDecoder::new();
        d.feed(&frame[..frame.len() - 1]);
        assert_eq!(d.decode_next::<v1::PeerRequest>().unwrap(), None);
        assert_eq!(
            d.finish().unwrap_err(),
            DecodeFrameError::Truncated {
                expected: Some(frame.len()),
                buffered: frame.len() - 1
            }
        );
        let mut d = FrameDecoder::new();
        d.feed(&[0x80]);
        assert_eq!(
            d.finish().unwrap_err(),
            DecodeFrameError::Truncated {
                expected: None,
                buffered: 1
            }
        );
        assert_eq!(
            decode_frame::<v1::PeerRequest>(&frame[..2], MAX_FRAME_LEN).unwrap_err(),
            DecodeFrameError::Truncated {
                expected: Some(frame.len()),
                buffered: 2
            }
        );
    }

    #[test]
    fn garbage_payload_is_a_message_error_and_decoding_goes_on() {
        let mut d = FrameDecoder::new();
        // A 2-byte payload holding field 1 as an unterminated varint, then a valid frame.
        d.feed(&[2, 0x08, 0xFF]);
        d.feed(&frame_to_bytes(&heartbeat(5)).unwrap());
        assert!(matches!(
            d.decode_next::<v1::PeerRequest>(),
            Err(DecodeFrameError::Message(_))
        ));
        assert_eq!(
            d.decode_next::<v1::PeerRequest>().unwrap(),
            Some(heartbeat(5))
        );
    }

    #[test]
    fn encoding_refuses_oversize_and_full_buffers() {
        let msg = v1::SendMessage {
            recipient: None,
            payload: Bytes::from(vec![0u8; MAX_FRAME_LEN]),
            client_message_id: Bytes::new(),
        };
        let mut out = Vec::new();
        assert_eq!(
            encode_frame(&msg, &mut out),
            Err(EncodeFrameError::TooLarge {
                len: msg.encoded_len(),
                max: MAX_FRAME_LEN
            })
        );
        assert!(out.is_empty());

        let mut small = [0u8; 2];
        let mut slice = &mut small[..];
        assert_eq!(
            encode_frame(&heartbeat(1), &mut slice),
            Err(EncodeFrameError::BufferFull {
                required: encoded_frame_len(&heartbeat(1)),
                remaining: 2
            })
        );
    }
}
