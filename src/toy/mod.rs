//! The toy world: seeded task generators in the spirit of ParallelBench,
//! short enough (tens of tokens) that models trained on a 2-core CPU learn
//! them, and the word-level tokenizer they share.
//!
//! Every item is a prompt ending in `=` and an answer; deterministic tasks
//! have one right answer, random ones (shuffle, insert/remove/replace at
//! random, latin squares) have many, which is what makes them hard for
//! parallel decoding. Splits are disjoint by construction: an item belongs
//! to the split its prompt hashes to, whatever the seed.

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// Names of the waiting-line tasks: one token each, sorted order is
/// alphabetical.
pub const NAMES: [&str; 24] = [
    "Ann", "Bob", "Cy", "Dan", "Eve", "Fay", "Gus", "Hal", "Ida", "Jo", "Kim", "Lee", "Max", "Ned",
    "Oz", "Pam", "Quin", "Ray", "Sue", "Tom", "Uma", "Vic", "Wes", "Zoe",
];
/// Latin-square symbols; each square uses four of them.
const SYMBOLS: [&str; 8] = ["A", "B", "C", "D", "E", "F", "G", "H"];
pub const SPECIALS: [&str; 5] = ["<pad>", "<bos>", "<eos>", "<mask>", "<unk>"];
const WORDS: [&str; 23] = [
    "copy", "reverse", "sort", "shuffle", "insert", "remove", "replace", "at", "one", "with",
    "latin", "sudoku", "digits", "add", "[", "]", ",", ":", "=", "|", "+", "_", "-",
];

/// The tokenizer's vocabulary, in id order.
pub fn vocab() -> Vec<String> {
    let mut v: Vec<String> = SPECIALS.iter().map(|s| s.to_string()).collect();
    v.extend(WORDS.iter().map(|s| s.to_string()));
    v.extend((0..10).map(|d| d.to_string()));
    v.extend(NAMES.iter().map(|s| s.to_string()));
    v.extend(SYMBOLS.iter().map(|s| s.to_string()));
    v
}

/// A word-level tokenizer.json over [`vocab`]: whitespace splits words,
/// decoding joins them with spaces.
pub fn tokenizer_json() -> Value {
    let vocab = vocab();
    let map: serde_json::Map<String, Value> = vocab
        .iter()
        .enumerate()
        .map(|(i, w)| (w.clone(), json!(i)))
        .collect();
    let added: Vec<Value> = SPECIALS
        .iter()
        .enumerate()
        .map(|(i, s)| {
            json!({"id": i, "content": s, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "WhitespaceSplit"},
        "post_processor": null,
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": map, "unk_token": "<unk>"},
    })
}

/// Token id of a special token.
pub fn special_id(name: &str) -> u32 {
    SPECIALS
        .iter()
        .position(|s| *s == name)
        .expect("a toy special token") as u32
}

/// Every task family, by name; `true` where the answer is unique.
pub const TASKS: &[(&str, bool)] = &[
    ("copy", true),
    ("reverse", true),
    ("sort", true),
    ("insert_index", true),
    ("remove_index", true),
    ("replace_index", true),
    ("shuffle", false),
    ("insert_random", false),
    ("remove_random", false),
    ("replace_random", false),
    ("sudoku", true),
    ("latin_square", false),
    ("digits_copy", true),
    ("digits_reverse", true),
    ("add", true),
];

pub fn is_deterministic(task: &str) -> Option<bool> {
    TASKS.iter().find(|(t, _)| *t == task).map(|(_, d)| *d)
}

/// One generated item: what the model sees, one correct answer (for
/// training), and what the scorer needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Item {
    pub task: String,
    pub prompt: String,
    pub answer: String,
    pub reference: Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    Train,
    Validation,
    Test,
}

impl Split {
    /// Test and validation each take a tenth of the prompt space.
    fn of(prompt: &str) -> Self {
        let h = Sha256::digest(prompt.as_bytes());
        match h[0] % 10 {
            0 => Split::Test,
            1 => Split::Validation,
            _ => Split::Train,
        }
    }
}

