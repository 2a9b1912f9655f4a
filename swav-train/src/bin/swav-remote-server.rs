//! Serves this machine's CPU (burn's `flex` backend) to SwAV workers on other machines through
//! burn's remote backend over WebSocket.
//!
//! ```text
//! swav-remote-server [--port 3000] [--bind 0.0.0.0]
//! ```
//!
//! A run then names it as a worker's device: `run.devices = ["cpu", "ws://this-host:3000"]`
//! with `swav.world_size = 2`. The autodiff graph stays on the client; the server executes the
//! tensor operations. WebSocket is unencrypted: use it on a trusted network only.

use std::io::Write;
use std::net::TcpListener;
use std::process::ExitCode;

use burn::tensor::Device;
use burn::tensor::server::{RemoteServer, WebSocketTransport};

/// Large freed blocks stay with the process for the next step (`swav_engine::BlockCache`).
#[global_allocator]
static ALLOC: swav_engine::BlockCache = swav_engine::BlockCache::new();

fn main() -> ExitCode {
    let mut port: u16 = 3000;
    let mut bind = String::from("0.0.0.0");
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let value = args.next();
        match (a.as_str(), value) {
            ("--port", Some(v)) => match v.parse() {
                Ok(p) => port = p,
                Err(_) => {
                    eprintln!("swav-remote-server: --port `{v}` is not a port number");
                    return ExitCode::from(2);
                }
            },
            ("--bind", Some(v)) => bind = v,
            _ => {
                eprintln!("usage: swav-remote-server [--port 3000] [--bind 0.0.0.0]");
                return ExitCode::from(2);
            }
        }
    }
    let listener = match TcpListener::bind((bind.as_str(), port)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("swav-remote-server: cannot listen on {bind}:{port}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let addr = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("swav-remote-server: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The first line says where it listens (port 0 picks a free one): tests read it.
    println!("listening on ws://{addr}");
    drop(std::io::stdout().flush());
    match RemoteServer::new([Device::flex()]).serve(WebSocketTransport::from_listener(listener)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("swav-remote-server: {e}");
            ExitCode::FAILURE
        }
    }
}
