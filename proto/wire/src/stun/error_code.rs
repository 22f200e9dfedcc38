//! STUN and TURN error codes (RFC 8489 §14.8, RFC 8656 §19) and the ERROR-CODE
//! attribute value: a class (hundreds digit), a number (0..=99) and a UTF-8 reason
//! phrase.
//!
//! ```text
//! |           Reserved, should be 0         |Class|     Number    |
//! |      Reason Phrase (variable)                                ..
//! ```

use std::fmt;

/// The value of an ERROR-CODE attribute: a code in 300..=699 and a reason phrase.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ErrorCode<'a> {
    /// The numeric code, for example [`ErrorCode::UNAUTHENTICATED`].
    pub code: u16,
    /// The human-readable reason phrase (RFC 8489 asks for fewer than 128
    /// characters).
    pub reason: &'a str,
}

impl ErrorCode<'static> {
    /// 300 Try Alternate: use the server in ALTERNATE-SERVER.
    pub const TRY_ALTERNATE: u16 = 300;
    /// 400 Bad Request: the request was malformed.
    pub const BAD_REQUEST: u16 = 400;
    /// 401 Unauthenticated: missing or wrong credentials.
    pub const UNAUTHENTICATED: u16 = 401;
    /// 403 Forbidden (RFC 8656): the request is valid but refused.
    pub const FORBIDDEN: u16 = 403;
    /// 405 Mobility Forbidden (RFC 8656).
    pub const MOBILITY_FORBIDDEN: u16 = 405;
    /// 420 Unknown Attribute: comprehension-required attributes not understood; the
    /// response lists them in UNKNOWN-ATTRIBUTES.
    pub const UNKNOWN_ATTRIBUTE: u16 = 420;
    /// 437 Allocation Mismatch (RFC 8656).
    pub const ALLOCATION_MISMATCH: u16 = 437;
    /// 438 Stale Nonce: retry with the NONCE in the response.
    pub const STALE_NONCE: u16 = 438;
    /// 440 Address Family not Supported (RFC 8656).
    pub const ADDRESS_FAMILY_NOT_SUPPORTED: u16 = 440;
    /// 441 Wrong Credentials (RFC 8656).
    pub const WRONG_CREDENTIALS: u16 = 441;
    /// 442 Unsupported Transport Protocol (RFC 8656).
    pub const UNSUPPORTED_TRANSPORT_PROTOCOL: u16 = 442;
    /// 443 Peer Address Family Mismatch (RFC 8656).
    pub const PEER_ADDRESS_FAMILY_MISMATCH: u16 = 443;
    /// 486 Allocation Quota Reached (RFC 8656).
    pub const ALLOCATION_QUOTA_REACHED: u16 = 486;
    /// 487 Role Conflict (RFC 8445, ICE).
    pub const ROLE_CONFLICT: u16 = 487;
    /// 500 Server Error: a temporary failure.
    pub const SERVER_ERROR: u16 = 500;
    /// 508 Insufficient Capacity (RFC 8656).
    pub const INSUFFICIENT_CAPACITY: u16 = 508;

    /// The code with the reason phrase the RFCs suggest for it ("Error" for codes
    /// this crate does not name).
    pub const fn new(code: u16) -> ErrorCode<'static> {
        ErrorCode {
            code,
            reason: default_reason(code),
        }
    }
}

impl<'a> ErrorCode<'a> {
    /// A code with a reason phrase of the caller's choice.
    pub const fn with_reason(code: u16, reason: &'a str) -> ErrorCode<'a> {
        ErrorCode { code, reason }
    }

    /// The class, the hundreds digit of the code.
    pub const fn class(&self) -> u8 {
        // 300..=699 after validation, so the digit fits a byte; other values
        // saturate harmlessly.
        let class = self.code / 100;
        if class > u8::MAX as u16 {
            u8::MAX
        } else {
            class as u8
        }
    }

    /// The number, the last two digits of the code.
    pub const fn number(&self) -> u8 {
        (self.code % 100) as u8
    }

    /// Whether the code is one an ERROR-CODE attribute can carry (300..=699).
    pub const fn is_valid(&self) -> bool {
        self.code >= 300 && self.code <= 699
    }
}

impl fmt::Display for ErrorCode<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code, self.reason)
    }
}

/// The reason phrase RFC 8489 and RFC 8656 give for `code`, or "Error".
pub const fn default_reason(code: u16) -> &'static str {
    match code {
        300 => "Try Alternate",
        400 => "Bad Request",
        401 => "Unauthenticated",
        403 => "Forbidden",
        405 => "Mobility Forbidden",
        420 => "Unknown Attribute",
        437 => "Allocation Mismatch",
        438 => "Stale Nonce",
        440 => "Address Family not Supported",
        441 => "Wrong Credentials",
        442 => "Unsupported Transport Protocol",
        443 => "Peer Address Family Mismatch",
        486 => "Allocation Quota Reached",
        487 => "Role Conflict",
        500 => "Server Error",
        508 => "Insufficient Capacity",
        _ => "Error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_and_number() {
        let e = ErrorCode::new(ErrorCode::STALE_NONCE);
        assert_eq!((e.class(), e.number()), (4, 38));
        assert_eq!(e.to_string(), "438 Stale Nonce");
        assert!(e.is_valid());
        assert!(!ErrorCode::new(299).is_valid());
        assert!(!ErrorCode::new(700).is_valid());
        assert_eq!(ErrorCode::new(u16::MAX).class(), u8::MAX);
        assert_eq!(ErrorCode::new(499).reason, "Error");
    }
}
