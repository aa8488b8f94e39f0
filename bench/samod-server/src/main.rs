//! Bench-only automerge-repo sync server on the `samod` crate: binds the address given as the
//! first argument (default `127.0.0.1:0`), prints `listening on <addr>`, and serves the
//! automerge-repo WebSocket protocol at `/` with in-memory storage. Like the npm sync server
//! it announces no documents (a client asks for the ones it wants) and accepts changes from
//! every peer. Run by `scripts/bench-interop.sh`; not part of Doorstep.

use axum::Router;
use axum::extract::State;
use axum::extract::ws::WebSocketUpgrade;
use axum::response::Response;
use axum::routing::get;
use samod::{AcceptorHandle, Repo, ShareConfig};

async fn upgrade(State(acceptor): State<AcceptorHandle>, ws: WebSocketUpgrade) -> Response {
    ws.max_message_size(64 << 20)
        .on_upgrade(move |socket| async move {
            if let Err(e) = acceptor.accept_axum(socket, None) {
                eprintln!("samod refused a connection: {e:?}");
            }
        })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".to_string());
    let repo = Repo::build_tokio()
        .with_peer_id("samod-bench-server".into())
        .with_share_policy(ShareConfig::read_write().with_announce(false))
        .load()
        .await;
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    let local = listener.local_addr()?;
    let acceptor = repo.make_acceptor(format!("ws://{local}/").parse()?)?;
    let app = Router::new().route("/", get(upgrade)).with_state(acceptor);
    println!("listening on {local}");
    axum::serve(listener, app).await?;
    Ok(())
}
