//! Text-overlap metrics that ParallelBench's summary and paraphrase tasks use,
//! written to give the numbers of the Python packages behind them:
//! ROUGE as in `rouge_score` (with NLTK's Porter stemmer, default mode) and
//! BLEU as in HuggingFace `evaluate`'s `bleu` (13a tokens, 4-grams, no
//! smoothing). tests/fixtures/text_metrics_reference.jsonl holds those
//! packages' own outputs; tests/text_metrics.rs compares.

use std::collections::HashMap;
use std::sync::OnceLock;

/// Precision, recall and F1 of one ROUGE variant, each in [0, 1].
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Prf {
    pub precision: f64,
    pub recall: f64,
    pub fmeasure: f64,
}

impl Prf {
    fn of(overlap: usize, predicted: usize, target: usize) -> Self {
        let precision = overlap as f64 / predicted.max(1) as f64;
        let recall = overlap as f64 / target.max(1) as f64;
        let fmeasure = if precision + recall > 0.0 {
            2.0 * precision * recall / (precision + recall)
        } else {
            0.0
        };
        Self {
            precision,
            recall,
            fmeasure,
        }
    }
}

/// ROUGE-1, ROUGE-2 and ROUGE-L (sentence-level LCS) of a prediction
/// against one reference.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Rouge {
    pub rouge1: Prf,
    pub rouge2: Prf,
    pub rouge_l: Prf,
}

/// `rouge_score`'s tokenizer: lowercase, every run of characters outside
/// [a-z0-9] is a separator, and with `stem` tokens longer than 3 characters
/// are Porter-stemmed.
pub fn rouge_tokens(text: &str, stem: bool) -> Vec<String> {
    let lower = text.to_lowercase();
    lower
        .split(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit()))
        .filter(|t| !t.is_empty())
        .map(|t| {
            if stem && t.len() > 3 {
                porter_stem(t)
            } else {
                t.to_string()
            }
        })
        // A stem is never empty for these inputs; keep the package's filter.
        .filter(|t| !t.is_empty())
        .collect()
}

fn ngram_counts(tokens: &[String], n: usize) -> HashMap<&[String], usize> {
    let mut m = HashMap::new();
    if tokens.len() >= n {
        for w in tokens.windows(n) {
            *m.entry(w).or_insert(0) += 1;
        }
    }
    m
}

fn rouge_n(target: &[String], prediction: &[String], n: usize) -> Prf {
    let t = ngram_counts(target, n);
    let p = ngram_counts(prediction, n);
    let overlap: usize = t
        .iter()
        .map(|(g, &c)| c.min(p.get(g).copied().unwrap_or(0)))
        .sum();
    Prf::of(overlap, p.values().sum(), t.values().sum())
}

