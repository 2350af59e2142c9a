//! A lean HTTP/1.1 keep-alive connection for the load generator.
//!
//! The load generator shares the machine with the cluster it measures, so every CPU cycle it
//! spends is taken from the system under test, and more so from the faster system of a side
//! by side comparison. A general-purpose client (reqwest: a URL parse, a pool checkout, a
//! header map and a JSON value built per request) held 36 % of the 2-core machine at 20,000
//! reads/s. This client holds one hyper HTTP/1.1 connection; a request's path, host and
//! authorization are prepared once (only a body that differs per request is built per
//! request). Like any keep-alive client it reconnects when the server closed the connection
//! (a request that was never sent goes out on the new one) and after a transport error, and
//! pauses briefly after a failed connect so that a node that is down costs no busy loop.

use std::str::FromStr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::http::uri::Authority;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Why a request got no response.
#[derive(Debug, thiserror::Error)]
pub enum Http1Error {
    #[error("{0} is not an http://host:port base URL")]
    BaseUrl(String),
    #[error("{0} is not a valid header value")]
    Header(String),
    #[error("connect: {0}")]
    Connect(#[from] std::io::Error),
    #[error("http: {0}")]
    Http(#[from] hyper::Error),
    #[error("request: {0}")]
    Request(#[from] hyper::http::Error),
    #[error("no response within {0:?}")]
    Timeout(Duration),
}

/// How long a client waits after a failed connect before it tries again.
const RECONNECT_PAUSE: Duration = Duration::from_millis(100);

/// One keep-alive connection to one `http://host[:port]` base URL.
pub struct Http1Connection {
    /// `host:port` to connect to (port 80 when the URL names none).
    address: String,
    host: HeaderValue,
    authorization: Option<HeaderValue>,
    timeout: Duration,
    sender: Option<SendRequest<Full<Bytes>>>,
}

/// A response's status and body.
pub struct Http1Response {
    pub status: StatusCode,
    pub body: Bytes,
}

impl Http1Connection {
    /// A connection (opened on first use) to `base`, sending `bearer` as the bearer token when
    /// given; a request without a response after `timeout` fails and drops the connection.
    pub fn new(base: &str, bearer: Option<&str>, timeout: Duration) -> Result<Http1Connection, Http1Error> {
        let authority = base
            .strip_prefix("http://")
            .map(|rest| rest.trim_end_matches('/'))
            .and_then(|a| Authority::from_str(a).ok())
            .ok_or_else(|| Http1Error::BaseUrl(base.to_string()))?;
        let address = format!("{}:{}", authority.host(), authority.port_u16().unwrap_or(80));
        let host = HeaderValue::from_str(authority.as_str()).map_err(|_| Http1Error::Header(authority.to_string()))?;
        let authorization = bearer
            .map(|token| {
                HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| Http1Error::Header("bearer".into()))
            })
            .transpose()?;
        Ok(Http1Connection { address, host, authorization, timeout, sender: None })
    }

    /// Sends one request (a JSON body when `body` is given) and reads the whole response.
    pub async fn send(&mut self, method: Method, path: &str, body: Option<Bytes>) -> Result<Http1Response, Http1Error> {
        match tokio::time::timeout(self.timeout, self.send_on_connection(method, path, body)).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(e)) => {
                self.sender = None;
                if matches!(e, Http1Error::Connect(_)) {
                    tokio::time::sleep(RECONNECT_PAUSE).await;
                }
                Err(e)
            }
            Err(_) => {
                self.sender = None;
                Err(Http1Error::Timeout(self.timeout))
            }
        }
    }

    async fn send_on_connection(
        &mut self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<Http1Response, Http1Error> {
        let mut builder = Request::builder().method(method).uri(path).header(HOST, self.host.clone());
        if let Some(authorization) = &self.authorization {
            builder = builder.header(AUTHORIZATION, authorization.clone());
        }
        let request = match body {
            Some(json) => {
                builder.header(CONTENT_TYPE, HeaderValue::from_static("application/json")).body(Full::new(json))
            }
            None => builder.body(Full::new(Bytes::new())),
        }?;
        // A connection the server closed (idle, or the node restarted) is replaced before the
        // request goes out, so that a close between two requests costs no failed request.
        let mut sender = match self.sender.take() {
            Some(sender) if !sender.is_closed() => sender,
            _ => self.connect().await?,
        };
        if sender.ready().await.is_err() {
            // Closed while idle, noticed only now: nothing was sent; once more on a new one.
            sender = self.connect().await?;
            sender.ready().await?;
        }
        let response = sender.send_request(request).await?;
        self.sender = Some(sender);
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok(Http1Response { status, body })
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, Http1Error> {
        let stream = TcpStream::connect(&self.address).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        // The connection's I/O runs beside the requests; it ends when the sender is dropped.
        tokio::spawn(connection);
        Ok(sender)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    #[test]
    fn a_base_url_needs_http_and_a_host_and_defaults_to_port_80() {
        let timeout = Duration::from_secs(1);
        assert!(matches!(Http1Connection::new("https://a:1", None, timeout), Err(Http1Error::BaseUrl(_))));
        assert!(matches!(Http1Connection::new("http://", None, timeout), Err(Http1Error::BaseUrl(_))));
        assert!(matches!(Http1Connection::new("http://a:1/api", None, timeout), Err(Http1Error::BaseUrl(_))));
        let connection = Http1Connection::new("http://127.0.0.1:8801/", Some("k"), timeout).expect("valid");
        assert_eq!(connection.address, "127.0.0.1:8801");
        assert_eq!(Http1Connection::new("http://example", None, timeout).expect("valid").address, "example:80");
    }

    /// A server that answers one request per connection and closes it: every request of a
    /// keep-alive client must still succeed, on a new connection each time.
    #[tokio::test]
    async fn a_connection_the_server_closed_is_replaced_without_a_failed_request() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("address"));
        let server = tokio::spawn(async move {
            let mut accepted = 0;
            while let Ok((mut stream, _)) = listener.accept().await {
                accepted += 1;
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let reply = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                let _ = stream.write_all(reply).await;
                let _ = stream.shutdown().await;
                if accepted == 3 {
                    return accepted;
                }
            }
            accepted
        });
        let mut connection = Http1Connection::new(&base, Some("token"), Duration::from_secs(5)).expect("valid");
        for i in 0..3 {
            // Give the closed connection time to be seen as closed, as between real requests.
            tokio::time::sleep(Duration::from_millis(50)).await;
            let response = connection.send(Method::GET, "/api/regions", None).await;
            let response = response.unwrap_or_else(|e| panic!("request {i} failed: {e}"));
            assert_eq!(response.status, StatusCode::OK);
            assert_eq!(&response.body[..], b"ok");
        }
        assert_eq!(server.await.expect("server"), 3, "one connection per request");
    }
}
