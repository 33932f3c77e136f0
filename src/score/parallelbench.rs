//! ParallelBench's metrics, as pure functions of an output text and the
//! row's `answer`. Each gives 0 or 1 per sample, leniently (`score`) and
//! strictly (`score_strict`), with ParallelBench's definitions: lenient
//! list parsing takes the text after the last `[` up to the next `]`;
//! strict parsing needs both brackets and `", "`-separated quoted items.
//!
//! One known divergence: Python's `\d` and `int()` accept every Unicode
//! decimal digit; the sudoku parsers here accept ASCII digits only. Other
//! digits make a grid unreadable, which scores 0 either way for the 4×4
//! puzzles, whose answers are ASCII.

use serde_json::Value;

/// Python's `str.strip(chars)`.
fn strip_chars<'a>(s: &'a str, chars: &[char]) -> &'a str {
    s.trim_matches(|c| chars.contains(&c))
}

/// Python's `str.strip()` (Unicode whitespace).
fn strip_ws(s: &str) -> &str {
    s.trim_matches(char::is_whitespace)
}

/// A list in an output: lenient or strict, as ParallelBench parses it.
/// `None` is a failed strict parse.
pub fn parse_list(text: &str, strict: bool) -> Option<Vec<String>> {
    let mut s = text;
    match s.rsplit_once('[') {
        Some((_, after)) => s = after,
        None if strict => return None,
        None => {}
    }
    match s.split_once(']') {
        Some((before, _)) => s = before,
        None if strict => return None,
        None => {}
    }
    if !strict {
        return Some(
            strip_chars(s, &['[', ']'])
                .split(',')
                .filter(|item| !strip_ws(item).is_empty())
                .map(|item| strip_chars(item, &['"', ' ']).to_string())
                .collect(),
        );
    }
    let mut items = Vec::new();
    for item in s.split(", ") {
        let inner = item
            .strip_prefix('"')
            .and_then(|x| x.strip_suffix('"'))
            // A lone `"` starts and ends with a quote: Python's item[1:-1] is "".
            .or(if item == "\"" { Some("") } else { None })?;
        if inner.contains('"') {
            return None;
        }
        items.push(inner.to_string());
    }
    Some(items)
}

/// A JSON list of strings, or a string holding a list (lenient parse).
fn as_list(v: &Value) -> Option<Vec<String>> {
    match v {
        Value::Array(a) => a.iter().map(|x| x.as_str().map(String::from)).collect(),
        Value::String(s) => parse_list(s, false),
        _ => None,
    }
}

/// The words a random task names: one string or a list.
fn as_words(v: Option<&Value>) -> Option<Vec<String>> {
    match v? {
        Value::Null => None,
        Value::String(s) => Some(vec![s.clone()]),
        other => as_list(other),
    }
}

fn n_words(answer: &Value) -> usize {
    answer
        .get("n_words")
        .and_then(Value::as_u64)
        .map(|n| n as usize)
        .unwrap_or(1)
}

fn b(x: bool) -> f64 {
    if x {
        1.0
    } else {
        0.0
    }
}

/// `list_match_score`: the parsed output equals the parsed answer.
pub fn list_match(output: &str, answer: &Value, strict: bool) -> Option<f64> {
    let want = as_list(answer)?;
    Some(match parse_list(output, strict) {
        None => 0.0,
        Some(got) => b(got == want),
    })
}

/// `list_shuffle_score`: a permutation of the input that is not the input.
pub fn list_shuffle(output: &str, answer: &Value, strict: bool) -> Option<f64> {
    let input = as_list(answer.get("input")?)?;
    let Some(got) = parse_list(output, strict) else {
        return Some(0.0);
    };
    let (mut a, mut c) = (got.clone(), input.clone());
    a.sort();
    c.sort();
    Some(b(a == c && got != input))
}

fn random_remove(pred: &[String], input: &[String], n: usize) -> f64 {
    if pred.len() + n != input.len() {
        return 0.0;
    }
    let deleted: std::collections::BTreeSet<&String> =
        input.iter().filter(|x| !pred.contains(x)).collect();
    if deleted.len() != n {
        return 0.0;
    }
    let mut rest = input.to_vec();
    for d in deleted {
        if let Some(i) = rest.iter().position(|x| x == d) {
            rest.remove(i);
        }
    }
    b(rest == pred)
}

