//! `pdbench bench --kernels --widths` on a real GGUF, from the command
//! line: the JSON a report is built from.

mod common;

#[test]
fn bench_times_kernels_against_memory_and_the_width_curve() {
    common::fetched("smollm2-135m");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("b");
    let home = common::store();
    let run = assert_cmd::Command::cargo_bin("pdbench")
        .unwrap()
        .env("PDBENCH_HOME", home.root())
        .args([
            "bench",
            "--model",
            "smollm2-135m",
            "--threads",
            "1",
            "--repeats",
            "1",
            "--no-speed",
            "--kernels",
            "--widths",
            "1,2,4",
            "--prefill",
            "16",
        ])
        .arg("--out")
        .arg(&out)
        .assert()
        .success();
    let stderr = String::from_utf8_lossy(&run.get_output().stderr).to_string();
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("b.json")).unwrap()).unwrap();
    // No pp/tg rows with --no-speed.
    assert_eq!(r["rows"].as_array().unwrap().len(), 0);
    // Which kernel each format runs, printed and recorded.
    let used = &r["kernels_used"][0]["formats"];
    let formats: Vec<&str> = used
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f[0].as_str().unwrap())
        .collect();
    assert!(formats.contains(&"Q4_1"), "{used}");
    assert!(stderr.contains("Q4_1 ×"), "{stderr}");
    // One kernel row per format used in a decode step, with sane figures.
    let kernels = r["kernels"].as_array().unwrap();
    assert!(kernels.iter().any(|k| k["format"] == "Q4_1"), "{kernels:?}");
    for k in kernels {
        for field in [
            "pass_gb_per_s",
            "stream_gb_per_s",
            "pct_of_stream",
            "stream_ns_per_block",
        ] {
            let v = k[field].as_f64().unwrap();
            assert!(v.is_finite() && v > 0.0, "{field}: {k}");
        }
        assert!(k["bytes"].as_u64().unwrap() > 1_000_000, "{k}");
    }
    // The width curve: cost(1) is 1 by definition, wider forwards cost more
    // than nothing and less than k separate steps would on any sane kernel.
    let widths = r["widths"].as_array().unwrap();
    assert_eq!(widths.len(), 3);
    assert_eq!(widths[0]["width"], 1);
    assert!((widths[0]["cost_vs_width_1"].as_f64().unwrap() - 1.0).abs() < 1e-12);
    for w in widths {
        assert_eq!(w["context"], 16);
        assert!(w["forward_ns_median"].as_f64().unwrap() > 0.0);
    }
    // The host's SIMD flags head the Markdown.
    let md = std::fs::read_to_string(dir.path().join("b.md")).unwrap();
    if cfg!(target_arch = "x86_64") {
        assert!(md.contains("avx2"), "{md}");
    }
    assert!(
        md.contains("% of stream") && md.contains("cost(k) ÷ cost(1)"),
        "{md}"
    );
}

#[test]
fn bench_rejects_a_zero_width() {
    let dir = tempfile::tempdir().unwrap();
    let out = assert_cmd::Command::cargo_bin("pdbench")
        .unwrap()
        .env("PDBENCH_HOME", dir.path())
        .args([
            "bench",
            "--model",
            "toy-target",
            "--threads",
            "1",
            "--no-speed",
            "--widths",
            "0",
        ])
        .assert()
        .code(1);
    let err = String::from_utf8_lossy(&out.get_output().stderr).to_string();
    assert!(
        err.starts_with("Error: ") && err.contains("--widths"),
        "{err}"
    );
}
