//! The clients' HTTP: one request per connection (as `curl` makes them), from the client host
//! over the simulated TCP ([`crate::tcp`]) to a node's REST port, with hyper's HTTP/1.1
//! client, the admin key and the simulation's organization. What a call gives back says
//! whether the request can have taken effect: a connection that could not be opened sent
//! nothing, a request that was sent and not answered may have.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

use corral_raft_types::NodeId;

use crate::network::{Fabric, Port, CLIENT_LIFE};

/// What became of one request.
#[derive(Debug)]
pub enum Reply {
    /// The node answered.
    Answered(StatusCode, Bytes),
    /// No connection could be opened (refused, or not before the timeout): nothing was sent.
    NotSent,
    /// Sent, but no answer came before the timeout or the connection ended: it may or may
    /// not have taken effect.
    NoAnswer,
}

/// Sends one request (`body`: JSON) to node `node`'s REST API and waits at most `timeout`
/// for the answer.
pub async fn call(
    fabric: &Fabric,
    node: NodeId,
    method: Method,
    path: &str,
    body: Option<String>,
    organization: &str,
    timeout: Duration,
) -> Reply {
    let deadline = Instant::now() + timeout;
    let connected = tokio::time::timeout_at(deadline, crate::tcp::connect(fabric, CLIENT_LIFE, node, Port::Api)).await;
    let Ok(Ok(stream)) = connected else { return Reply::NotSent };
    let Ok((mut sender, connection)) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await else {
        return Reply::NotSent;
    };
    // Ends when the request is answered and the sender dropped, or the connection breaks.
    tokio::spawn(connection);
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, crate::node::member(node).api_addr)
        .header(hyper::header::AUTHORIZATION, format!("Bearer {}", crate::node::ADMIN_KEY))
        .header("x-organization-id", organization);
    if body.is_some() {
        request = request.header(hyper::header::CONTENT_TYPE, "application/json");
    }
    let Ok(request) = request.body(Full::new(Bytes::from(body.unwrap_or_default()))) else {
        return Reply::NotSent;
    };
    let answer = async move {
        let response = sender.send_request(request).await.ok()?;
        let status = response.status();
        let body = response.into_body().collect().await.ok()?.to_bytes();
        Some((status, body))
    };
    match tokio::time::timeout_at(deadline, answer).await {
        Ok(Some((status, body))) => Reply::Answered(status, body),
        _ => Reply::NoAnswer,
    }
}