/// Parameters of the `toy` generator, as a suite or recipe writes them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToyParams {
    pub split: Split,
    /// Items per task.
    pub per_task: usize,
    #[serde(default)]
    pub seed: u64,
    /// Task families; empty means all of [`TASKS`].
    #[serde(default)]
    pub tasks: Vec<String>,
    /// List lengths of the waiting-line tasks, inclusive.
    #[serde(default = "default_list_len")]
    pub list_len: [usize; 2],
    /// Whether prompts are distinct; training sets may repeat a prompt
    /// (with a fresh answer where many are right) once a task's prompt
    /// space is small.
    #[serde(default = "default_distinct")]
    pub distinct: bool,
}

fn default_distinct() -> bool {
    true
}

fn default_list_len() -> [usize; 2] {
    [3, 5]
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ToyError {
    #[error("toy generator: unknown task `{0}`; expected one of {known}", known = TASKS.iter().map(|t| t.0).collect::<Vec<_>>().join(", "))]
    UnknownTask(String),
    #[error("toy generator: list_len {0:?}: expected 2 <= min <= max <= 8")]
    ListLen([usize; 2]),
    #[error("toy generator: task `{task}` has fewer than {wanted} distinct {split:?} items (found {found})")]
    TooFew {
        task: String,
        split: Split,
        wanted: usize,
        found: usize,
    },
}

/// Generates `per_task` distinct items of each task in the split, in a
/// fixed order for a given seed.
pub fn generate(p: &ToyParams) -> Result<Vec<Item>, ToyError> {
    let tasks: Vec<&str> = if p.tasks.is_empty() {
        TASKS.iter().map(|t| t.0).collect()
    } else {
        p.tasks.iter().map(String::as_str).collect()
    };
    for t in &tasks {
        if is_deterministic(t).is_none() {
            return Err(ToyError::UnknownTask(t.to_string()));
        }
    }
    let [lo, hi] = p.list_len;
    if !(2 <= lo && lo <= hi && hi <= 8) {
        return Err(ToyError::ListLen(p.list_len));
    }
    let mut out = Vec::new();
    for (ti, task) in tasks.iter().enumerate() {
        let split_tag = p.split as u64;
        let mut rng = ChaCha20Rng::seed_from_u64(
            p.seed ^ (ti as u64).wrapping_mul(0x9E37_79B9) ^ (split_tag << 40),
        );
        let mut seen = std::collections::HashSet::new();
        let mut tries = 0usize;
        let mut n = 0;
        while n < p.per_task {
            tries += 1;
            if tries > p.per_task * 200 + 10_000 {
                return Err(ToyError::TooFew {
                    task: task.to_string(),
                    split: p.split,
                    wanted: p.per_task,
                    found: n,
                });
            }
            let item = make(task, &mut rng, lo, hi);
            if Split::of(&item.prompt) != p.split
                || (p.distinct && !seen.insert(item.prompt.clone()))
            {
                continue;
            }
            out.push(item);
            n += 1;
        }
    }
    Ok(out)
}

fn list_text(items: &[&str]) -> String {
    format!("[ {} ]", items.join(" , "))
}

/// `n`'s digits, least significant first, one token each: 47 is "7 4".
fn digits_lsb_first(n: u64) -> String {
    n.to_string()
        .chars()
        .rev()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

fn make(task: &str, rng: &mut ChaCha20Rng, lo: usize, hi: usize) -> Item {
    let len = rng.random_range(lo..=hi);
    let mut names: Vec<&str> = NAMES.to_vec();
    names.shuffle(rng);
    let list: Vec<&str> = names[..len].to_vec();
    let word = names[len]; // a name not in the list
    let input = list_text(&list);
    let refs = |v: Value| v;
    let (prompt, answer, reference) = match task {
        "copy" => (format!("copy : {input} ="), input.clone(), json!(input)),
        "reverse" => {
            let mut r = list.clone();
            r.reverse();
            (
                format!("reverse : {input} ="),
                list_text(&r),
                json!(list_text(&r)),
            )
        }
        "sort" => {
            let mut r = list.clone();
            r.sort_unstable();
            (
                format!("sort : {input} ="),
                list_text(&r),
                json!(list_text(&r)),
            )
        }
        "insert_index" => {
            let i = rng.random_range(0..=len);
            let mut r = list.clone();
            r.insert(i, word);
            let a = list_text(&r);
            (
                format!("insert {word} at {i} : {input} ="),
                a.clone(),
                json!(a),
            )
        }
        "remove_index" => {
            let i = rng.random_range(0..len);
            let mut r = list.clone();
            r.remove(i);
            let a = list_text(&r);
            (format!("remove at {i} : {input} ="), a.clone(), json!(a))
        }
        "replace_index" => {
            let i = rng.random_range(0..len);
            let mut r = list.clone();
            r[i] = word;
            let a = list_text(&r);
            (
                format!("replace at {i} with {word} : {input} ="),
                a.clone(),
                json!(a),
            )
        }
        "shuffle" => {
            let mut r = list.clone();
            while r == list {
                r.shuffle(rng);
            }
            (
                format!("shuffle : {input} ="),
                list_text(&r),
                refs(json!({"input": list})),
            )
        }
        "insert_random" => {
            let i = rng.random_range(0..=len);
            let mut r = list.clone();
            r.insert(i, word);
            (
                format!("insert {word} : {input} ="),
                list_text(&r),
                json!({"input": list, "word": word}),
            )
        }
        "remove_random" => {
            let i = rng.random_range(0..len);
            let mut r = list.clone();
            r.remove(i);
            (
                format!("remove one : {input} ="),
                list_text(&r),
                json!({"input": list}),
            )
        }
        "replace_random" => {
            let i = rng.random_range(0..len);
            let mut r = list.clone();
            r[i] = word;
            (
                format!("replace one with {word} : {input} ="),
                list_text(&r),
                json!({"input": list, "word": word}),
            )
        }
        "sudoku" => {
            let (puzzle, solution) = sudoku_puzzle(rng);
            let grid = |g: &[u8; 16], blank: bool| {
                g.chunks(4)
                    .map(|row| {
                        row.iter()
                            .map(|&c| {
                                if blank && c == 0 {
                                    "_".to_string()
                                } else {
                                    c.to_string()
                                }
                            })
                            .collect::<Vec<_>>()
                            .join(" ")
                    })
                    .collect::<Vec<_>>()
                    .join(" | ")
            };
            let a = grid(&solution, false);
            (
                format!("sudoku : {} =", grid(&puzzle, true)),
                a.clone(),
                json!(a),
            )
        }
        "latin_square" => {
            let sq = latin_square(rng);
            let mut pool: Vec<&str> = SYMBOLS.to_vec();
            pool.shuffle(rng);
            let symbols: Vec<&str> = pool[..4].to_vec();
            let row = |r: &[usize]| {
                r.iter()
                    .map(|&i| symbols[i])
                    .collect::<Vec<_>>()
                    .join(" , ")
            };
            let first: Vec<&str> = sq[0].iter().map(|&i| symbols[i]).collect();
            let a = sq.iter().map(|r| row(r)).collect::<Vec<_>>().join(" | ");
            (
                format!("latin : {} =", row(&sq[0])),
                a,
                json!({"symbols": symbols, "first_row": first}),
            )
        }
        "digits_copy" | "digits_reverse" => {
            let n = rng.random_range(3..=6);
            let d: Vec<String> = (0..n)
                .map(|_| rng.random_range(0..10).to_string())
                .collect();
            let mut r = d.clone();
            if task == "digits_reverse" {
                r.reverse();
            }
            let verb = if task == "digits_copy" {
                "copy"
            } else {
                "reverse"
            };
            let a = r.join(" ");
            (
                format!("digits {verb} : {} =", d.join(" ")),
                a.clone(),
                json!(a),
            )
        }
        "add" => {
            // Numbers are written least significant digit first, the order
            // carries flow in, so that a model writing left to right can
            // add; MSB-first sums need the carry before the digit.
            let x = rng.random_range(0..100u64);
            let y = rng.random_range(0..100u64);
            let a = digits_lsb_first(x + y);
            (
                format!("add : {} + {} =", digits_lsb_first(x), digits_lsb_first(y)),
                a.clone(),
                json!(a),
            )
        }
        other => unreachable!("validated task {other}"),
    };
    Item {
        task: task.to_string(),
        prompt,
        answer,
        reference: json!({"task": task, "answer": answer_or(&reference), "check": reference}),
    }
}

fn answer_or(v: &Value) -> Value {
    match v {
        Value::String(s) => json!(s),
        _ => Value::Null,
    }
}

/// All 288 solved 4×4 sudoku grids.
fn all_sudokus() -> &'static Vec<[u8; 16]> {
    static ALL: std::sync::OnceLock<Vec<[u8; 16]>> = std::sync::OnceLock::new();
    ALL.get_or_init(|| {
        let mut out = Vec::new();
        let mut g = [0u8; 16];
        fn ok(g: &[u8; 16], i: usize, v: u8) -> bool {
            let (r, c) = (i / 4, i % 4);
            for k in 0..4 {
                if g[r * 4 + k] == v || g[k * 4 + c] == v {
                    return false;
                }
            }
            let (br, bc) = (r / 2 * 2, c / 2 * 2);
            for dr in 0..2 {
                for dc in 0..2 {
                    if g[(br + dr) * 4 + bc + dc] == v {
                        return false;
                    }
                }
            }
            true
        }
        fn fill(g: &mut [u8; 16], i: usize, out: &mut Vec<[u8; 16]>) {
            if i == 16 {
                out.push(*g);
                return;
            }
            for v in 1..=4 {
                if ok(g, i, v) {
                    g[i] = v;
                    fill(g, i + 1, out);
                    g[i] = 0;
                }
            }
        }
        fill(&mut g, 0, &mut out);
        out
    })
}

/// A puzzle with a unique solution, made by blanking cells of a random
/// solved grid while the solution stays unique.
fn sudoku_puzzle(rng: &mut ChaCha20Rng) -> ([u8; 16], [u8; 16]) {
    let all = all_sudokus();
    let solution = all[rng.random_range(0..all.len())];
    let mut puzzle = solution;
    let mut order: Vec<usize> = (0..16).collect();
    order.shuffle(rng);
    let unique = |p: &[u8; 16]| {
        all.iter()
            .filter(|s| p.iter().zip(s.iter()).all(|(&a, &b)| a == 0 || a == b))
            .count()
            == 1
    };
    let blanks = rng.random_range(6..=10);
    let mut made = 0;
    for i in order {
        if made == blanks {
            break;
        }
        let keep = puzzle[i];
        puzzle[i] = 0;
        if unique(&puzzle) {
            made += 1;
        } else {
            puzzle[i] = keep;
        }
    }
    (puzzle, solution)
}

/// A uniformly chosen 4×4 latin square over symbol indices 0..4.
fn latin_square(rng: &mut ChaCha20Rng) -> Vec<Vec<usize>> {
    static ALL: std::sync::OnceLock<Vec<[usize; 16]>> = std::sync::OnceLock::new();
    let all = ALL.get_or_init(|| {
        let mut out = Vec::new();
        let mut g = [usize::MAX; 16];
        fn fill(g: &mut [usize; 16], i: usize, out: &mut Vec<[usize; 16]>) {
            if i == 16 {
                out.push(*g);
                return;
            }
            let (r, c) = (i / 4, i % 4);
            for v in 0..4 {
                if (0..c).all(|k| g[r * 4 + k] != v) && (0..r).all(|k| g[k * 4 + c] != v) {
                    g[i] = v;
                    fill(g, i + 1, out);
                    g[i] = usize::MAX;
                }
            }
        }
        fill(&mut g, 0, &mut out);
        out
    });
    let s = all[rng.random_range(0..all.len())];
    s.chunks(4).map(|r| r.to_vec()).collect()
}

/// Whitespace-normalised text.
fn norm(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Scores an output of a toy item: exact match (whitespace-normalised) for
/// deterministic tasks; ParallelBench's list, insert, remove, replace and
/// latin-square checks for the random ones. `None` when the reference is
/// not a toy reference.
pub fn score(output: &str, reference: &Value) -> Option<f64> {
    let task = reference.get("task")?.as_str()?;
    let check = reference.get("check")?;
    let out = norm(output);
    use crate::score::parallelbench as pb;
    let s = match task {
        "shuffle" => pb::list_shuffle(&out, check, false)?,
        "insert_random" => pb::list_random_insert(&out, check, false)?,
        "remove_random" => pb::list_random_remove(&out, check, false)?,
        "replace_random" => pb::list_random_replace(&out, check, false)?,
        "latin_square" => pb::latin_square(&out.replace(" | ", "\n"), check)?,
        t if is_deterministic(t) == Some(true) => {
            if out == norm(reference.get("answer")?.as_str()?) {
                1.0
            } else {
                0.0
            }
        }
        _ => return None,
    };
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(split: Split, per_task: usize) -> ToyParams {
        ToyParams {
            split,
            per_task,
            seed: 7,
            tasks: vec![],
            list_len: [3, 5],
            distinct: true,
        }
    }

    #[test]
    fn splits_are_disjoint_seeded_and_answers_score_one() {
        let train = generate(&params(Split::Train, 60)).unwrap();
        let test = generate(&params(Split::Test, 40)).unwrap();
        assert_eq!(test, generate(&params(Split::Test, 40)).unwrap(), "seeded");
        let train_prompts: std::collections::HashSet<_> = train.iter().map(|i| &i.prompt).collect();
        assert!(test.iter().all(|i| !train_prompts.contains(&i.prompt)));
        assert_eq!(test.len(), 40 * TASKS.len());
        let tok = tokenizers::Tokenizer::from_bytes(tokenizer_json().to_string()).unwrap();
        let unk = special_id("<unk>");
        for it in train.iter().chain(&test) {
            assert_eq!(score(&it.answer, &it.reference), Some(1.0), "{it:?}");
            let ids = tok
                .encode(format!("{} {}", it.prompt, it.answer), false)
                .unwrap();
            assert!(!ids.get_ids().contains(&unk), "{it:?}");
            assert!(ids.len() <= 48, "{} tokens: {it:?}", ids.len());
        }
    }

    #[test]
    fn wrong_answers_score_zero() {
        let test = generate(&params(Split::Test, 5)).unwrap();
        for it in &test {
            let wrong = "[ Ann ]";
            assert_eq!(score(wrong, &it.reference), Some(0.0), "{it:?}");
        }
        // A shuffle that returns the input unchanged is not a shuffle.
        let sh = test.iter().find(|i| i.task == "shuffle").unwrap();
        let input = sh
            .prompt
            .trim_start_matches("shuffle : ")
            .trim_end_matches(" =");
        assert_eq!(score(input, &sh.reference), Some(0.0));
    }

    #[test]
    fn sudokus_are_unique_and_latin_squares_valid() {
        assert_eq!(all_sudokus().len(), 288);
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        for _ in 0..20 {
            let (p, s) = sudoku_puzzle(&mut rng);
            assert!(p.iter().filter(|&&c| c == 0).count() >= 6);
            assert!(p.iter().zip(&s).all(|(&a, &b)| a == 0 || a == b));
        }
    }

    #[test]
    fn bad_params_are_named() {
        let mut p = params(Split::Test, 1);
        p.tasks = vec!["sorting".into()];
        assert!(generate(&p).unwrap_err().to_string().contains("`sorting`"));
        let mut p = params(Split::Test, 1);
        p.list_len = [1, 3];
        assert!(generate(&p).unwrap_err().to_string().contains("list_len"));
    }
}
