//! Locating and initialising the ONNX Runtime shared library.
//!
//! `ort` is built with `load-dynamic`: nothing is linked at build time, and if
//! no library is found, `ort` would panic at the first call. [`init`] checks
//! first and returns an error that names the fix instead. ONNX Runtime allows
//! one environment per process, so the outcome is cached.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use super::NluError;

/// The ONNX Runtime release this build is made for (the pinned PyPI wheel).
pub const ORT_VERSION: &str = "1.31.1";

const FIX: &str = "run scripts/provision.sh (it downloads the pinned onnxruntime 1.31.1 wheel and \
                   extracts the library), then set nlu.onnxruntime_path or ORT_DYLIB_PATH to it";

static INIT: OnceLock<Result<(PathBuf, ort::environment::Environment), String>> = OnceLock::new();

/// Where to look: the configured path, then `ORT_DYLIB_PATH`, then
/// `libonnxruntime.so` next to the executable.
pub fn resolve(configured: &Path, env_value: Option<String>) -> Option<PathBuf> {
    if !configured.as_os_str().is_empty() {
        return Some(configured.to_owned());
    }
    if let Some(v) = env_value.filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(v));
    }
    let exe = std::env::current_exe().ok()?;
    let beside = exe.parent()?.join("libonnxruntime.so");
    beside.exists().then_some(beside)
}

/// Initialise ONNX Runtime from `configured` (may be empty). Idempotent: the
/// first call decides, later calls return its outcome.
pub fn init(configured: &Path) -> Result<&'static ort::environment::Environment, NluError> {
    match INIT.get_or_init(|| init_once(configured)) {
        Ok((_, env)) => Ok(env),
        Err(message) => Err(NluError::Runtime(message.clone())),
    }
}

/// The environment, if [`init`] succeeded earlier.
pub fn environment() -> Option<&'static ort::environment::Environment> {
    INIT.get().and_then(|r| r.as_ref().ok()).map(|(_, env)| env)
}

fn init_once(configured: &Path) -> Result<(PathBuf, ort::environment::Environment), String> {
    let path = resolve(configured, std::env::var("ORT_DYLIB_PATH").ok())
        .ok_or_else(|| format!("ONNX Runtime library not found: nlu.onnxruntime_path and ORT_DYLIB_PATH are unset; {FIX}"))?;
    if !path.is_file() {
        return Err(format!(
            "ONNX Runtime library {} does not exist; {FIX}",
            path.display()
        ));
    }
    let builder = ort::init_from(&path).map_err(|e| {
        format!(
            "ONNX Runtime library {} cannot be used: {e}; {FIX}",
            path.display()
        )
    })?;
    let env = builder
        .with_name("edgedesk")
        .build()
        .map_err(|e| format!("ONNX Runtime environment failed to start: {e}; {FIX}"))?;
    tracing::info!(path = %path.display(), "ONNX Runtime loaded");
    Ok((path, env))
}
