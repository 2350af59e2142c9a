//! A lean HTTP/1.1 keep-alive connection for the load generator.
//!
//! The load generator shares the machine with the cluster it measures, so every CPU cycle it
//! spends is taken from the system under test, and more so from the faster system of a side
//! by side comparison. A general-purpose client (reqwest: a URL parse, a pool checkout, a
//! header map and a JSON value built per request) took about a third of the 2-core machine at
//! 26,000 reads/s. This client holds one hyper HTTP/1.1 connection, builds each request from
//! parts prepared once (path, host, authorization), and reconnects after a transport error, as
//! a keep-alive client must when a node closes or restarts.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, HOST};
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

/// One keep-alive connection to one `http://host:port` base URL.
pub struct Http1Connection {
    authority: String,
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
            .filter(|a| !a.is_empty() && !a.contains('/'))
            .ok_or_else(|| Http1Error::BaseUrl(base.to_string()))?
            .to_string();
        let host = HeaderValue::from_str(&authority).map_err(|_| Http1Error::Header(authority.clone()))?;
        let authorization = bearer
            .map(|token| {
                HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| Http1Error::Header("bearer".into()))
            })
            .transpose()?;
        Ok(Http1Connection { authority, host, authorization, timeout, sender: None })
    }

    /// Sends one request (a JSON body when `body` is given) and reads the whole response.
    pub async fn send(&mut self, method: Method, path: &str, body: Option<Bytes>) -> Result<Http1Response, Http1Error> {
        match tokio::time::timeout(self.timeout, self.send_on_connection(method, path, body)).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(e)) => {
                self.sender = None;
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
        let sender = match &mut self.sender {
            Some(sender) => sender,
            None => self.sender.insert(self.connect().await?),
        };
        sender.ready().await?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok(Http1Response { status, body })
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, Http1Error> {
        let stream = TcpStream::connect(&self.authority).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        // The connection's I/O runs beside the requests; it ends when the sender is dropped.
        tokio::spawn(connection);
        Ok(sender)
    }
}
