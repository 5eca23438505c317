//! The edge-node command line: model evaluation, start-up errors, config.

use std::process::Command;

use edgedesk_systest::*;

fn edge_node() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_systest-edge-node"));
    c.env(
        "EDGEDESK_NLU__BUNDLE",
        format!("{:?}", bundle_dir().to_string_lossy()),
    );
    c
}

#[test]
fn cli_eval_prints_every_metric() {
    let out = edge_node()
        .env("ORT_DYLIB_PATH", ort_path())
        .args(["nlu", "eval"])
        .arg(repo_root().join("data/clinc150-oos/oos_val.csv"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for field in [
        "accuracy",
        "macro-F1",
        "coverage",
        "accuracy@threshold",
        "out-of-scope recall",
        "latency p50",
        "latency p99",
        "latency mean",
    ] {
        assert!(text.contains(field), "missing {field}: {text}");
    }
}

#[test]
fn verify_names_the_first_stage_and_classify_which_stage_answered() {
    let bundle = repo_root().join("build/models/multilingual");
    let run = |args: &[&str]| {
        let out = edge_node()
            .env("ORT_DYLIB_PATH", ort_path())
            .arg("nlu")
            .arg("--bundle")
            .arg(&bundle)
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let verified = run(&["verify"]);
    assert!(
        verified.contains("first stage first_stage.onnx at 0."),
        "{verified}"
    );
    // An everyday question and one only the encoder gets right
    // (nlu/tests/encoder.rs has both).
    let classified = run(&["classify", "I forgot my passcode", "充值没成功钱却扣了"]);
    let lines: Vec<&str> = classified.lines().collect();
    assert_eq!(lines.len(), 2, "{classified}");
    assert!(
        lines[0].starts_with("passcode_forgotten") && lines[0].contains("answer first-stage"),
        "{classified}"
    );
    assert!(
        lines[1].starts_with("top_up_failed") && lines[1].contains("answer encoder"),
        "{classified}"
    );
    // The linear bundle has no first stage and says nothing of one.
    let out = edge_node()
        .env("ORT_DYLIB_PATH", ort_path())
        .args(["nlu", "verify"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && !text.contains("first stage"),
        "{text}"
    );
}

#[test]
fn missing_or_wrong_onnxruntime_is_a_clear_startup_error() {
    let dir = tempfile::tempdir().unwrap();
    let not_a_library = dir.path().join("libonnxruntime.so");
    std::fs::write(&not_a_library, b"not an ELF file").unwrap();
    for path in [dir.path().join("absent.so"), not_a_library] {
        let out = edge_node()
            .env("ORT_DYLIB_PATH", &path)
            .args(["nlu", "verify"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(69), "{out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("scripts/provision.sh"),
            "the error names the fix: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn invalid_config_exits_64_naming_the_key() {
    let out = edge_node()
        .env("EDGEDESK_SERVER__MAX_CONNECTIONS", "lots")
        .arg("serve")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("server.max_connections"));
    let out = edge_node().args(["config", "default"]).output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("[server]"));
}
