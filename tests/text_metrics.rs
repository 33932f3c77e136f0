//! pdbench's ROUGE, Porter stemmer and BLEU against the outputs of the
//! Python packages ParallelBench scores with (rouge_score + NLTK, and
//! sacrebleu's 13a BLEU as `evaluate` computes it), recorded by
//! scripts/text_metrics_reference.py on ParallelBench's released rows.

use pdbench::score::text_metrics::{bleu, porter_stem, rouge};
use serde_json::Value;

fn cases() -> Vec<Value> {
    let text = include_str!("fixtures/text_metrics_reference.jsonl");
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[test]
fn porter_stems_equal_nltk() {
    let mut n = 0;
    let mut wrong = vec![];
    for c in cases().iter().filter(|c| c["kind"] == "porter") {
        let w = c["word"].as_str().unwrap();
        let got = porter_stem(w);
        if got != c["stem"].as_str().unwrap() {
            wrong.push(format!("{w}: nltk {} pdbench {got}", c["stem"]));
        }
        n += 1;
    }
    assert!(n > 1000, "{n} words");
    assert!(
        wrong.is_empty(),
        "{} of {n} differ: {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(20)]
    );
}

#[test]
fn rouge_equals_rouge_score() {
    let mut n = 0;
    for c in cases().iter().filter(|c| c["kind"] == "rouge") {
        let r = rouge(
            c["prediction"].as_str().unwrap(),
            c["reference"].as_str().unwrap(),
            true,
        );
        for (key, got) in [
            ("rouge1", r.rouge1),
            ("rouge2", r.rouge2),
            ("rougeL", r.rouge_l),
        ] {
            let want: Vec<f64> = c[key]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect();
            assert!(
                close(got.precision, want[0])
                    && close(got.recall, want[1])
                    && close(got.fmeasure, want[2]),
                "{key} of {c}: got {got:?}"
            );
        }
        n += 1;
    }
    assert!(n > 400, "{n} cases");
}

#[test]
fn bleu_equals_sacrebleu_13a() {
    let mut n = 0;
    let mut nonzero = 0;
    for c in cases().iter().filter(|c| c["kind"] == "bleu") {
        let got = bleu(
            c["prediction"].as_str().unwrap(),
            &[c["reference"].as_str().unwrap()],
        );
        let want = c["bleu"].as_f64().unwrap();
        assert!(close(got, want), "{c}: got {got}");
        n += 1;
        nonzero += usize::from(want > 0.0 && want < 1.0);
    }
    assert!(
        n > 400 && nonzero > 50,
        "{n} cases, {nonzero} strictly between 0 and 1"
    );
}
