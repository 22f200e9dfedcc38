//! TURN ChannelData framing (RFC 8656 §12.4): the 4-byte header that carries
//! application data over a bound channel instead of a Send/Data indication.
//!
//! ```text
//! |         Channel Number        |            Length             |
//! |                       Application Data                        |
//! |                                                  (padding)    |
//! ```
//!
//! Over UDP the padding to 4 bytes is optional, so [`ChannelData::parse`] accepts a
//! datagram with or without it; over TCP/TLS it is mandatory and
//! [`ChannelData::parse_stream`] reads one padded frame from a byte stream.

/// Length of the ChannelData header.
pub const CHANNEL_DATA_HEADER_LEN: usize = 4;

/// A TURN channel number, 0x4000..=0x4FFF (RFC 8656 §12).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelNumber(u16);

impl ChannelNumber {
    /// The lowest valid channel number.
    pub const MIN: ChannelNumber = ChannelNumber(0x4000);
    /// The highest valid channel number.
    pub const MAX: ChannelNumber = ChannelNumber(0x4FFF);

    /// The channel, or `None` outside 0x4000..=0x4FFF.
    pub const fn new(value: u16) -> Option<ChannelNumber> {
        if value >= Self::MIN.0 && value <= Self::MAX.0 {
            Some(ChannelNumber(value))
        } else {
            None
        }
    }

    /// The channel number.
    pub const fn value(self) -> u16 {
        self.0
    }
}

/// Whether to pad an encoded ChannelData message to a multiple of 4 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum ChannelDataPadding {
    /// No padding: the usual choice over UDP.
    #[default]
    None,
    /// Pad with zeros to a multiple of 4: required over TCP and TLS.
    FourBytes,
}

/// Why bytes are not a valid ChannelData message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChannelDataError {
    /// Fewer than the 4 header bytes.
    #[error("{len} bytes is shorter than the 4-byte ChannelData header")]
    TooShort {
        /// How many bytes there were.
        len: usize,
    },
    /// The channel number is outside 0x4000..=0x4FFF.
    #[error("channel number {channel:#06x} is outside 0x4000..=0x4fff")]
    InvalidChannel {
        /// The number found.
        channel: u16,
    },
    /// The length field announces more data than there is.
    #[error("ChannelData announces {declared} bytes but {available} follow")]
    Truncated {
        /// The length field.
        declared: u16,
        /// Bytes after the header.
        available: usize,
    },
    /// More bytes after the data than padding to 4 accounts for.
    #[error("{extra} bytes after the ChannelData payload, more than its padding")]
    TrailingBytes {
        /// Bytes beyond the data.
        extra: usize,
    },
}

/// Application data longer than the 16-bit length field can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{len} bytes of data do not fit a ChannelData message (max 65535)")]
pub struct ChannelDataTooLong {
    /// The data length.
    pub len: usize,
}

/// A ChannelData message: a channel number and the data, borrowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ChannelData<'a> {
    channel: ChannelNumber,
    data: &'a [u8],
}

