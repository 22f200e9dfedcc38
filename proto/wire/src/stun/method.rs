//! STUN methods and message classes, and how the two share the 14-bit message type
//! (RFC 8489 §5, Figure 3).
//!
//! The type field interleaves the two class bits `C1 C0` between the twelve method
//! bits: `M11..M7 C1 M6..M4 C0 M3..M0`. [`MessageType`] hides that packing.

use std::fmt;

/// A STUN method: the 12-bit operation a message belongs to (RFC 8489 §5, RFC 8656 §17).
///
/// Unknown methods are representable, so a server can answer them with 400 instead
/// of dropping them at parse time.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Method(u16);

impl Method {
    /// Binding (0x001, RFC 8489): reflexive-address discovery and connectivity checks.
    pub const BINDING: Method = Method(0x001);
    /// Allocate (0x003, RFC 8656): create a TURN allocation.
    pub const ALLOCATE: Method = Method(0x003);
    /// Refresh (0x004, RFC 8656): extend or delete a TURN allocation.
    pub const REFRESH: Method = Method(0x004);
    /// Send (0x006, RFC 8656): indication carrying data from client to peer.
    pub const SEND: Method = Method(0x006);
    /// Data (0x007, RFC 8656): indication carrying data from peer to client.
    pub const DATA: Method = Method(0x007);
    /// CreatePermission (0x008, RFC 8656): install permissions for peer addresses.
    pub const CREATE_PERMISSION: Method = Method(0x008);
    /// ChannelBind (0x009, RFC 8656): bind a channel number to a peer address.
    pub const CHANNEL_BIND: Method = Method(0x009);

    /// The largest method number the 12 method bits can carry.
    pub const MAX: u16 = 0x0FFF;

    /// A method from its number, or `None` when it does not fit in 12 bits.
    pub const fn new(value: u16) -> Option<Method> {
        if value <= Self::MAX {
            Some(Method(value))
        } else {
            None
        }
    }

    /// The method number (0..=0xFFF).
    pub const fn value(self) -> u16 {
        self.0
    }

    /// The registered name of the method, if it is one this crate knows.
    pub const fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            0x001 => "Binding",
            0x003 => "Allocate",
            0x004 => "Refresh",
            0x006 => "Send",
            0x007 => "Data",
            0x008 => "CreatePermission",
            0x009 => "ChannelBind",
            _ => return None,
        })
    }
}

impl fmt::Debug for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "Method({:#05x})", self.0),
        }
    }
}

/// The class of a STUN message (RFC 8489 §5): what role it plays in a transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MessageClass {
    /// A request, answered by a success or error response (class bits `0b00`).
    Request,
    /// An indication, which gets no response (class bits `0b01`).
    Indication,
    /// A success response (class bits `0b10`).
    SuccessResponse,
    /// An error response, carrying ERROR-CODE (class bits `0b11`).
    ErrorResponse,
}

impl MessageClass {
    /// The two class bits `C1 C0` as a number 0..=3.
    pub const fn bits(self) -> u16 {
        match self {
            MessageClass::Request => 0b00,
            MessageClass::Indication => 0b01,
            MessageClass::SuccessResponse => 0b10,
            MessageClass::ErrorResponse => 0b11,
        }
    }

    /// The class from its two bits; only the low two bits of `bits` are read.
    pub const fn from_bits(bits: u16) -> MessageClass {
        match bits & 0b11 {
            0b00 => MessageClass::Request,
            0b01 => MessageClass::Indication,
            0b10 => MessageClass::SuccessResponse,
            _ => MessageClass::ErrorResponse,
        }
    }

    /// Whether this is a success or an error response.
    pub const fn is_response(self) -> bool {
        matches!(
            self,
            MessageClass::SuccessResponse | MessageClass::ErrorResponse
        )
    }
}

/// The STUN message type: a [`Method`] and a [`MessageClass`] packed into 14 bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MessageType {
    /// The method, for example [`Method::BINDING`].
    pub method: Method,
    /// The class, for example [`MessageClass::Request`].
    pub class: MessageClass,
}

