//! Where the trainer runs ([`Runner`]): by default a child process here
//! ([`ChildProcess`]); under Kubernetes a Job (`operator::job`).
//!
//! The trainer as a child process: the configured command with the run's
//! arguments, under an address-space limit (`prlimit`, util-linux) and a
//! wall-clock timeout, its output kept in the run's `trainer.log`, the last
//! lines returned for the API. Killed when the controller shuts down, and on
//! Linux also when the controller dies without shutting down (`SIGKILL`, a
//! crash): `setpriv --pdeathsig KILL` (util-linux) asks the kernel to, so no
//! trainer outlives the run a restart marks failed. (The signal follows the
//! thread that spawned the child: a runtime worker, which lives as long as
//! the controller.)

use std::collections::VecDeque;
use std::ffi::OsString;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio_util::sync::CancellationToken;

/// Lines of output the run keeps for the API.
pub const TAIL_LINES: usize = 30;

/// How to start the trainer.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Program and its first arguments (`python3 scripts/train_model.py`).
    pub command: Vec<String>,
    pub timeout: Duration,
    /// Address-space limit in MiB; 0 for none.
    pub memory_mb: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum TrainerError {
    #[error("learning.training.command is empty")]
    NoCommand,
    #[error("cannot start the trainer ({program}): {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("the trainer ran longer than {0:?} and was stopped")]
    Timeout(Duration),
    #[error("the trainer exited with {status}")]
    Exit { status: String },
    #[error("the controller shut down during the run")]
    Cancelled,
    #[error("trainer log: {0}")]
    Log(std::io::Error),
    /// The Kubernetes Job could not be run or watched.
    #[error("training Job: {0}")]
    Job(String),
}

/// What a runner returns: the last [`TAIL_LINES`] lines of output, and how
/// the trainer ended.
pub type Outcome = (String, Result<(), TrainerError>);

/// Runs the trainer with the run's arguments; its output goes to
/// `dir/trainer.log`. Stops it when `cancel` fires.
pub trait Runner: Send + Sync {
    fn run<'a>(
        &'a self,
        spec: &'a Spec,
        args: &'a [OsString],
        dir: &'a Path,
        cancel: &'a CancellationToken,
    ) -> Pin<Box<dyn Future<Output = Outcome> + Send + 'a>>;
}

/// The trainer as a child process of the controller ([`run`]).
pub struct ChildProcess;

impl Runner for ChildProcess {
    fn run<'a>(
        &'a self,
        spec: &'a Spec,
        args: &'a [OsString],
        dir: &'a Path,
        cancel: &'a CancellationToken,
    ) -> Pin<Box<dyn Future<Output = Outcome> + Send + 'a>> {
        Box::pin(async move { run(spec, args, &dir.join("trainer.log"), cancel).await })
    }
}

/// Run the trainer with `args` appended; its output goes to `log`. Returns
/// the last [`TAIL_LINES`] lines, also when it fails (with the error).
pub async fn run(
    spec: &Spec,
    args: &[OsString],
    log: &Path,
    cancel: &CancellationToken,
) -> (String, Result<(), TrainerError>) {
    let mut tail = VecDeque::with_capacity(TAIL_LINES);
    let result = run_inner(spec, args, log, cancel, &mut tail).await;
    (Vec::from(tail).join("\n"), result)
}

async fn run_inner(
    spec: &Spec,
    args: &[OsString],
    log: &Path,
    cancel: &CancellationToken,
    tail: &mut VecDeque<String>,
) -> Result<(), TrainerError> {
    let (program, first) = spec.command.split_first().ok_or(TrainerError::NoCommand)?;
    // The wrappers would report a missing trainer only as their exit status.
    if !findable(program) {
        return Err(TrainerError::Spawn {
            program: program.clone(),
            source: std::io::ErrorKind::NotFound.into(),
        });
    }
    // Wrappers first (each execs the next), then the trainer.
    let mut chain: Vec<String> = Vec::new();
    if cfg!(target_os = "linux") {
        chain.extend(["setpriv", "--pdeathsig", "KILL", "--"].map(String::from));
    }
    if spec.memory_mb > 0 {
        chain.push("prlimit".into());
        chain.push(format!("--as={}", spec.memory_mb * 1024 * 1024));
        chain.push("--".into());
    }
    chain.push(program.clone());
    let mut cmd = tokio::process::Command::new(&chain[0]);
    cmd.args(&chain[1..])
        .args(first)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|source| TrainerError::Spawn {
        program: chain.join(" "),
        source,
    })?;
    let mut file = tokio::fs::File::create(log)
        .await
        .map_err(TrainerError::Log)?;
    // Both streams into one line channel (bounded; the readers wait).
    let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(256);
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    for stream in [
        Box::new(stdout) as Box<dyn tokio::io::AsyncRead + Send + Unpin>,
        Box::new(stderr),
    ] {
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stream).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if tx.send(line).await.is_err() {
                    break;
                }
            }
        });
    }
    drop(tx);
    let deadline = tokio::time::sleep(spec.timeout);
    tokio::pin!(deadline);
    let mut open = true;
    loop {
        tokio::select! {
            line = rx.recv(), if open => match line {
                Some(line) => {
                    file.write_all(line.as_bytes()).await.map_err(TrainerError::Log)?;
                    file.write_all(b"\n").await.map_err(TrainerError::Log)?;
                    tracing::debug!(target: "trainer", "{line}");
                    if tail.len() == TAIL_LINES {
                        tail.pop_front();
                    }
                    tail.push_back(line);
                }
                None => open = false,
            },
            status = child.wait(), if !open => {
                file.flush().await.map_err(TrainerError::Log)?;
                let status = status.map_err(TrainerError::Log)?;
                return if status.success() {
                    Ok(())
                } else {
                    Err(TrainerError::Exit { status: status.to_string() })
                };
            }
            _ = &mut deadline => {
                let _ = child.kill().await;
                return Err(TrainerError::Timeout(spec.timeout));
            }
            _ = cancel.cancelled() => {
                let _ = child.kill().await;
                return Err(TrainerError::Cancelled);
            }
        }
    }
}