fn lcs_len(a: &[String], b: &[String]) -> usize {
    let mut prev = vec![0usize; b.len() + 1];
    let mut cur = vec![0usize; b.len() + 1];
    for x in a {
        for (j, y) in b.iter().enumerate() {
            cur[j + 1] = if x == y {
                prev[j] + 1
            } else {
                cur[j].max(prev[j + 1])
            };
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// ROUGE of `prediction` against `reference`, with stemming when `stem`.
pub fn rouge(prediction: &str, reference: &str, stem: bool) -> Rouge {
    let p = rouge_tokens(prediction, stem);
    let t = rouge_tokens(reference, stem);
    let rouge_l = if p.is_empty() || t.is_empty() {
        Prf::default()
    } else {
        Prf::of(lcs_len(&t, &p), p.len(), t.len())
    };
    Rouge {
        rouge1: rouge_n(&t, &p, 1),
        rouge2: rouge_n(&t, &p, 2),
        rouge_l,
    }
}

/// NLTK's `PorterStemmer()` in its default NLTK_EXTENSIONS mode, for the
/// lowercase ASCII tokens that the ROUGE tokenizer produces.
pub fn porter_stem(word: &str) -> String {
    const IRREGULAR: &[(&str, &str)] = &[
        ("sky", "sky"),
        ("skies", "sky"),
        ("dying", "die"),
        ("lying", "lie"),
        ("tying", "tie"),
        ("news", "news"),
        ("innings", "inning"),
        ("inning", "inning"),
        ("outings", "outing"),
        ("outing", "outing"),
        ("cannings", "canning"),
        ("canning", "canning"),
        ("howe", "howe"),
        ("proceed", "proceed"),
        ("exceed", "exceed"),
        ("succeed", "succeed"),
    ];
    let w = word.to_lowercase();
    if let Some((_, s)) = IRREGULAR.iter().find(|(f, _)| *f == w) {
        return s.to_string();
    }
    if word.chars().count() <= 2 || !w.is_ascii() {
        return w;
    }
    let mut s = w.into_bytes();
    for step in [step1a, step1b, step1c, step2, step3, step4, step5a, step5b] {
        s = step(s);
    }
    String::from_utf8(s).expect("ASCII in, ASCII out")
}

type Word = Vec<u8>;

fn is_vowel(c: u8) -> bool {
    matches!(c, b'a' | b'e' | b'i' | b'o' | b'u')
}

/// Consonant flags: `y` is a consonant at the start or after a vowel.
fn consonants(w: &[u8]) -> Vec<bool> {
    let mut f: Vec<bool> = Vec::with_capacity(w.len());
    for (i, &c) in w.iter().enumerate() {
        let cons = if is_vowel(c) {
            false
        } else if c == b'y' {
            i == 0 || !f[i - 1]
        } else {
            true
        };
        f.push(cons);
    }
    f
}

fn is_consonant(w: &[u8], i: usize) -> bool {
    consonants(&w[..=i])[i]
}

/// The number of vowel-consonant transitions, Porter's m.
fn measure(w: &[u8]) -> usize {
    consonants(w).windows(2).filter(|p| !p[0] && p[1]).count()
}

fn contains_vowel(w: &[u8]) -> bool {
    consonants(w).iter().any(|c| !c)
}

fn ends_double_consonant(w: &[u8]) -> bool {
    let n = w.len();
    n >= 2 && w[n - 1] == w[n - 2] && is_consonant(w, n - 1)
}

/// Porter's *o, plus NLTK's two-letter vowel-consonant case.
fn ends_cvc(w: &[u8]) -> bool {
    let n = w.len();
    let c = consonants(w);
    (n >= 3 && c[n - 3] && !c[n - 2] && c[n - 1] && !matches!(w[n - 1], b'w' | b'x' | b'y'))
        || (n == 2 && !c[0] && c[1])
}

enum Cond {
    Always,
    MeasureGt(usize),
    /// (m > 1) and the stem ends in s or t.
    IonStem,
    /// NLTK's `logi` rule: the measure of the word less its last 3 letters.
    Logi,
}

fn holds(cond: &Cond, stem: &[u8], word: &[u8]) -> bool {
    match cond {
        Cond::Always => true,
        Cond::MeasureGt(k) => measure(stem) > *k,
        Cond::IonStem => measure(stem) > 1 && matches!(stem.last(), Some(b's' | b't')),
        Cond::Logi => measure(&word[..word.len() - 3]) > 0,
    }
}

/// The first rule whose suffix matches decides: it applies when its
/// condition holds, and otherwise the word is left as it is.
fn apply_rules(w: Word, rules: &[(&str, &str, Cond)]) -> Word {
    for (suffix, replacement, cond) in rules {
        if w.ends_with(suffix.as_bytes()) {
            let stem = &w[..w.len() - suffix.len()];
            if holds(cond, stem, &w) {
                let mut out = stem.to_vec();
                out.extend_from_slice(replacement.as_bytes());
                return out;
            }
            return w;
        }
    }
    w
}

fn replace_suffix(w: &[u8], suffix: &str, replacement: &str) -> Word {
    let mut out = w[..w.len() - suffix.len()].to_vec();
    out.extend_from_slice(replacement.as_bytes());
    out
}

fn step1a(w: Word) -> Word {
    if w.ends_with(b"ies") && w.len() == 4 {
        return replace_suffix(&w, "ies", "ie");
    }
    apply_rules(
        w,
        &[
            ("sses", "ss", Cond::Always),
            ("ies", "i", Cond::Always),
            ("ss", "ss", Cond::Always),
            ("s", "", Cond::Always),
        ],
    )
}

fn step1b(w: Word) -> Word {
    if w.ends_with(b"ied") {
        return replace_suffix(&w, "ied", if w.len() == 4 { "ie" } else { "i" });
    }
    if w.ends_with(b"eed") {
        let stem = &w[..w.len() - 3];
        return if measure(stem) > 0 {
            replace_suffix(&w, "eed", "ee")
        } else {
            w
        };
    }
    let mut inter = None;
    for suffix in ["ed", "ing"] {
        if w.ends_with(suffix.as_bytes()) {
            let stem = &w[..w.len() - suffix.len()];
            if contains_vowel(stem) {
                inter = Some(stem.to_vec());
                break;
            }
        }
    }
    let Some(stem) = inter else {
        return w;
    };
    for (suffix, replacement) in [("at", "ate"), ("bl", "ble"), ("iz", "ize")] {
        if stem.ends_with(suffix.as_bytes()) {
            return replace_suffix(&stem, suffix, replacement);
        }
    }
    if ends_double_consonant(&stem) {
        let last = *stem.last().expect("double consonant");
        return if matches!(last, b'l' | b's' | b'z') {
            stem
        } else {
            stem[..stem.len() - 1].to_vec()
        };
    }
    if measure(&stem) == 1 && ends_cvc(&stem) {
        let mut out = stem;
        out.push(b'e');
        return out;
    }
    stem
}

fn step1c(w: Word) -> Word {
    if w.ends_with(b"y") {
        let stem = &w[..w.len() - 1];
        if stem.len() > 1 && is_consonant(stem, stem.len() - 1) {
            return replace_suffix(&w, "y", "i");
        }
    }
    w
}

fn step2(w: Word) -> Word {
    if w.ends_with(b"alli") && measure(&w[..w.len() - 4]) > 0 {
        return step2(replace_suffix(&w, "alli", "al"));
    }
    let m0 = || Cond::MeasureGt(0);
    apply_rules(
        w,
        &[
            ("ational", "ate", m0()),
            ("tional", "tion", m0()),
            ("enci", "ence", m0()),
            ("anci", "ance", m0()),
            ("izer", "ize", m0()),
            ("bli", "ble", m0()),
            ("alli", "al", m0()),
            ("entli", "ent", m0()),
            ("eli", "e", m0()),
            ("ousli", "ous", m0()),
            ("ization", "ize", m0()),
            ("ation", "ate", m0()),
            ("ator", "ate", m0()),
            ("alism", "al", m0()),
            ("iveness", "ive", m0()),
            ("fulness", "ful", m0()),
            ("ousness", "ous", m0()),
            ("aliti", "al", m0()),
            ("iviti", "ive", m0()),
            ("biliti", "ble", m0()),
            ("fulli", "ful", m0()),
            ("logi", "log", Cond::Logi),
        ],
    )
}

fn step3(w: Word) -> Word {
    let m0 = || Cond::MeasureGt(0);
    apply_rules(
        w,
        &[
            ("icate", "ic", m0()),
            ("ative", "", m0()),
            ("alize", "al", m0()),
            ("iciti", "ic", m0()),
            ("ical", "ic", m0()),
            ("ful", "", m0()),
            ("ness", "", m0()),
        ],
    )
}

fn step4(w: Word) -> Word {
    let m1 = || Cond::MeasureGt(1);
    apply_rules(
        w,
        &[
            ("al", "", m1()),
            ("ance", "", m1()),
            ("ence", "", m1()),
            ("er", "", m1()),
            ("ic", "", m1()),
            ("able", "", m1()),
            ("ible", "", m1()),
            ("ant", "", m1()),
            ("ement", "", m1()),
            ("ment", "", m1()),
            ("ent", "", m1()),
            ("ion", "", Cond::IonStem),
            ("ou", "", m1()),
            ("ism", "", m1()),
            ("ate", "", m1()),
            ("iti", "", m1()),
            ("ous", "", m1()),
            ("ive", "", m1()),
            ("ize", "", m1()),
        ],
    )
}

fn step5a(w: Word) -> Word {
    if w.ends_with(b"e") {
        let stem = &w[..w.len() - 1];
        let m = measure(stem);
        if m > 1 || (m == 1 && !ends_cvc(stem)) {
            return stem.to_vec();
        }
    }
    w
}

fn step5b(w: Word) -> Word {
    if w.ends_with(b"ll") && measure(&w[..w.len() - 1]) > 1 {
        return w[..w.len() - 1].to_vec();
    }
    w
}

/// sacrebleu's `13a` tokenizer (mteval-v13a), as `evaluate`'s `bleu` uses it.
pub fn tokens_13a(line: &str) -> Vec<String> {
    struct Rules {
        punct: regex::Regex,
        period_comma_after: regex::Regex,
        period_comma_before: regex::Regex,
        dash_after_digit: regex::Regex,
    }
    static RULES: OnceLock<Rules> = OnceLock::new();
    let r = RULES.get_or_init(|| Rules {
        punct: regex::Regex::new(r"([\{-\~\[-\` -\&\(-\+\:-\@/])").expect("static regex"),
        period_comma_after: regex::Regex::new(r"([^0-9])([\.,])").expect("static regex"),
        period_comma_before: regex::Regex::new(r"([\.,])([^0-9])").expect("static regex"),
        dash_after_digit: regex::Regex::new(r"([0-9])(-)").expect("static regex"),
    });
    let mut line = line
        .replace("<skipped>", "")
        .replace("-\n", "")
        .replace('\n', " ");
    if line.contains('&') {
        line = line
            .replace("&quot;", "\"")
            .replace("&amp;", "&")
            .replace("&lt;", "<")
            .replace("&gt;", ">");
    }
    let line = format!(" {line} ");
    let line = r.punct.replace_all(&line, " $1 ");
    let line = r.period_comma_after.replace_all(&line, "$1 $2 ");
    let line = r.period_comma_before.replace_all(&line, " $1 $2");
    let line = r.dash_after_digit.replace_all(&line, "$1 $2 ");
    // Python's str.split(): Unicode whitespace plus the ASCII separators
    // \x1c..\x1f.
    line.split(|c: char| c.is_whitespace() || ('\x1c'..='\x1f').contains(&c))
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect()
}

/// Sentence BLEU of `prediction` against `references` as `evaluate`'s
/// `bleu` computes it for one prediction: 13a tokens, n-grams up to 4,
/// clipped by the most frequent count in any reference, no smoothing, and
/// the brevity penalty against the shortest reference. In [0, 1].
pub fn bleu(prediction: &str, references: &[&str]) -> f64 {
    const MAX_ORDER: usize = 4;
    let pred = tokens_13a(prediction);
    let refs: Vec<Vec<String>> = references.iter().map(|r| tokens_13a(r)).collect();
    let ref_len = refs.iter().map(Vec::len).min().unwrap_or(0);
    let mut precisions = [0.0f64; MAX_ORDER];
    for (i, p) in precisions.iter_mut().enumerate() {
        let n = i + 1;
        let mut max_ref: HashMap<&[String], usize> = HashMap::new();
        for r in &refs {
            for (g, c) in ngram_counts(r, n) {
                let e = max_ref.entry(g).or_insert(0);
                *e = (*e).max(c);
            }
        }
        let matches: usize = ngram_counts(&pred, n)
            .iter()
            .map(|(g, &c)| c.min(max_ref.get(g).copied().unwrap_or(0)))
            .sum();
        let possible = (pred.len() + 1).saturating_sub(n);
        if possible > 0 {
            *p = matches as f64 / possible as f64;
        }
    }
    let geo_mean = if precisions.iter().all(|&p| p > 0.0) {
        (precisions.iter().map(|p| p.ln()).sum::<f64>() / MAX_ORDER as f64).exp()
    } else {
        0.0
    };
    let bp = if ref_len == 0 || pred.is_empty() {
        0.0
    } else {
        let ratio = pred.len() as f64 / ref_len as f64;
        if ratio > 1.0 {
            1.0
        } else {
            (1.0 - 1.0 / ratio).exp()
        }
    };
    geo_mean * bp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn porter_textbook_examples() {
        for (w, s) in [
            ("caresses", "caress"),
            ("ponies", "poni"),
            ("ties", "tie"),
            ("cats", "cat"),
            ("agreed", "agre"),
            ("plastered", "plaster"),
            ("motoring", "motor"),
            ("hopping", "hop"),
            ("falling", "fall"),
            ("filing", "file"),
            ("happy", "happi"),
            ("relational", "relat"),
            ("generously", "gener"),
            ("dying", "die"),
            ("adjustment", "adjust"),
        ] {
            assert_eq!(porter_stem(w), s, "{w}");
        }
    }

    #[test]
    fn rouge_l_hand_computed() {
        // LCS of "a b c d" and "a c e" is "a c": p = 2/3, r = 2/4.
        let r = rouge("a c e", "a b c d", false);
        assert!((r.rouge_l.precision - 2.0 / 3.0).abs() < 1e-12);
        assert!((r.rouge_l.recall - 0.5).abs() < 1e-12);
        assert_eq!(rouge("", "a b", true).rouge_l.fmeasure, 0.0);
        assert_eq!(rouge("x y", "x y", true).rouge_l.fmeasure, 1.0);
    }

    #[test]
    fn bleu_edges() {
        assert_eq!(bleu("", &["a b c d"]), 0.0);
        // Under four tokens there are no 4-grams, so no smoothing means 0.
        assert_eq!(bleu("a b c", &["a b c"]), 0.0);
        assert!((bleu("a b c d e", &["a b c d e"]) - 1.0).abs() < 1e-12);
        assert_eq!(
            tokens_13a("Hi, there.  3.5-4 x"),
            ["Hi", ",", "there", ".", "3.5", "-", "4", "x"]
        );
    }
}
