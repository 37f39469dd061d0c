//! Test-only stub servers on 127.0.0.1:0 serving canned vendor responses. Minimal on purpose: the
//! wire-faithful emulators live in `src/sandbox` and share no code with the connectors.

use std::sync::{Arc, Mutex};

use axum::Router;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Serve `router` on a loopback port; returns `http://127.0.0.1:PORT`.
pub async fn serve(router: Router) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{addr}")
}

/// A raw server: the first `drops` connections are closed right after the request arrives;
/// later ones get `response` (a full HTTP/1.1 response). Returns the base URL and a hit counter.
pub async fn dropping_server(drops: usize, response: String) -> (String, Arc<Mutex<usize>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(Mutex::new(0usize));
    let h = hits.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let n = {
                let mut g = h.lock().unwrap();
                *g += 1;
                *g
            };
            let response = response.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16384];
                let _ = sock.read(&mut buf).await;
                if n > drops {
                    let _ = sock.write_all(response.as_bytes()).await;
                }
                // dropping `sock` closes the connection
            });
        }
    });
    (format!("http://{addr}"), hits)
}

/// A canned `200 OK` JSON response for [`dropping_server`].
pub fn json_response(body: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}