/// Is `program` there to run: a path to a file, or a name found on `PATH`?
fn findable(program: &str) -> bool {
    if program.contains('/') {
        return Path::new(program).is_file();
    }
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(program).is_file()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str, timeout_ms: u64, memory_mb: u64) -> Spec {
        Spec {
            command: vec!["sh".into(), "-c".into(), script.into(), "sh".into()],
            timeout: Duration::from_millis(timeout_ms),
            memory_mb,
        }
    }

    #[tokio::test]
    async fn output_is_logged_and_its_tail_kept() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("t.log");
        let spec = sh(
            "for i in $(seq 1 40); do echo line $i; done; echo oops >&2; echo args \"$@\"",
            30_000,
            2048,
        );
        let (tail, r) = run(
            &spec,
            &["--out".into(), "x".into()],
            &log,
            &CancellationToken::new(),
        )
        .await;
        r.unwrap();
        assert_eq!(tail.lines().count(), TAIL_LINES);
        assert!(tail.contains("args --out x"), "{tail}");
        assert!(tail.contains("oops"), "{tail}");
        let logged = std::fs::read_to_string(&log).unwrap();
        assert!(logged.contains("line 1\n") && logged.contains("line 40\n"));
    }

    #[tokio::test]
    async fn a_failing_trainer_says_how_it_ended() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("t.log");
        let (tail, r) = run(
            &sh("echo golden set failed >&2; exit 3", 30_000, 0),
            &[],
            &log,
            &CancellationToken::new(),
        )
        .await;
        assert!(matches!(r, Err(TrainerError::Exit { ref status }) if status.contains('3')));
        assert_eq!(tail, "golden set failed");
    }

    #[tokio::test]
    async fn a_slow_trainer_is_stopped_at_its_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let (_, r) = run(
            &sh("echo started; exec sleep 600", 300, 0),
            &[],
            &dir.path().join("t.log"),
            &CancellationToken::new(),
        )
        .await;
        assert!(matches!(r, Err(TrainerError::Timeout(_))), "{r:?}");
    }

    #[tokio::test]
    async fn the_memory_limit_applies_to_the_trainer() {
        let dir = tempfile::tempdir().unwrap();
        let (tail, r) = run(
            &sh("ulimit -v", 30_000, 256),
            &[],
            &dir.path().join("t.log"),
            &CancellationToken::new(),
        )
        .await;
        r.unwrap();
        assert_eq!(tail, (256 * 1024).to_string(), "ulimit -v is in KiB");
    }

    #[tokio::test]
    async fn shutdown_stops_the_trainer_and_a_missing_program_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let cancel = CancellationToken::new();
        cancel.cancel();
        let (_, r) = run(
            &sh("exec sleep 600", 60_000, 0),
            &[],
            &dir.path().join("t.log"),
            &cancel,
        )
        .await;
        assert!(matches!(r, Err(TrainerError::Cancelled)), "{r:?}");
        let spec = Spec {
            command: vec!["/nonexistent/trainer".into()],
            timeout: Duration::from_secs(5),
            memory_mb: 0,
        };
        let (_, r) = run(
            &spec,
            &[],
            &dir.path().join("t.log"),
            &CancellationToken::new(),
        )
        .await;
        let e = r.unwrap_err().to_string();
        assert!(e.contains("/nonexistent/trainer"), "{e}");
    }
}
