//! `atoll server`: for now the store-backed skeleton of the API server. It opens the store
//! and answers the unauthenticated health and version endpoints; the Kubernetes API, TLS and
//! authentication come with the API server itself.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use store::Store;

use crate::StoreArgs;

#[derive(clap::Args)]
pub struct ServerArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:6443")]
    pub listen: SocketAddr,
}

pub async fn run(args: ServerArgs) -> Result<()> {
    let store = args.store.open().await?;
    let listener =
        tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("listening on {}", args.listen))?;
    // Tests and scripts read this line to learn the port when listening on port 0.
    println!("listening on {}", listener.local_addr()?);
    let shutdown = tokio::signal::ctrl_c();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(conn) => conn,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        continue;
                    }
                };
                let store = store.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| handle(store.clone(), req));
                    if let Err(e) = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await
                    {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                });
            }
            _ = &mut shutdown => {
                tracing::info!("shutting down");
                return Ok(());
            }
        }
    }
}

fn json(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
    resp
}

async fn handle(
    store: Arc<dyn Store>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(match req.uri().path() {
        "/healthz" | "/livez" | "/readyz" => match store.current_revision().await {
            Ok(_) => Response::new(Full::new(Bytes::from_static(b"ok"))),
            Err(e) => {
                let mut resp = Response::new(Full::new(Bytes::from(format!("store unavailable: {e}"))));
                *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                resp
            }
        },
        "/version" => json(
            StatusCode::OK,
            serde_json::json!({
                "major": "1",
                "minor": "33",
                "gitVersion": concat!("v1.33.0-atoll.", env!("CARGO_PKG_VERSION")),
                "platform": "linux/amd64",
            }),
        ),
        _ => json(
            StatusCode::NOT_FOUND,
            serde_json::json!({
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Failure",
                "message": "the server could not find the requested resource",
                "reason": "NotFound",
                "code": 404,
            }),
        ),
    })
}
