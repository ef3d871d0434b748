//! Server-sent events, read and written in one place: detecting an event stream, splitting a
//! streamed body into lines (with a bound on a line's length, so an upstream cannot make the
//! gateway buffer without end), and rewriting the JSON messages of a whole answer event by
//! event (a `data:` field may span several lines; they are joined before parsing).
use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;

/// The longest line kept whole while streaming; a longer one is passed on in pieces.
pub const MAX_LINE: usize = 1024 * 1024;

/// Whether `headers` say the body is an event stream.
pub fn is_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| {
            c.trim_start()
                .get(..17)
                .is_some_and(|t| t.eq_ignore_ascii_case("text/event-stream"))
        })
}

/// An SSE answer with `body` as its stream, marked for no buffering on the way (GW-11).
pub fn sse_response(body: Body) -> Response {
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache"),
    );
    h.insert(
        HeaderName::from_static("x-accel-buffering"),
        HeaderValue::from_static("no"),
    );
    resp
}

/// One `message` event carrying `json`.
pub fn event(json: &Value) -> Bytes {
    Bytes::from(format!("event: message\ndata: {json}\n\n"))
}

/// Splits a byte stream into lines (each with its `\n`); the last piece may lack one. A line
/// longer than [`MAX_LINE`] is cut there, so at most that much is ever held.
pub fn lines<S, E>(stream: S) -> impl futures::Stream<Item = Bytes> + Send
where
    S: futures::Stream<Item = Result<Bytes, E>> + Send + Unpin,
{
    use futures::StreamExt;
    futures::stream::unfold(
        (stream, Vec::<u8>::new(), false),
        |(mut stream, mut buf, done)| async move {
            loop {
                if let Some(i) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=i).collect();
                    return Some((Bytes::from(line), (stream, buf, done)));
                }
                if buf.len() >= MAX_LINE {
                    let piece: Vec<u8> = buf.drain(..MAX_LINE).collect();
                    return Some((Bytes::from(piece), (stream, buf, done)));
                }
                if done {
                    if buf.is_empty() {
                        return None;
                    }
                    let rest = Bytes::from(std::mem::take(&mut buf));
                    return Some((rest, (stream, buf, true)));
                }
                match stream.next().await {
                    Some(Ok(chunk)) => buf.extend_from_slice(&chunk),
                    // An error ends the stream like its end does: what was read is passed on.
                    Some(Err(_)) | None => return Some((Bytes::new(), (stream, buf, true))),
                }
            }
        },
    )
    .filter(|b| futures::future::ready(!b.is_empty()))
}

/// The value of a `data` field line, if `line` is one (`data:` with an optional space).
pub fn data_of(line: &str) -> Option<&str> {
    let rest = line.strip_prefix("data")?;
    let rest = rest.strip_prefix(':')?;
    Some(rest.strip_prefix(' ').unwrap_or(rest))
}

/// Rewrites every JSON message of a whole event-stream body with `f` (`None` drops the
/// event). Fields other than `data` are kept; an event whose data is not JSON is dropped when
/// `strict`, else kept as it was.
pub fn map_events(text: &str, strict: bool, mut f: impl FnMut(Value) -> Option<Value>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut fields: Vec<&str> = Vec::new();
    let mut data: Vec<&str> = Vec::new();
    let mut flush = |fields: &mut Vec<&str>, data: &mut Vec<&str>, out: &mut String| {
        if data.is_empty() {
            for l in fields.drain(..) {
                out.push_str(l);
                out.push('\n');
            }
            return;
        }
        let joined = data.join("\n");
        let rewritten = match serde_json::from_str::<Value>(&joined) {
            Ok(v) => f(v).map(|v| v.to_string()),
            Err(_) if strict => None,
            Err(_) => Some(joined),
        };
        if let Some(d) = rewritten {
            for l in fields.drain(..) {
                out.push_str(l);
                out.push('\n');
            }
            out.push_str("data: ");
            out.push_str(&d);
            out.push_str("\n\n");
        }
        fields.clear();
        data.clear();
    };
    for line in text.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            flush(&mut fields, &mut data, &mut out);
            continue;
        }
        match data_of(line) {
            Some(d) => data.push(d),
            None => fields.push(line),
        }
    }
    // An unterminated last event is still an event (the stream ended).
    flush(&mut fields, &mut data, &mut out);
    out
}

/// Every JSON message of a whole event-stream body, in order.
pub fn messages(text: &str) -> Vec<Value> {
    let mut found = Vec::new();
    map_events(text, true, |v| {
        found.push(v);
        None
    });
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_parsed_whole_even_across_data_lines() {
        let text = "event: message\r\nid: 1\r\ndata: {\"a\":\r\ndata: 1}\r\n\r\n: comment\n\ndata: not json\n\n";
        let seen = messages(text);
        assert_eq!(seen, vec![serde_json::json!({"a": 1})]);
        let kept = map_events(text, false, Some);
        assert!(
            kept.contains("event: message\nid: 1\ndata: {\"a\":1}\n\n"),
            "{kept}"
        );
        assert!(kept.contains("data: not json"), "{kept}");
        let strict = map_events(text, true, Some);
        assert!(!strict.contains("not json"), "{strict}");
    }

    #[tokio::test]
    async fn lines_are_bounded() {
        use futures::StreamExt;
        let big = vec![b'x'; MAX_LINE + 10];
        let chunks: Vec<Result<Bytes, std::convert::Infallible>> = vec![
            Ok(Bytes::from_static(b"data: 1\nda")),
            Ok(Bytes::from_static(b"ta: 2\n")),
            Ok(Bytes::from(big)),
            Ok(Bytes::from_static(b"\nlast")),
        ];
        let out: Vec<Bytes> = lines(futures::stream::iter(chunks)).collect().await;
        assert_eq!(out[0], "data: 1\n");
        assert_eq!(out[1], "data: 2\n");
        assert_eq!(out[2].len(), MAX_LINE);
        assert_eq!(out[3].len(), 11);
        assert_eq!(out[4], "last");
    }
}