impl MessageType {
    /// Binding request, the message type a STUN client sends first.
    pub const BINDING_REQUEST: MessageType =
        MessageType::new(Method::BINDING, MessageClass::Request);
    /// Binding indication, the keepalive that needs no answer (RFC 8489 §6.3).
    pub const BINDING_INDICATION: MessageType =
        MessageType::new(Method::BINDING, MessageClass::Indication);
    /// Binding success response.
    pub const BINDING_SUCCESS: MessageType =
        MessageType::new(Method::BINDING, MessageClass::SuccessResponse);
    /// Binding error response.
    pub const BINDING_ERROR: MessageType =
        MessageType::new(Method::BINDING, MessageClass::ErrorResponse);

    /// A message type from its method and class.
    pub const fn new(method: Method, class: MessageClass) -> MessageType {
        MessageType { method, class }
    }

    /// The 16-bit type field as sent on the wire (its top two bits are always zero).
    pub const fn to_bits(self) -> u16 {
        let m = self.method.0;
        let c = self.class.bits();
        (m & 0x000F)
            | ((m & 0x0070) << 1)
            | ((m & 0x0F80) << 2)
            | ((c & 0b01) << 4)
            | ((c & 0b10) << 7)
    }

    /// The message type from the 16-bit type field, or `None` when either of the
    /// two top bits is set (then it is not a STUN message).
    pub const fn from_bits(bits: u16) -> Option<MessageType> {
        if bits & 0xC000 != 0 {
            return None;
        }
        let method = (bits & 0x000F) | ((bits >> 1) & 0x0070) | ((bits >> 2) & 0x0F80);
        let class = ((bits >> 4) & 0b01) | ((bits >> 7) & 0b10);
        Some(MessageType {
            method: Method(method),
            class: MessageClass::from_bits(class),
        })
    }
}

impl fmt::Display for MessageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let class = match self.class {
            MessageClass::Request => "request",
            MessageClass::Indication => "indication",
            MessageClass::SuccessResponse => "success response",
            MessageClass::ErrorResponse => "error response",
        };
        write!(f, "{} {class}", self.method)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_types_match_rfc_values() {
        // RFC 8489 §5 and RFC 8656 §17 examples.
        let cases = [
            (Method::BINDING, MessageClass::Request, 0x0001),
            (Method::BINDING, MessageClass::Indication, 0x0011),
            (Method::BINDING, MessageClass::SuccessResponse, 0x0101),
            (Method::BINDING, MessageClass::ErrorResponse, 0x0111),
            (Method::ALLOCATE, MessageClass::Request, 0x0003),
            (Method::ALLOCATE, MessageClass::ErrorResponse, 0x0113),
            (Method::SEND, MessageClass::Indication, 0x0016),
            (Method::DATA, MessageClass::Indication, 0x0017),
            (
                Method::CREATE_PERMISSION,
                MessageClass::SuccessResponse,
                0x0108,
            ),
            (Method::CHANNEL_BIND, MessageClass::Request, 0x0009),
        ];
        for (method, class, bits) in cases {
            let typ = MessageType::new(method, class);
            assert_eq!(typ.to_bits(), bits, "{typ}");
            assert_eq!(MessageType::from_bits(bits), Some(typ));
        }
    }

    #[test]
    fn every_type_round_trips() {
        for bits in 0..=0x3FFFu16 {
            let typ = MessageType::from_bits(bits).unwrap();
            assert_eq!(typ.to_bits(), bits);
        }
        assert_eq!(MessageType::from_bits(0x4001), None);
        assert_eq!(MessageType::from_bits(0x8001), None);
    }

    #[test]
    fn method_bounds() {
        assert_eq!(Method::new(0xFFF).map(Method::value), Some(0xFFF));
        assert_eq!(Method::new(0x1000), None);
        assert_eq!(Method::BINDING.to_string(), "Binding");
        assert_eq!(Method::new(0x0AB).unwrap().to_string(), "Method(0x0ab)");
    }
}
