//! Python's `str.format` with named fields, and `str()` of JSON values, so
//! that prompts built from released templates are byte-identical to the
//! ones their authors' Python code builds.

use serde_json::Value;

/// `str(value)` in Python, for values parsed from JSON.
pub fn py_str(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => py_repr(other),
    }
}

/// `repr(value)` in Python, for values parsed from JSON.
pub fn py_repr(v: &Value) -> String {
    match v {
        Value::Null => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => i.to_string(),
            (_, Some(u), _) => u.to_string(),
            (_, _, Some(f)) => py_float(f),
            _ => n.to_string(),
        },
        Value::String(s) => py_repr_str(s),
        Value::Array(a) => format!("[{}]", a.iter().map(py_repr).collect::<Vec<_>>().join(", ")),
        Value::Object(o) => format!(
            "{{{}}}",
            o.iter()
                .map(|(k, v)| format!("{}: {}", py_repr_str(k), py_repr(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn py_float(f: f64) -> String {
    if f.is_nan() {
        return "nan".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "inf".into() } else { "-inf".into() };
    }
    // The shortest round-trip digits, laid out as Python's repr does:
    // positional for decimal exponents -4..16, else `d.ddde+XX`.
    let sci = format!("{f:e}");
    let (mant, exp) = sci.split_once('e').expect("LowerExp has an exponent");
    let exp: i32 = exp.parse().expect("an integer exponent");
    let (sign, mant) = match mant.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mant),
    };
    let digits: String = mant.chars().filter(|c| *c != '.').collect();
    if (-4..16).contains(&exp) {
        let body = if exp >= 0 {
            let point = exp as usize + 1;
            let int: String = digits
                .chars()
                .chain(std::iter::repeat('0'))
                .take(point)
                .collect();
            let frac = if digits.len() > point {
                &digits[point..]
            } else {
                "0"
            };
            format!("{int}.{frac}")
        } else {
            format!("0.{}{}", "0".repeat((-exp - 1) as usize), digits)
        };
        format!("{sign}{body}")
    } else {
        let rest = if digits.len() > 1 {
            format!(".{}", &digits[1..])
        } else {
            String::new()
        };
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{}{rest}e{esign}{:02}", &digits[..1], exp.abs())
    }
}

/// Python's repr of a string: single quotes unless the text holds a single
/// quote and no double quote.
fn py_repr_str(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FormatError {
    #[error("the template names field `{0}`, which the row does not have")]
    MissingField(String),
    #[error("the template has a single `{0}` at byte {1}; write `{0}{0}` for a literal brace")]
    LoneBrace(char, usize),
    #[error("the template uses `{{{0}}}`; only plain named fields are supported")]
    Unsupported(String),
}

/// `template.format(**fields)`: `{name}` becomes `str(fields[name])`, and
/// `{{`/`}}` become single braces. Conversions, format specs and
/// positional or attribute fields are refused rather than guessed.
pub fn format(
    template: &str,
    fields: &serde_json::Map<String, Value>,
) -> Result<String, FormatError> {
    let mut out = String::with_capacity(template.len());
    let mut chars = template.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            '{' if chars.peek().map(|x| x.1) == Some('{') => {
                chars.next();
                out.push('{');
            }
            '}' if chars.peek().map(|x| x.1) == Some('}') => {
                chars.next();
                out.push('}');
            }
            '}' => return Err(FormatError::LoneBrace('}', i)),
            '{' => {
                let mut name = String::new();
                let mut closed = false;
                for (_, d) in chars.by_ref() {
                    if d == '}' {
                        closed = true;
                        break;
                    }
                    name.push(d);
                }
                if !closed {
                    return Err(FormatError::LoneBrace('{', i));
                }
                let plain = !name.is_empty()
                    && !name.starts_with(|c: char| c.is_ascii_digit())
                    && name.chars().all(|c| c.is_alphanumeric() || c == '_');
                if !plain {
                    return Err(FormatError::Unsupported(name));
                }
                let v = fields
                    .get(&name)
                    .ok_or_else(|| FormatError::MissingField(name.clone()))?;
                out.push_str(&py_str(v));
            }
            c => out.push(c),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(v: Value) -> serde_json::Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn formats_like_python() {
        let f = fields(
            json!({"context": "[\"A\", \"B\"]", "word": "W", "index": 2, "none": null, "flag": true, "x": 0.5, "l": ["a", "b's"]}),
        );
        assert_eq!(
            format("Insert \"{word}\" at {index}:\n{context}", &f).unwrap(),
            "Insert \"W\" at 2:\n[\"A\", \"B\"]"
        );
        assert_eq!(
            format("{{literal}} {none} {flag} {x}", &f).unwrap(),
            "{literal} None True 0.5"
        );
        assert_eq!(format("{l}", &f).unwrap(), "['a', \"b's\"]");
        assert_eq!(format("", &f).unwrap(), "");
        assert_eq!(format("no fields", &f).unwrap(), "no fields");
        assert_eq!(
            format("{missing}", &f),
            Err(FormatError::MissingField("missing".into()))
        );
        assert_eq!(format("a } b", &f), Err(FormatError::LoneBrace('}', 2)));
        assert_eq!(format("a { b", &f), Err(FormatError::LoneBrace('{', 2)));
        assert_eq!(format("{0}", &f), Err(FormatError::Unsupported("0".into())));
        assert_eq!(
            format("{x:.2f}", &f),
            Err(FormatError::Unsupported("x:.2f".into()))
        );
        assert_eq!(
            format("{word!r}", &f),
            Err(FormatError::Unsupported("word!r".into()))
        );
    }

    #[test]
    fn repr_matches_python() {
        assert_eq!(py_repr(&json!("it's")), "\"it's\"");
        assert_eq!(py_repr(&json!("say \"hi\"")), "'say \"hi\"'");
        assert_eq!(py_repr(&json!("both ' and \"")), "'both \\' and \"'");
        assert_eq!(py_repr(&json!("tab\there\n")), "'tab\\there\\n'");
        assert_eq!(py_repr(&json!(3.0)), "3.0");
        assert_eq!(py_repr(&json!(1e20)), "1e+20");
        assert_eq!(py_repr(&json!(1e16)), "1e+16");
        assert_eq!(py_repr(&json!(1234567890123456.0)), "1234567890123456.0");
        assert_eq!(py_repr(&json!(-0.00012)), "-0.00012");
        assert_eq!(py_repr(&json!(0.00001)), "1e-05");
        assert_eq!(py_repr(&json!(2.5e-7)), "2.5e-07");
        assert_eq!(py_repr(&json!(120.25)), "120.25");
        assert_eq!(py_repr(&json!({"a": [1, null]})), "{'a': [1, None]}");
    }
}
