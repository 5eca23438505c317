//! What the controller's integration tests share: a loopback configuration
//! in a data directory, and a running controller on it.
#![allow(dead_code)] // each test crate uses its own part

use tokio_util::sync::CancellationToken;

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Every listener on loopback (free ports), state in `dir`.
pub fn config(dir: &std::path::Path) -> cloud_controller::config::Config {
    let mut c = cloud_controller::config::Config::default();
    c.http.listen = "127.0.0.1:0".into();
    c.mqtt.listen = format!("127.0.0.1:{}", free_port());
    c.models.quic_listen = "127.0.0.1:0".into();
    c.store.data_dir = dir.to_owned();
    c
}

/// A controller with the loopback configuration, in a fresh directory.
pub async fn controller() -> (
    cloud_controller::Controller,
    CancellationToken,
    tempfile::TempDir,
) {
    let dir = tempfile::tempdir().unwrap();
    let token = CancellationToken::new();
    let ctl = cloud_controller::run(config(dir.path()), token.clone())
        .await
        .unwrap();
    (ctl, token, dir)
}
