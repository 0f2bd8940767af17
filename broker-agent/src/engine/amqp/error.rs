//! Protocol errors with RabbitMQ's reply codes and texts.
//!
//! Channel-level codes close only the channel; connection-level codes close the connection.

/// An error to be answered with channel.close or connection.close.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmqpError {
    pub code: u16,
    /// Full reply text, e.g. "NOT_FOUND - no queue 'x' in vhost '/'".
    pub text: String,
    pub class_id: u16,
    pub method_id: u16,
}

pub type AmqpResult<T> = Result<T, AmqpError>;

macro_rules! ctor {
    ($name:ident, $code:expr, $label:expr) => {
        pub fn $name(detail: impl std::fmt::Display) -> AmqpError {
            AmqpError::new($code, format!(concat!($label, " - {}"), detail))
        }
    };
}

impl AmqpError {
    pub fn new(code: u16, text: String) -> AmqpError {
        // Reply texts are short strings on the wire.
        let mut text = text;
        if text.len() > 255 {
            let mut cut = 255;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
        }
        AmqpError {
            code,
            text,
            class_id: 0,
            method_id: 0,
        }
    }

    /// Names the method that caused the error (sent back in the close method).
    pub fn on(mut self, class_id: u16, method_id: u16) -> AmqpError {
        if self.class_id == 0 {
            self.class_id = class_id;
            self.method_id = method_id;
        }
        self
    }

    /// Whether the error closes the whole connection rather than one channel.
    pub fn is_connection_error(&self) -> bool {
        matches!(
            self.code,
            320 | 402 | 501 | 502 | 503 | 504 | 505 | 506 | 530 | 540 | 541
        )
    }

    ctor!(access_refused, 403, "ACCESS_REFUSED");
    ctor!(not_found, 404, "NOT_FOUND");
    ctor!(resource_locked, 405, "RESOURCE_LOCKED");
    ctor!(precondition_failed, 406, "PRECONDITION_FAILED");
    ctor!(connection_forced, 320, "CONNECTION_FORCED");
    ctor!(frame_error, 501, "FRAME_ERROR");
    ctor!(syntax_error, 502, "SYNTAX_ERROR");
    ctor!(command_invalid, 503, "COMMAND_INVALID");
    ctor!(channel_error, 504, "CHANNEL_ERROR");
    ctor!(unexpected_frame, 505, "UNEXPECTED_FRAME");
    ctor!(resource_error, 506, "RESOURCE_ERROR");
    ctor!(not_allowed, 530, "NOT_ALLOWED");
    ctor!(not_implemented, 540, "NOT_IMPLEMENTED");
    ctor!(internal_error, 541, "INTERNAL_ERROR");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_and_levels() {
        let e = AmqpError::not_found("no queue 'x' in vhost '/'").on(50, 10);
        assert_eq!(e.text, "NOT_FOUND - no queue 'x' in vhost '/'");
        assert!(!e.is_connection_error());
        assert_eq!((e.class_id, e.method_id), (50, 10));
        assert!(AmqpError::frame_error("x").is_connection_error());
        assert!(AmqpError::new(406, "é".repeat(200)).text.len() <= 255);
    }
}
