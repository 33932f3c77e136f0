//! The LanguageTool backend against a stand-in server that speaks
//! `/v2/check`: the request is what language_tool_python sends, the
//! reply's matches become issues, and a dead server is a clear error.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::mpsc;

use pdbench::score::grammar::{passes, GrammarBackend, GrammarChecker, LanguageToolChecker};

/// Serves `replies` in order, one per connection, and sends back each
/// request's path and form body.
fn stand_in(replies: Vec<&'static str>) -> (String, mpsc::Receiver<(String, String)>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for reply in replies {
            let (stream, _) = listener.accept().unwrap();
            let mut r = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            r.read_line(&mut request_line).unwrap();
            let mut len = 0;
            loop {
                let mut h = String::new();
                r.read_line(&mut h).unwrap();
                if h == "\r\n" || h.is_empty() {
                    break;
                }
                if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
            }
            let mut body = vec![0; len];
            r.read_exact(&mut body).unwrap();
            tx.send((request_line, String::from_utf8(body).unwrap()))
                .unwrap();
            let mut w = stream;
            write!(
                w,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reply}",
                reply.len()
            )
            .unwrap();
        }
    });
    (url, rx)
}

#[test]
fn languagetool_requests_and_matches() {
    let (url, rx) = stand_in(vec![
        r#"{"software":{"name":"LanguageTool"},"matches":[{"message":"Possible typo: you repeated a word.","offset":7,"length":7,"rule":{"id":"ENGLISH_WORD_REPEAT_RULE","category":{"id":"MISC"}}}]}"#,
        r#"{"matches":[]}"#,
        r#"<html>not json</html>"#,
    ]);
    let lt = LanguageToolChecker { url: url.clone() };
    let issues = lt.issues("We went the the way & back.").unwrap();
    let (line, body) = rx.recv().unwrap();
    assert!(line.starts_with("POST /v2/check "), "{line}");
    assert!(body.contains("language=en-US"), "{body}");
    assert!(
        body.contains("text=We+went+the+the+way+%26+back."),
        "{body}"
    );
    assert_eq!(issues.len(), 1);
    assert_eq!(issues[0].rule, "ENGLISH_WORD_REPEAT_RULE");
    assert_eq!((issues[0].offset_chars, issues[0].len_chars), (7, 7));

    // `passes` trims, and an empty text fails without asking the server.
    assert!(!passes(&lt, "  ").unwrap());
    assert!(passes(&lt, " Fine text. ").unwrap());
    assert_eq!(rx.recv().unwrap().1, "language=en-US&text=Fine+text.");

    let e = lt.issues("x").unwrap_err().to_string();
    assert!(e.contains(&url) && e.contains("/v2/check"), "{e}");
}

#[test]
fn a_dead_server_is_a_clear_error() {
    // Bind then drop, so nothing listens on the port.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let backend: GrammarBackend = format!("languagetool={url}").parse().unwrap();
    let info = backend.info();
    assert_eq!(info.backend, "languagetool");
    assert_eq!(info.url.as_deref(), Some(url.as_str()));
    let e = backend
        .open()
        .unwrap()
        .issues("Hello.")
        .unwrap_err()
        .to_string();
    assert!(e.contains(&url) && e.contains("--grammar harper"), "{e}");
}
