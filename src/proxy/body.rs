//! Bodies the gateway sends to clients, and reading upstream bodies with content codings
//! decoded.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures_util::TryStreamExt;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::{BodyDataStream, BodyExt, Full};
use hyper::body::Incoming;
use tokio::io::{AsyncRead, AsyncReadExt, BufReader};
use tokio::sync::mpsc;
use tokio_util::io::StreamReader;

/// Errors inside response bodies; an error aborts the response.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body of every response the gateway sends.
pub type Body = http_body_util::combinators::BoxBody<Bytes, BoxError>;

/// A complete body.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// An empty body.
pub fn empty() -> Body {
    full(Bytes::new())
}

/// An upstream body passed through as it is.
pub fn passthrough(body: Incoming) -> Body {
    body.map_err(BoxError::from).boxed()
}

/// A body fed by a task through a channel; an `Err` item aborts the response, so the client
/// sees a broken transfer rather than a complete-looking body.
pub struct ChannelBody {
    rx: mpsc::Receiver<Result<Bytes, BoxError>>,
}

impl ChannelBody {
    /// A body and the sender that feeds it.
    pub fn new(capacity: usize) -> (mpsc::Sender<Result<Bytes, BoxError>>, Self) {
        let (tx, rx) = mpsc::channel(capacity);
        (tx, Self { rx })
    }
}

impl HttpBody for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(Ok(bytes))) => Poll::Ready(Some(Ok(Frame::data(bytes)))),
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// A content coding the gateway can decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    Identity,
    Gzip,
    Deflate,
    Brotli,
    Zstd,
}

impl Coding {
    /// The coding named by a `Content-Encoding` value; `None` for anything else, including
    /// several codings stacked.
    pub fn parse(value: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(value).ok()?.trim();
        match text.to_ascii_lowercase().as_str() {
            "" | "identity" => Some(Self::Identity),
            "gzip" | "x-gzip" => Some(Self::Gzip),
            "deflate" => Some(Self::Deflate),
            "br" => Some(Self::Brotli),
            "zstd" => Some(Self::Zstd),
            _ => None,
        }
    }
}

/// Reads an upstream body chunk by chunk, decoded.
pub enum Decoded {
    Plain(Incoming),
    Coded(Pin<Box<dyn AsyncRead + Send>>, BytesMut),
}

/// Reading the upstream body failed: it broke off, or its coding is corrupt.
#[derive(Debug, thiserror::Error)]
#[error("the upstream body cannot be read: {0}")]
pub struct ReadError(String);

impl Decoded {
    /// A reader of `body` decoding `coding`.
    pub fn new(body: Incoming, coding: Coding) -> Self {
        if coding == Coding::Identity {
            return Self::Plain(body);
        }
        let stream = BodyDataStream::new(body).map_err(std::io::Error::other);
        let reader = BufReader::new(StreamReader::new(stream));
        // FAIL-CLOSED: bytes after the end of a coded stream are decoded as a further stream
        // (an error if they are not one) rather than silently ignored: every byte the upstream
        // sent is either examined or the response refused.
        use async_compression::tokio::bufread as de;
        let decoder: Pin<Box<dyn AsyncRead + Send>> = match coding {
            Coding::Gzip => {
                let mut d = de::GzipDecoder::new(reader);
                d.multiple_members(true);
                Box::pin(d)
            }
            Coding::Deflate => {
                let mut d = de::ZlibDecoder::new(reader);
                d.multiple_members(true);
                Box::pin(d)
            }
            Coding::Brotli => {
                let mut d = de::BrotliDecoder::new(reader);
                d.multiple_members(true);
                Box::pin(d)
            }
            Coding::Zstd => {
                let mut d = de::ZstdDecoder::new(reader);
                d.multiple_members(true);
                Box::pin(d)
            }
            Coding::Identity => Box::pin(reader),
        };
        Self::Coded(decoder, BytesMut::with_capacity(32 * 1024))
    }

    /// The next chunk of decoded bytes, `None` at the end of the body.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, ReadError> {
        match self {
            Self::Plain(body) => loop {
                match body.frame().await {
                    None => return Ok(None),
                    Some(Err(e)) => return Err(ReadError(e.to_string())),
                    Some(Ok(frame)) => {
                        // Trailers are dropped: they are not part of the examined body.
                        if let Ok(data) = frame.into_data()
                            && !data.is_empty()
                        {
                            return Ok(Some(data));
                        }
                    }
                }
            },
            Self::Coded(reader, buf) => {
                buf.reserve(32 * 1024);
                let n = reader
                    .read_buf(buf)
                    .await
                    .map_err(|e| ReadError(e.to_string()))?;
                if n == 0 {
                    return Ok(None);
                }
                Ok(Some(buf.split().freeze()))
            }
        }
    }
}
