//! Demultiplexing one UDP socket by the first byte of each datagram (RFC 7983 as
//! updated by RFC 9443).
//!
//! The SDK binds one socket for STUN, QUIC, TURN and hole punching, so every
//! received datagram goes through [`classify`] first:
//!
//! | first byte | protocol |
//! |---|---|
//! | 0..=3 | STUN |
//! | 16..=19 | ZRTP |
//! | 20..=63 | DTLS |
//! | 64..=79 | TURN ChannelData, *if sent by a TURN server we use*; QUIC otherwise |
//! | 80..=127 | QUIC (short header: the QUIC bit 0x40 is set) |
//! | 128..=191 | RTP / RTCP |
//! | 192..=255 | QUIC (long header: form bit and QUIC bit set) |
//! | 4..=15 | unknown (drop) |
//!
//! RFC 9443 gives QUIC every first byte with the QUIC bit (0x40) set. Long-header
//! packets (Initial, Handshake, 0-RTT, Retry) start at 0xC0, so routing 192..=255
//! elsewhere would break every QUIC handshake on the socket. This only works when
//! the QUIC endpoint does not grease the QUIC bit (RFC 9287), which RFC 9443 asks of
//! multiplexing endpoints; Version Negotiation packets, whose first byte is
//! arbitrary above 0x80, can land in the RTP range and are lost, which is harmless
//! for a single-version deployment.

use crate::stun::{HEADER_LEN, MAGIC_COOKIE};

/// What protocol a datagram belongs to, judged from its first byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PacketKind {
    /// STUN (first byte 0..=3). Confirm with [`is_stun`] or a full parse.
    Stun,
    /// ZRTP (16..=19).
    Zrtp,
    /// DTLS (20..=63).
    Dtls,
    /// TURN ChannelData (64..=79 from a TURN server we use).
    ChannelData,
    /// QUIC (64..=127 otherwise, and 192..=255).
    Quic,
    /// RTP or RTCP (128..=191).
    Rtp,
    /// Empty, or a first byte no protocol claims (4..=15): drop it.
    Unknown,
}

/// Where a datagram came from, which decides the 64..=79 range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DatagramSource {
    /// A TURN server this socket has an allocation on: 64..=79 is ChannelData.
    TurnServer,
    /// Anyone else: 64..=79 is QUIC.
    Other,
}

/// Classifies a datagram by its first byte.
pub fn classify(datagram: &[u8], source: DatagramSource) -> PacketKind {
    let Some(&first) = datagram.first() else {
        return PacketKind::Unknown;
    };
    match first {
        0..=3 => PacketKind::Stun,
        4..=15 => PacketKind::Unknown,
        16..=19 => PacketKind::Zrtp,
        20..=63 => PacketKind::Dtls,
        64..=79 if source == DatagramSource::TurnServer => PacketKind::ChannelData,
        64..=127 => PacketKind::Quic,
        128..=191 => PacketKind::Rtp,
        192..=255 => PacketKind::Quic,
    }
}

/// A cheap check that `bytes` is one STUN message: the top two bits are zero, the
/// magic cookie is present, and the length field is a multiple of 4 that matches
/// the datagram. Does not look at attributes.
pub fn is_stun(bytes: &[u8]) -> bool {
    let Some(([t0, _, l0, l1, c0, c1, c2, c3], _)) = bytes.split_first_chunk::<8>() else {
        return false;
    };
    let length = usize::from(u16::from_be_bytes([*l0, *l1]));
    t0 & 0xC0 == 0
        && u32::from_be_bytes([*c0, *c1, *c2, *c3]) == MAGIC_COOKIE
        && length.is_multiple_of(4)
        && bytes.len() == HEADER_LEN + length
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edge_bytes_of_every_range() {
        use DatagramSource::{Other, TurnServer};
        let cases = [
            (0u8, Other, PacketKind::Stun),
            (3, Other, PacketKind::Stun),
            (4, Other, PacketKind::Unknown),
            (15, Other, PacketKind::Unknown),
            (16, Other, PacketKind::Zrtp),
            (19, Other, PacketKind::Zrtp),
            (20, Other, PacketKind::Dtls),
            (63, Other, PacketKind::Dtls),
            (64, Other, PacketKind::Quic),
            (64, TurnServer, PacketKind::ChannelData),
            (79, Other, PacketKind::Quic),
            (79, TurnServer, PacketKind::ChannelData),
            (80, Other, PacketKind::Quic),
            (80, TurnServer, PacketKind::Quic),
            (127, Other, PacketKind::Quic),
            (127, TurnServer, PacketKind::Quic),
            (128, Other, PacketKind::Rtp),
            (191, TurnServer, PacketKind::Rtp),
            (192, Other, PacketKind::Quic),
            (0xC3, Other, PacketKind::Quic), // QUIC v1 Initial
            (255, TurnServer, PacketKind::Quic),
            (3, TurnServer, PacketKind::Stun),
            (63, TurnServer, PacketKind::Dtls),
        ];
        for (first, source, kind) in cases {
            assert_eq!(
                classify(&[first, 0, 0, 0], source),
                kind,
                "{first} {source:?}"
            );
        }
        assert_eq!(classify(&[], DatagramSource::Other), PacketKind::Unknown);
    }

    #[test]
    fn every_byte_is_classified_consistently() {
        for first in 0..=255u8 {
            let other = classify(&[first], DatagramSource::Other);
            let turn = classify(&[first], DatagramSource::TurnServer);
            if (64..=79).contains(&first) {
                assert_eq!((other, turn), (PacketKind::Quic, PacketKind::ChannelData));
            } else {
                assert_eq!(other, turn, "{first}");
            }
        }
    }

    #[test]
    fn is_stun_checks_bits_cookie_and_length() {
        let mut msg = vec![0x00, 0x01, 0x00, 0x04, 0x21, 0x12, 0xA4, 0x42];
        msg.extend_from_slice(&[0; 12]);
        msg.extend_from_slice(&[0x80, 0x22, 0x00, 0x00]);
        assert!(is_stun(&msg));
        assert!(!is_stun(&msg[..23]));
        let mut bad_bits = msg.clone();
        bad_bits[0] = 0x40;
        assert!(!is_stun(&bad_bits));
        let mut bad_cookie = msg.clone();
        bad_cookie[7] = 0x43;
        assert!(!is_stun(&bad_cookie));
        let mut odd_len = msg.clone();
        odd_len[3] = 0x03;
        odd_len.pop();
        assert!(!is_stun(&odd_len));
        assert!(!is_stun(&[0; 7]));
    }
}
