//! Logging set-up for both binaries: `RUST_LOG` wins over the configured
//! level; text or JSON lines on stderr.

/// Install the global subscriber. `level` is an `EnvFilter` directive
/// (e.g. `info` or `edge_node=debug`); an invalid one falls back to `info`.
pub fn init(level: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