fn random_insert(pred: &[String], input: &[String], words: Option<&[String]>, n: usize) -> f64 {
    match words {
        Some(words) => {
            let mut rest = pred.to_vec();
            for w in words {
                match rest.iter().position(|x| x == w) {
                    Some(i) => {
                        rest.remove(i);
                    }
                    None => return 0.0,
                }
            }
            b(rest == input)
        }
        // Inserting unnamed words is removing them the other way round.
        None => random_remove(input, pred, n),
    }
}

/// `list_random_insert_score`: remove `word` once from the output; the
/// rest equals the input.
pub fn list_random_insert(output: &str, answer: &Value, strict: bool) -> Option<f64> {
    let input = as_list(answer.get("input")?)?;
    let words = as_words(answer.get("word"));
    Some(match parse_list(output, strict) {
        None => 0.0,
        Some(got) => random_insert(&got, &input, words.as_deref(), n_words(answer)),
    })
}

/// `list_random_remove_score`: n−1 items, exactly one input item missing,
/// and the input without it equals the output.
pub fn list_random_remove(output: &str, answer: &Value, strict: bool) -> Option<f64> {
    let input = as_list(answer.get("input")?)?;
    Some(match parse_list(output, strict) {
        None => 0.0,
        Some(got) => random_remove(&got, &input, n_words(answer)),
    })
}

/// `list_random_replace_score`: same length; at the first index of `word`
/// in the output, the input with that item replaced equals the output.
pub fn list_random_replace(output: &str, answer: &Value, strict: bool) -> Option<f64> {
    let input = as_list(answer.get("input")?)?;
    let word = answer.get("word").and_then(Value::as_str);
    let Some(got) = parse_list(output, strict) else {
        return Some(0.0);
    };
    if got.len() != input.len() {
        return Some(0.0);
    }
    Some(match word {
        Some(w) => match got.iter().position(|x| x == w) {
            None => 0.0,
            Some(i) => {
                let mut want = input.clone();
                want[i] = w.to_string();
                b(got == want)
            }
        },
        None => b(got.iter().zip(&input).filter(|(p, g)| p != g).count() == n_words(answer)),
    })
}

/// `latin_square_score` (the same leniently and strictly): keep the lines
/// whose comma-separated cells are exactly the symbol set, take the first
/// `size` of them, and check every row and column.
pub fn latin_square(output: &str, answer: &Value) -> Option<f64> {
    use std::collections::BTreeSet;
    let symbols: BTreeSet<String> = as_list(answer.get("symbols")?)?.into_iter().collect();
    let first_row = answer.get("first_row").and_then(as_list);
    let size = symbols.len();
    let cells =
        |line: &str| -> Vec<String> { line.split(',').map(|c| strip_ws(c).to_string()).collect() };
    let rows: Vec<Vec<String>> = output
        .split('\n')
        .map(strip_ws)
        .filter(|l| !l.is_empty())
        .map(cells)
        .filter(|r| r.iter().cloned().collect::<BTreeSet<_>>() == symbols)
        .take(size)
        .collect();
    if rows.len() < size {
        return Some(0.0);
    }
    let set = |v: Vec<&String>| v.into_iter().cloned().collect::<BTreeSet<String>>();
    // Python's zip stops at the shortest row.
    let width = rows.iter().map(Vec::len).min().unwrap_or(0);
    let rows_ok = rows.iter().all(|r| set(r.iter().collect()) == symbols);
    let cols_ok = (0..width).all(|c| set(rows.iter().map(|r| &r[c]).collect()) == symbols);
    if !rows_ok || !cols_ok || (width == 0 && !symbols.is_empty()) {
        return Some(0.0);
    }
    if let Some(first) = first_row {
        if rows[0] != first {
            return Some(0.0);
        }
    }
    Some(1.0)
}