impl<'a> ChannelData<'a> {
    /// A message to encode; fails when `data` exceeds 65535 bytes.
    pub fn new(
        channel: ChannelNumber,
        data: &'a [u8],
    ) -> Result<ChannelData<'a>, ChannelDataTooLong> {
        if data.len() > usize::from(u16::MAX) {
            return Err(ChannelDataTooLong { len: data.len() });
        }
        Ok(ChannelData { channel, data })
    }

    /// The channel.
    pub const fn channel(&self) -> ChannelNumber {
        self.channel
    }

    /// The application data.
    pub const fn data(&self) -> &'a [u8] {
        self.data
    }

    /// Reads the header: the channel and the announced data length.
    fn header(bytes: &[u8]) -> Result<(ChannelNumber, usize, &[u8]), ChannelDataError> {
        let Some(([c0, c1, l0, l1], rest)) = bytes.split_first_chunk::<CHANNEL_DATA_HEADER_LEN>()
        else {
            return Err(ChannelDataError::TooShort { len: bytes.len() });
        };
        let channel = u16::from_be_bytes([*c0, *c1]);
        let channel =
            ChannelNumber::new(channel).ok_or(ChannelDataError::InvalidChannel { channel })?;
        let declared = u16::from_be_bytes([*l0, *l1]);
        if usize::from(declared) > rest.len() {
            return Err(ChannelDataError::Truncated {
                declared,
                available: rest.len(),
            });
        }
        Ok((channel, usize::from(declared), rest))
    }

    /// Parses one UDP datagram: padded to 4 bytes or not, but no more than the
    /// padding after the data.
    pub fn parse(datagram: &'a [u8]) -> Result<ChannelData<'a>, ChannelDataError> {
        let (channel, len, rest) = Self::header(datagram)?;
        let (data, extra) = rest
            .split_at_checked(len)
            .ok_or(ChannelDataError::Truncated {
                declared: u16::try_from(len).unwrap_or(u16::MAX),
                available: rest.len(),
            })?;
        if extra.len() > padded4(len) - len {
            return Err(ChannelDataError::TrailingBytes { extra: extra.len() });
        }
        Ok(ChannelData { channel, data })
    }

    /// Parses one padded frame from the front of a TCP/TLS byte stream; returns it
    /// and the number of bytes it took, so the caller can advance. A frame not yet
    /// complete is [`ChannelDataError::Truncated`] or
    /// [`ChannelDataError::TooShort`]: read more and retry.
    pub fn parse_stream(bytes: &'a [u8]) -> Result<(ChannelData<'a>, usize), ChannelDataError> {
        let (channel, len, rest) = Self::header(bytes)?;
        let framed = padded4(len);
        if framed > rest.len() {
            return Err(ChannelDataError::Truncated {
                declared: u16::try_from(len).unwrap_or(u16::MAX),
                available: rest.len(),
            });
        }
        let data = rest.get(..len).unwrap_or(&[]);
        Ok((
            ChannelData { channel, data },
            CHANNEL_DATA_HEADER_LEN + framed,
        ))
    }

    /// Exactly how many bytes [`encode_into`](Self::encode_into) writes.
    pub fn encoded_len(&self, padding: ChannelDataPadding) -> usize {
        CHANNEL_DATA_HEADER_LEN
            + match padding {
                ChannelDataPadding::None => self.data.len(),
                ChannelDataPadding::FourBytes => padded4(self.data.len()),
            }
    }

    /// Appends the message to `out`; returns the bytes written.
    pub fn encode_into(&self, out: &mut Vec<u8>, padding: ChannelDataPadding) -> usize {
        let before = out.len();
        out.extend_from_slice(&self.channel.0.to_be_bytes());
        // `new` and the parsers keep the data within u16.
        let len = u16::try_from(self.data.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(self.data);
        if padding == ChannelDataPadding::FourBytes {
            let pad = padded4(self.data.len()) - self.data.len();
            out.extend(std::iter::repeat_n(0, pad));
        }
        out.len() - before
    }
}

/// `len` rounded up to a multiple of 4.
const fn padded4(len: usize) -> usize {
    len.div_ceil(4) * 4
}

#[cfg(test)]
mod tests {
    use super::*;

    fn channel(n: u16) -> ChannelNumber {
        ChannelNumber::new(n).unwrap()
    }

    #[test]
    fn channel_number_range() {
        assert_eq!(ChannelNumber::new(0x3FFF), None);
        assert_eq!(ChannelNumber::new(0x4000), Some(ChannelNumber::MIN));
        assert_eq!(ChannelNumber::new(0x4FFF), Some(ChannelNumber::MAX));
        assert_eq!(ChannelNumber::new(0x5000), None);
        assert_eq!(ChannelNumber::new(0xFFFF), None);
    }

    #[test]
    fn encode_padded_and_unpadded() {
        let msg = ChannelData::new(channel(0x4001), b"hello").unwrap();
        let mut out = Vec::new();
        assert_eq!(msg.encode_into(&mut out, ChannelDataPadding::None), 9);
        assert_eq!(out, [0x40, 0x01, 0x00, 0x05, b'h', b'e', b'l', b'l', b'o']);
        assert_eq!(msg.encoded_len(ChannelDataPadding::None), 9);

        let mut padded = Vec::new();
        assert_eq!(
            msg.encode_into(&mut padded, ChannelDataPadding::FourBytes),
            12
        );
        assert_eq!(&padded[9..], [0, 0, 0]);
        assert_eq!(msg.encoded_len(ChannelDataPadding::FourBytes), 12);

        assert_eq!(ChannelData::parse(&out), Ok(msg));
        assert_eq!(ChannelData::parse(&padded), Ok(msg));
        assert_eq!(ChannelData::parse_stream(&padded), Ok((msg, 12)));
    }

    #[test]
    fn decode_errors() {
        assert_eq!(
            ChannelData::parse(&[0x40, 0x00, 0x00]),
            Err(ChannelDataError::TooShort { len: 3 })
        );
        assert_eq!(
            ChannelData::parse(&[0x50, 0x00, 0x00, 0x00]),
            Err(ChannelDataError::InvalidChannel { channel: 0x5000 })
        );
        assert_eq!(
            ChannelData::parse(&[0x3F, 0xFF, 0x00, 0x00]),
            Err(ChannelDataError::InvalidChannel { channel: 0x3FFF })
        );
        assert_eq!(
            ChannelData::parse(&[0x40, 0x00, 0x00, 0x02, 1]),
            Err(ChannelDataError::Truncated {
                declared: 2,
                available: 1
            })
        );
        // 1 byte of data may carry up to 3 bytes of padding, not 4
        assert!(ChannelData::parse(&[0x40, 0x00, 0x00, 0x01, 1, 0, 0, 0]).is_ok());
        assert_eq!(
            ChannelData::parse(&[0x40, 0x00, 0x00, 0x01, 1, 0, 0, 0, 0]),
            Err(ChannelDataError::TrailingBytes { extra: 4 })
        );
        // an empty payload takes no padding
        assert_eq!(
            ChannelData::parse(&[0x40, 0x00, 0x00, 0x00, 0]),
            Err(ChannelDataError::TrailingBytes { extra: 1 })
        );
        // a stream frame needs its padding
        assert_eq!(
            ChannelData::parse_stream(&[0x40, 0x00, 0x00, 0x01, 1]),
            Err(ChannelDataError::Truncated {
                declared: 1,
                available: 1
            })
        );
        let big = vec![0; 65_536];
        assert_eq!(
            ChannelData::new(channel(0x4000), &big),
            Err(ChannelDataTooLong { len: 65_536 })
        );
    }
}
