//! Fuzzes the authenticated probe check: any datagram is decoded by both roles' codecs; whatever
//! is accepted must have been signed with the key (checked again independently), and responses
//! re-encode to something the other role accepts.

#![no_main]

use libfuzzer_sys::fuzz_target;
use quickp2p_wire::probe::{Probe, ProbeCodec, ProbeRole};
use quickp2p_wire::stun::Message;

const ID: [u8; 16] = [0xA5; 16];
const KEY: [u8; 32] = [7; 32];

fuzz_target!(|data: &[u8]| {
    for role in [ProbeRole::Initiator, ProbeRole::Responder] {
        let Ok(codec) = ProbeCodec::new(&ID, 1, &KEY, role) else {
            return;
        };
        match codec.decode(data) {
            Ok(probe) => {
                let message = Message::parse(data).expect("an accepted probe parses");
                assert!(message.verify_message_integrity_sha256(&KEY).is_ok());
                if let Probe::Request { transaction_id, .. } = probe {
                    let mut out = Vec::new();
                    codec
                        .encode_response(
                            transaction_id,
                            "192.0.2.1:9".parse().expect("addr"),
                            &mut out,
                        )
                        .expect("a response encodes");
                    let other = ProbeCodec::new(&ID, 1, &KEY, role.other()).expect("codec");
                    assert!(other.decode(&out).is_ok());
                }
            }
            Err(_) => {}
        }
    }
});
