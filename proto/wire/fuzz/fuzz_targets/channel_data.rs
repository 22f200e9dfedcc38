//! Fuzzes TURN ChannelData framing: datagram and stream parsing, and the round
//! trip of whatever parsed.

#![no_main]

use libfuzzer_sys::fuzz_target;
use quickp2p_wire::{ChannelData, ChannelDataPadding, DatagramSource, PacketKind, classify};

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = ChannelData::parse(data) {
        assert_eq!(
            classify(data, DatagramSource::TurnServer),
            PacketKind::ChannelData
        );
        for padding in [ChannelDataPadding::None, ChannelDataPadding::FourBytes] {
            let mut out = Vec::new();
            let written = message.encode_into(&mut out, padding);
            assert_eq!(written, message.encoded_len(padding));
            assert_eq!(ChannelData::parse(&out), Ok(message));
        }
    }
    if let Ok((message, used)) = ChannelData::parse_stream(data) {
        assert!(used <= data.len() && used % 4 == 0);
        let mut out = Vec::new();
        message.encode_into(&mut out, ChannelDataPadding::FourBytes);
        assert_eq!(ChannelData::parse_stream(&out), Ok((message, used)));
    }
});
