//! A minimal server-sent-events decoder: enough of the WHATWG format for provider streams
//! (`data:` lines, multi-line data, comments, CRLF), fed with arbitrary byte splits. The
//! [`Framing`] of OpenAI, Anthropic and Gemini streams: each event is its data.

use bytes::{Buf, BytesMut};

use super::framed::Framing;
use crate::config::Secret;

#[derive(Default)]
pub struct SseDecoder {
    buf: BytesMut,
    /// How far into `buf` is known to hold no newline: a line arriving in many small pieces
    /// is scanned once, not again from its start at every piece.
    scanned: usize,
    data: Vec<String>,
    /// Bytes of `data` so far.
    data_len: usize,
}

/// Upper bound on one buffered line, and on one event's data: a stream that never sends a
/// newline (or a blank line) is malformed, and must not grow memory without bound.
const MAX_LINE: usize = 1 << 20;
const MAX_EVENT: usize = 1 << 20;

impl SseDecoder {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete event's data, if one is buffered. `Err` when a line or an event is
    /// too long.
    pub fn next_event(&mut self) -> Result<Option<String>, String> {
        loop {
            let Some(at) = self.buf[self.scanned..].iter().position(|&b| b == b'\n') else {
                self.scanned = self.buf.len();
                if self.buf.len() > MAX_LINE {
                    return Err("SSE line longer than 1 MiB".into());
                }
                return Ok(None);
            };
            let nl = self.scanned + at;
            self.scanned = 0;
            let mut line = self.buf.split_to(nl + 1);
            line.truncate(nl);
            if line.last() == Some(&b'\r') {
                line.truncate(nl - 1);
            }
            if line.is_empty() {
                if self.data.is_empty() {
                    continue;
                }
                let event = self.data.join("\n");
                self.data.clear();
                self.data_len = 0;
                return Ok(Some(event));
            }
            let line = String::from_utf8_lossy(line.chunk()).into_owned();
            if let Some(value) = line.strip_prefix("data:") {
                let value = value.strip_prefix(' ').unwrap_or(value);
                self.data_len += value.len() + 1;
                if self.data_len > MAX_EVENT {
                    return Err("SSE event larger than 1 MiB".into());
                }
                self.data.push(value.to_string());
            }
            // `event:`, `id:`, `retry:` and `:` comments carry nothing OpenAI streams need.
        }
    }
}

impl Framing for SseDecoder {
    type Event = String;
    type Data = str;

    fn push(&mut self, bytes: &[u8]) {
        SseDecoder::push(self, bytes);
    }

    fn next_event(&mut self) -> Result<Option<String>, String> {
        SseDecoder::next_event(self)
    }

    fn redacted(event: &str, secrets: &[Secret]) -> Option<String> {
        secrets
            .iter()
            .any(|s| !s.expose().is_empty() && event.contains(s.expose()))
            .then(|| super::redact(secrets, event))
    }

    fn finish(&mut self) -> Result<Option<String>, String> {
        // A last event may lack its closing blank line.
        SseDecoder::push(self, b"\n\n");
        SseDecoder::next_event(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_events_across_arbitrary_splits() {
        let wire = b": keep-alive\r\ndata: {\"a\":1}\r\n\r\ndata: line1\ndata: line2\n\nevent: x\ndata: [DONE]\n\n";
        for split in 1..wire.len() {
            let mut d = SseDecoder::default();
            let mut events = Vec::new();
            for part in wire.chunks(split) {
                d.push(part);
                while let Some(e) = d.next_event().unwrap() {
                    events.push(e);
                }
            }
            assert_eq!(
                events,
                vec!["{\"a\":1}", "line1\nline2", "[DONE]"],
                "split {split}"
            );
        }
    }

    #[test]
    fn an_endless_line_is_an_error() {
        let mut d = SseDecoder::default();
        d.push(&vec![b'x'; MAX_LINE + 1]);
        assert!(d.next_event().is_err());
    }

    #[test]
    fn an_endless_event_is_an_error_though_each_line_is_short() {
        let mut d = SseDecoder::default();
        let line = format!("data: {}\n", "x".repeat(1000));
        let mut result = Ok(None);
        for _ in 0..2000 {
            d.push(line.as_bytes());
            result = d.next_event();
            if result.is_err() {
                break;
            }
        }
        assert_eq!(result, Err("SSE event larger than 1 MiB".to_string()));
    }

    #[test]
    fn a_long_line_in_small_pieces_is_scanned_once() {
        // 1 MiB arriving 16 bytes at a time: rescanning the partial line at every piece would
        // be 64k scans of up to 1 MiB each. The decoder remembers how far it has looked.
        let mut d = SseDecoder::default();
        d.push(b"data: ");
        let piece = [b'y'; 16];
        for _ in 0..(MAX_LINE / 16 - 1) {
            d.push(&piece);
            assert_eq!(d.next_event(), Ok(None));
            assert_eq!(
                d.scanned,
                d.buf.len(),
                "the next look starts after what was seen"
            );
        }
        d.push(b"\n\n");
        let event = d.next_event().unwrap().unwrap();
        assert_eq!(event.len(), MAX_LINE - 16);
        assert_eq!(d.scanned, 0);
    }
}
