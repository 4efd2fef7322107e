//! A minimal server-sent-events decoder: enough of the WHATWG format for provider streams
//! (`data:` lines, multi-line data, comments, CRLF), fed with arbitrary byte splits.

use bytes::{Buf, BytesMut};

#[derive(Default)]
pub struct SseDecoder {
    buf: BytesMut,
    data: Vec<String>,
}

/// Upper bound on one buffered line: a stream that never sends a newline is malformed, and must
/// not grow memory without bound.
const MAX_LINE: usize = 1 << 20;

impl SseDecoder {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete event's data, if one is buffered. `Err` when a line is too long.
    pub fn next_event(&mut self) -> Result<Option<String>, String> {
        loop {
            let Some(nl) = self.buf.iter().position(|&b| b == b'\n') else {
                if self.buf.len() > MAX_LINE {
                    return Err("SSE line longer than 1 MiB".into());
                }
                return Ok(None);
            };
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
                return Ok(Some(event));
            }
            let line = String::from_utf8_lossy(line.chunk()).into_owned();
            if let Some(value) = line.strip_prefix("data:") {
                self.data
                    .push(value.strip_prefix(' ').unwrap_or(value).to_string());
            }
            // `event:`, `id:`, `retry:` and `:` comments carry nothing OpenAI streams need.
        }
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
}
