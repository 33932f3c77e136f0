//! GSM8K: the last number in the output against the number after `####`
//! in the reference answer. Numbers may carry thousands separators, a sign
//! and a decimal part; they are equal when their values are equal
//! (`1,000` = `1000` = `1000.00`).

/// Numbers in `text`, in order: `-?\d[\d,]*(\.\d+)?` with the commas
/// dropped.
fn numbers(text: &str) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        if !chars[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        let negative = i > 0 && chars[i - 1] == '-';
        let mut s = String::new();
        if negative {
            s.push('-');
        }
        while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == ',') {
            if chars[i] != ',' {
                s.push(chars[i]);
            }
            i += 1;
        }
        if i + 1 < chars.len() && chars[i] == '.' && chars[i + 1].is_ascii_digit() {
            s.push('.');
            i += 1;
            while i < chars.len() && chars[i].is_ascii_digit() {
                s.push(chars[i]);
                i += 1;
            }
        }
        out.push(s);
    }
    out
}

/// The reference's final answer: the number after the last `####`.
pub fn reference_number(answer: &str) -> Option<f64> {
    let (_, tail) = answer.rsplit_once("####")?;
    numbers(tail).first()?.parse().ok()
}

/// 1 when the output's last number equals the reference's; `None` when the
/// reference has no `#### <number>`.
pub fn score(output: &str, answer: &str) -> Option<f64> {
    let want = reference_number(answer)?;
    let got = numbers(output).last().and_then(|n| n.parse::<f64>().ok());
    Some(if got == Some(want) { 1.0 } else { 0.0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    const REF: &str = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n48+24 = 72\n#### 72";

    #[test]
    fn last_number_against_the_hashes() {
        assert_eq!(reference_number(REF), Some(72.0));
        assert_eq!(score("So she sold 72 clips.", REF), Some(1.0));
        assert_eq!(score("48 + 24 = 72. The answer is $72.00", REF), Some(1.0));
        assert_eq!(
            score("72 in total... wait, 73", REF),
            Some(0.0),
            "the last number counts"
        );
        assert_eq!(score("", REF), Some(0.0));
        assert_eq!(score("no numbers here", REF), Some(0.0));
        assert_eq!(score("٧٢", REF), Some(0.0), "ASCII digits only");
        assert_eq!(
            score("It costs 1,234,567 dollars", "x\n#### 1234567"),
            Some(1.0)
        );
        assert_eq!(score("The change is -5.", "#### -5"), Some(1.0));
        assert_eq!(score("The change is 5", "#### -5"), Some(0.0));
        assert_eq!(score("3.50", "#### 3.5"), Some(1.0));
        assert_eq!(
            score("72", "no final answer"),
            None,
            "a malformed reference"
        );
    }
}