/// A 4×4 grid: leniently, lines with exactly four digits once spaces and
/// commas are gone (exactly four such lines); strictly, exactly four lines
/// of exactly four digit characters.
pub fn parse_sudoku(text: &str, strict: bool) -> Option<Vec<Vec<u32>>> {
    const N: usize = 4;
    let text = strip_ws(text);
    if !strict {
        let cleaned = text.replace([' ', ','], "");
        let grid: Vec<Vec<u32>> = cleaned
            .split('\n')
            .map(strip_ws)
            .filter(|l| !l.is_empty())
            .map(|l| {
                l.chars()
                    .filter_map(|c| c.to_digit(10))
                    .collect::<Vec<u32>>()
            })
            .filter(|row| row.len() == N)
            .collect();
        return (grid.len() == N).then_some(grid);
    }
    let lines: Vec<&str> = text
        .split('\n')
        .map(strip_ws)
        .filter(|l| !l.is_empty())
        .collect();
    if lines.len() != N {
        return None;
    }
    lines
        .iter()
        .map(|l| {
            let digits: Option<Vec<u32>> = l.chars().map(|c| c.to_digit(10)).collect();
            digits.filter(|d| d.len() == N)
        })
        .collect()
}

/// `sudoku_score`: the parsed grid equals the answer's.
pub fn sudoku(output: &str, answer: &Value, strict: bool) -> Option<f64> {
    let want = parse_sudoku(answer.as_str()?, true);
    let got = parse_sudoku(output, strict);
    Some(b(got == want))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn l(items: &[&str]) -> Option<Vec<String>> {
        Some(items.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn lenient_list_parsing() {
        assert_eq!(parse_list(r#"["A B", "C"]"#, false), l(&["A B", "C"]));
        // After the last `[`, up to the next `]`.
        assert_eq!(
            parse_list(r#"Sure: ["x"] then ["A", "B"] done"#, false),
            l(&["A", "B"])
        );
        // Missing brackets: the whole text, split on commas.
        assert_eq!(parse_list(r#""A", "B""#, false), l(&["A", "B"]));
        assert_eq!(parse_list(r#"["A", "B""#, false), l(&["A", "B"]));
        // Empty and blank items are dropped; only `"` and spaces are stripped.
        assert_eq!(parse_list("[A,, ,B,]", false), l(&["A", "B"]));
        assert_eq!(parse_list("[ 'A' ]", false), l(&["'A'"]));
        assert_eq!(parse_list("", false), l(&[]));
        assert_eq!(parse_list("[]", false), l(&[]));
        assert_eq!(
            parse_list("[\"Zoë\", \"李雷\"]", false),
            l(&["Zoë", "李雷"])
        );
        assert_eq!(parse_list("[A,\n B]", false), l(&["A", "\n B"]));
    }

    #[test]
    fn strict_list_parsing() {
        assert_eq!(parse_list(r#"["A B", "C"]"#, true), l(&["A B", "C"]));
        assert_eq!(
            parse_list(r#""A", "B""#, true),
            None,
            "brackets are required"
        );
        assert_eq!(parse_list(r#"["A", "B""#, true), None);
        assert_eq!(
            parse_list(r#"["A","B"]"#, true),
            None,
            "items split on \", \""
        );
        assert_eq!(parse_list(r#"[A, "B"]"#, true), None, "every item quoted");
        assert_eq!(parse_list(r#"["A"B", "C"]"#, true), None, "no inner quotes");
        assert_eq!(parse_list("[]", true), None);
        assert_eq!(parse_list(r#"[""]"#, true), l(&[""]));
        assert_eq!(parse_list(r#"["]"#, true), l(&[""]));
        assert_eq!(
            parse_list(r#"text ["Zoë", "李雷"] more"#, true),
            l(&["Zoë", "李雷"])
        );
    }

    #[test]
    fn list_match_and_shuffle() {
        let ans = json!("[\"A\", \"B\", \"C\"]");
        assert_eq!(list_match("[\"A\", \"B\", \"C\"]", &ans, false), Some(1.0));
        assert_eq!(list_match("Answer: [A, B, C]", &ans, false), Some(1.0));
        assert_eq!(list_match("Answer: [A, B, C]", &ans, true), Some(0.0));
        assert_eq!(list_match("[\"A\", \"C\", \"B\"]", &ans, false), Some(0.0));
        assert_eq!(list_match("", &ans, false), Some(0.0));
        assert_eq!(list_match("", &ans, true), Some(0.0));

        let ans = json!({"input": ["A", "B", "C"]});
        assert_eq!(list_shuffle("[\"B\", \"A\", \"C\"]", &ans, true), Some(1.0));
        assert_eq!(
            list_shuffle("[\"A\", \"B\", \"C\"]", &ans, true),
            Some(0.0),
            "unchanged"
        );
        assert_eq!(
            list_shuffle("[\"B\", \"A\"]", &ans, false),
            Some(0.0),
            "one lost"
        );
        assert_eq!(
            list_shuffle("[\"B\", \"A\", \"A\"]", &ans, false),
            Some(0.0)
        );
        assert_eq!(
            list_shuffle("no list", &json!("x"), false),
            None,
            "bad answer"
        );
    }

    #[test]
    fn random_insert_remove_replace() {
        let ins = json!({"input": ["A", "B", "C"], "word": "W"});
        assert_eq!(
            list_random_insert("[\"A\", \"W\", \"B\", \"C\"]", &ins, true),
            Some(1.0)
        );
        assert_eq!(
            list_random_insert("[\"W\", \"A\", \"B\", \"C\"]", &ins, true),
            Some(1.0)
        );
        assert_eq!(
            list_random_insert("[\"A\", \"B\", \"C\"]", &ins, true),
            Some(0.0),
            "absent"
        );
        assert_eq!(
            list_random_insert("[\"B\", \"W\", \"A\", \"C\"]", &ins, false),
            Some(0.0)
        );
        assert_eq!(
            list_random_insert("[\"A\", \"W\", \"B\", \"W\", \"C\"]", &ins, false),
            Some(0.0),
            "only one occurrence is removed"
        );

        let rem = json!({"input": ["A", "B", "C"]});
        assert_eq!(list_random_remove("[\"A\", \"C\"]", &rem, true), Some(1.0));
        assert_eq!(list_random_remove("[\"B\", \"C\"]", &rem, true), Some(1.0));
        assert_eq!(
            list_random_remove("[\"C\", \"A\"]", &rem, true),
            Some(0.0),
            "order"
        );
        assert_eq!(list_random_remove("[\"A\", \"X\"]", &rem, false), Some(0.0));
        assert_eq!(
            list_random_remove("[\"A\"]", &rem, false),
            Some(0.0),
            "n-1 items"
        );
        // Duplicates: removing one of two equal items leaves no missing item.
        let dup = json!({"input": ["A", "A", "B"]});
        assert_eq!(list_random_remove("[\"A\", \"B\"]", &dup, false), Some(0.0));

        let rep = json!({"input": ["A", "B", "C"], "word": "W"});
        assert_eq!(
            list_random_replace("[\"A\", \"W\", \"C\"]", &rep, true),
            Some(1.0)
        );
        assert_eq!(
            list_random_replace("[\"W\", \"B\", \"C\"]", &rep, true),
            Some(1.0)
        );
        assert_eq!(
            list_random_replace("[\"W\", \"W\", \"C\"]", &rep, true),
            Some(0.0)
        );
        assert_eq!(
            list_random_replace("[\"A\", \"B\", \"C\"]", &rep, true),
            Some(0.0)
        );
        assert_eq!(list_random_replace("[\"A\", \"W\"]", &rep, true), Some(0.0));
    }

    #[test]
    fn latin_squares() {
        let ans = json!({"symbols": ["H", "4", "C", "A"]});
        let good = "H,4,A,C\n4,C,H,A\nC,A,4,H\nA,H,C,4";
        assert_eq!(latin_square(good, &ans), Some(1.0));
        assert_eq!(
            latin_square(
                &format!("Here it is:\n\n{}\n\nDone.", good.replace(',', ", ")),
                &ans
            ),
            Some(1.0),
            "extra lines and spaces are tolerated"
        );
        let bad_col = "H,4,A,C\nH,4,A,C\nC,A,4,H\nA,H,C,4";
        assert_eq!(latin_square(bad_col, &ans), Some(0.0));
        assert_eq!(
            latin_square("H,4,A,C\n4,C,H,A\nC,A,4,H", &ans),
            Some(0.0),
            "3 rows"
        );
        assert_eq!(latin_square("", &ans), Some(0.0));
        let with_first =
            json!({"symbols": ["H", "4", "C", "A"], "first_row": ["4", "C", "H", "A"]});
        assert_eq!(latin_square(good, &with_first), Some(0.0));
    }

    #[test]
    fn sudokus() {
        let ans = json!("1342\n2431\n4123\n3214");
        assert_eq!(sudoku("1342\n2431\n4123\n3214", &ans, true), Some(1.0));
        assert_eq!(
            sudoku("1 3 4 2\n2,4,3,1\n4123\n3214\n", &ans, false),
            Some(1.0)
        );
        assert_eq!(
            sudoku("1 3 4 2\n2,4,3,1\n4123\n3214\n", &ans, true),
            Some(0.0)
        );
        assert_eq!(
            sudoku("Solution:\n1342\n2431\n4123\n3214", &ans, false),
            Some(1.0)
        );
        assert_eq!(
            sudoku("Solution:\n1342\n2431\n4123\n3214", &ans, true),
            Some(0.0)
        );
        assert_eq!(sudoku("1342\n2431\n4123", &ans, false), Some(0.0));
        assert_eq!(
            sudoku("1342\n2431\n4123\n3214\n1234", &ans, false),
            Some(0.0)
        );
        assert_eq!(sudoku("١٣٤٢\n2431\n4123\n3214", &ans, false), Some(0.0));
        assert_eq!(sudoku("", &ans, false), Some(0.0));
    }

    fn list_text(items: &[&str]) -> String {
        format!(
            "[{}]",
            items
                .iter()
                .map(|x| format!("\"{x}\""))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }

    /// ParallelBench's closed forms for fully parallel decoding with
    /// perfect marginals, by exact enumeration of independent positions.
    #[test]
    fn closed_form_oracles() {
        let items = ["A", "B", "C"];
        let n = items.len();
        // Random replace: each position is the new word with probability
        // 1/n, else its own item: n·(1/n)·((n−1)/n)^(n−1) = 4/9 at n = 3.
        let answer = json!({"input": items, "word": "W"});
        let mut expected = 0.0;
        for mask in 0..(1u32 << n) {
            let out: Vec<&str> = (0..n)
                .map(|i| if mask >> i & 1 == 1 { "W" } else { items[i] })
                .collect();
            let p: f64 = (0..n)
                .map(|i| {
                    if mask >> i & 1 == 1 {
                        1.0 / n as f64
                    } else {
                        (n - 1) as f64 / n as f64
                    }
                })
                .product();
            expected += p * list_random_replace(&list_text(&out), &answer, true).unwrap();
        }
        let closed = n as f64 * (1.0 / n as f64) * ((n - 1) as f64 / n as f64).powi(n as i32 - 1);
        assert!((expected - closed).abs() < 1e-12 && (closed - 4.0 / 9.0).abs() < 1e-12);

        // Shuffle: each position uniform over the items. A permutation comes
        // out with probability n!/n^n = 2/9 (the paper's 22.2%); the metric
        // also refuses the unchanged input, leaving (n! − 1)/n^n = 5/27.
        let answer = json!({"input": items});
        let (mut perm, mut score) = (0.0, 0.0);
        for code in 0..n.pow(n as u32) {
            let out: Vec<&str> = (0..n).map(|i| items[code / n.pow(i as u32) % n]).collect();
            let p = 1.0 / n.pow(n as u32) as f64;
            let mut sorted = out.clone();
            sorted.sort();
            perm += p * b(sorted == items);
            score += p * list_shuffle(&list_text(&out), &answer, true).unwrap();
        }
        assert!((perm - 2.0 / 9.0).abs() < 1e-12, "{perm}");
        assert!((score - 5.0 / 27.0).abs() < 1e-12, "{score}");
    }
}
