//! The `edge-node` command line: serve the kiosk, print config, evaluate the
//! model. `main.rs` only calls [`main`]; keeping it here lets the system
//! tests build the same program under their own name.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use crate::config::{Config, DEFAULT_TOML, LogFormat};
use clap::{Parser, Subcommand};
use edgedesk_nlu::eval::{self, Outcome};
use edgedesk_nlu::{Model, runtime};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "edge-node",
    version,
    about = "EdgeDesk edge node: kiosk chat answered locally, offline-first"
)]
struct Cli {
    /// Configuration file (TOML). See `edge-node config default`.
    #[arg(long, short, global = true, env = "EDGEDESK_CONFIG")]
    config: Option<PathBuf>,
    /// Overrides server.listen, e.g. 0.0.0.0:8080.
    #[arg(long, global = true)]
    listen: Option<String>,
    /// Overrides store.path (the SQLite database).
    #[arg(long, global = true)]
    db: Option<PathBuf>,
    /// Overrides nlu.bundle (the model bundle folder).
    #[arg(long, global = true)]
    bundle: Option<PathBuf>,
    /// Overrides nlu.onnxruntime_path (libonnxruntime.so).
    #[arg(long, global = true)]
    onnxruntime: Option<PathBuf>,
    /// Overrides log.format.
    #[arg(long, global = true, value_parser = ["text", "json"])]
    log_format: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the node (the default when no command is given).
    Serve,
    /// Configuration helpers.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Intent model tools.
    #[command(subcommand)]
    Nlu(NluCmd),
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Print the documented default configuration.
    Default,
    /// Validate the configuration (file, environment, flags) and print the result.
    Check,
}

#[derive(Subcommand)]
enum NluCmd {
    /// Evaluate the model on a CSV with columns text,category (BANKING77 format).
    Eval {
        file: PathBuf,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Classify utterances given as arguments.
    Classify {
        #[arg(required = true)]
        text: Vec<String>,
    },
    /// Verify a bundle (manifest, hashes, golden set) without serving.
    Verify { dir: Option<PathBuf> },
}

fn flag_overrides(cli: &Cli) -> Vec<(String, String)> {
    let quote = |s: &str| toml::Value::String(s.to_owned()).to_string();
    let mut v = Vec::new();
    if let Some(x) = &cli.listen {
        v.push(("EDGEDESK_SERVER__LISTEN".into(), quote(x)));
    }
    if let Some(x) = &cli.db {
        v.push(("EDGEDESK_STORE__PATH".into(), quote(&x.to_string_lossy())));
    }
    if let Some(x) = &cli.bundle {
        v.push(("EDGEDESK_NLU__BUNDLE".into(), quote(&x.to_string_lossy())));
    }
    if let Some(x) = &cli.onnxruntime {
        v.push((
            "EDGEDESK_NLU__ONNXRUNTIME_PATH".into(),
            quote(&x.to_string_lossy()),
        ));
    }
    if let Some(x) = &cli.log_format {
        v.push(("EDGEDESK_LOG__FORMAT".into(), quote(x)));
    }
    v
}

/// Log lines; for `serve`, trace export too when `telemetry.otlp_endpoint`
/// is set (the node id is the spans' service instance).
fn init_telemetry(
    config: &Config,
    export: bool,
) -> Result<edgedesk_support::telemetry::Telemetry, ExitCode> {
    let otlp = if export {
        config
            .telemetry
            .otlp("edgedesk-edge-node", &config.cloud.node_id, &["edge_node"])
    } else {
        None
    };
    edgedesk_support::telemetry::init(
        &config.log.level,
        config.log.format == LogFormat::Json,
        otlp,
    )
    .map_err(|e| {
        eprintln!("edge-node: configuration error: {e}");
        ExitCode::from(64)
    })
}

/// Parse the command line and run it; the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Config(ConfigCmd::Default)) = cli.command {
        print!("{DEFAULT_TOML}");
        return ExitCode::SUCCESS;
    }
    let env = std::env::vars().chain(flag_overrides(&cli));
    let config = match Config::load(cli.config.as_deref(), env) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("edge-node: configuration error: {e}");
            return ExitCode::from(64);
        }
    };
    let command = cli.command.unwrap_or(Command::Serve);
    let telemetry = match init_telemetry(&config, matches!(command, Command::Serve)) {
        Ok(t) => t,
        Err(code) => return code,
    };
    let code = match command {
        Command::Config(ConfigCmd::Default) => unreachable!("handled above"),
        Command::Config(ConfigCmd::Check) => {
            match toml::to_string_pretty(&config) {
                Ok(s) => print!("{s}"),
                Err(e) => eprintln!("edge-node: {e}"),
            }
            ExitCode::SUCCESS
        }
        Command::Serve => serve(config),
        Command::Nlu(cmd) => nlu(config, cmd),
    };
    // After the runtime is gone: the last spans go out.
    telemetry.shutdown();
    code
}

