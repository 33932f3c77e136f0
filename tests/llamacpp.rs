//! Greedy equality with llama.cpp on the three fetchable GGUFs: the peer's
//! ids (made by scripts/peer/llamacpp-fixtures.sh, with the host's CPU
//! flags in each fixture) fed back position by position. Where pdbench
//! chooses otherwise the test names the position and both margins, and
//! passes only at a near tie (`pdbench::peer::NEAR_TIE_LOGITS`).

mod common;

use std::path::Path;

use pdbench::peer::{self, PeerTokens};

fn check(name: &str) {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/llamacpp")
        .join(format!("{name}.json"));
    let want = PeerTokens::read(&fixture).unwrap();
    let m = common::load(name);
    let got = peer::compare(&m, &want).unwrap();
    eprintln!("{name} against {}: {}", want.peer, got.describe());
    assert!(got.agrees(), "{name}: {}", got.describe());
    assert!(
        got.positions >= 4 * 32,
        "{name}: {} positions",
        got.positions
    );
    // Ties aside, the two compute the same numbers.
    assert!(got.max_logit_diff < 1.0, "{name}: {}", got.describe());
}

#[test]
fn smollm2_greedy_equals_llamacpp() {
    check("smollm2-135m");
}

#[test]
fn qwen_coder_05b_greedy_equals_llamacpp() {
    check("qwen2.5-coder-0.5b");
}

#[test]
fn qwen_coder_15b_greedy_equals_llamacpp() {
    check("qwen2.5-coder-1.5b");
}

/// `check --peer-tokens` from the command line: the report on the right
/// file, a clear error on another model's.
#[test]
fn check_peer_tokens_names_partings_and_refuses_another_models_ids() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llamacpp");
    common::fetched("qwen2.5-coder-0.5b");
    let home = common::store();
    let cmd = || {
        let mut c = assert_cmd::Command::cargo_bin("pdbench").unwrap();
        c.env("PDBENCH_HOME", home.root()).args([
            "check",
            "--no-fetch",
            "--threads",
            "1",
            "--model",
            "qwen2.5-coder-0.5b",
            "--peer-tokens",
        ]);
        c
    };
    let out = cmd()
        .arg(fixtures.join("qwen2.5-coder-0.5b.json"))
        .assert()
        .success();
    let text = String::from_utf8_lossy(&out.get_output().stdout).to_string();
    assert!(text.contains("3 of 4 cases token-identical"), "{text}");
    assert!(
        text.contains("position 9") && text.contains("near tie"),
        "{text}"
    );
    let out = cmd()
        .arg(fixtures.join("smollm2-135m.json"))
        .assert()
        .code(1);
    let err = String::from_utf8_lossy(&out.get_output().stderr).to_string();
    assert!(
        err.starts_with("Error: ") && err.contains("--peer-tokens") && err.contains("sha256"),
        "{err}"
    );
}