fn serve(config: Config) -> ExitCode {
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("edge-node: cannot start the runtime: {e}");
            return ExitCode::from(71);
        }
    };
    rt.block_on(async {
        let token = CancellationToken::new();
        tokio::spawn(edgedesk_support::signal::cancel_on_signal(token.clone()));
        let node = match crate::run(config, token).await {
            Ok(n) => n,
            Err(e) => {
                tracing::error!("{e}");
                eprintln!("edge-node: {e}");
                return ExitCode::from(e.exit_code() as u8);
            }
        };
        println!("kiosk: http://{}/", node.addr);
        match node.wait().await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("edge-node: {e}");
                ExitCode::from(e.exit_code() as u8)
            }
        }
    })
}

/// Load a bundle for the `nlu` tools; `golden` also runs its golden set.
fn load_model(config: &Config, dir: Option<PathBuf>, golden: bool) -> Result<Model, ExitCode> {
    let fail = |e: edgedesk_nlu::NluError| {
        eprintln!("edge-node: {e}");
        let code = if matches!(e, edgedesk_nlu::NluError::Runtime(_)) {
            69
        } else {
            65
        };
        ExitCode::from(code)
    };
    runtime::init(&config.nlu.onnxruntime_path).map_err(fail)?;
    let dir = dir.unwrap_or_else(|| config.nlu.bundle.clone());
    let threshold = config.nlu.confidence_threshold;
    if golden {
        Model::load_checked(&dir, 1, threshold).map_err(fail)
    } else {
        Model::load(&dir, 1, threshold).map_err(fail)
    }
}

fn nlu(config: Config, cmd: NluCmd) -> ExitCode {
    match cmd {
        NluCmd::Verify { dir } => match load_model(&config, dir, true) {
            Ok(m) => {
                let man = m.manifest();
                let first = man.first_stage.as_ref().map_or(String::new(), |f| {
                    format!(", first stage {} at {:.2}", f.file, f.min_confidence)
                });
                println!(
                    "ok: {} {} ({} labels, threshold {:.2}{first}); hashes and golden set verified",
                    man.name,
                    man.version,
                    man.labels.len(),
                    m.threshold()
                );
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        NluCmd::Classify { text } => {
            let model = match load_model(&config, None, false) {
                Ok(m) => m,
                Err(code) => return code,
            };
            for t in text {
                match model.classify(&t) {
                    // With a first stage: which model answered.
                    Ok(p) => println!(
                        "{:<28} {:.3} {}{}  {t}",
                        p.label,
                        p.confidence,
                        if p.answered { "answer" } else { "reject" },
                        match (model.has_first_stage(), p.first_stage) {
                            (false, _) => "",
                            (true, true) => " first-stage",
                            (true, false) => " encoder    ",
                        }
                    ),
                    Err(e) => {
                        eprintln!("edge-node: {e}");
                        return ExitCode::from(65);
                    }
                }
            }
            ExitCode::SUCCESS
        }
        NluCmd::Eval { file, json } => {
            let rows = match eval::read_rows(&file) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("edge-node: {e}");
                    return ExitCode::from(66);
                }
            };
            let model = match load_model(&config, None, false) {
                Ok(m) => m,
                Err(code) => return code,
            };
            let oos = model.manifest().out_of_scope_label.clone();
            let mut outcomes = Vec::with_capacity(rows.len());
            for (text, category) in rows {
                let started = Instant::now();
                let p = match model.classify(&text) {
                    Ok(p) => p,
                    Err(e) => {
                        eprintln!("edge-node: {e}");
                        return ExitCode::from(65);
                    }
                };
                let micros = started.elapsed().as_secs_f64() * 1e6;
                let lang = edgedesk_common::chat::Lang::detect(&text)
                    .unwrap_or(edgedesk_common::chat::Lang::En);
                outcomes.push(Outcome {
                    expected: category,
                    predicted: p.label,
                    answered: p.answered,
                    micros,
                    lang: lang.as_str().to_owned(),
                    first_stage: model.has_first_stage().then_some(p.first_stage),
                });
            }
            let report = eval::report(&outcomes, &oos, model.threshold());
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).unwrap_or_default()
                );
            } else {
                println!("{report}");
            }
            ExitCode::SUCCESS
        }
    }
}
