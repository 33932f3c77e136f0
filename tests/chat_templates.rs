//! pdbench's named chat templates render exactly what the real models'
//! embedded templates render, on conversations with and without a system
//! message and with earlier assistant turns.

mod common;

use pdbench::model::chat::{self, Message};

fn conversations() -> Vec<Vec<Message>> {
    vec![
        vec![Message::user("Write a haiku about caches.")],
        vec![
            Message::new("system", "You answer in French."),
            Message::user("What is 2 + 2?"),
        ],
        vec![
            Message::user("Copy [\"A\", \"B\"]"),
            Message::assistant("[\"A\", \"B\"]"),
            Message::user("Copy [\"C\"]\nThen stop."),
        ],
    ]
}

fn check(model: &str, named: &str) {
    let m = common::load(model);
    let embedded = m
        .tokenizer
        .chat_template
        .as_deref()
        .expect("an embedded template");
    let ours = chat::named_template(named).unwrap();
    for conv in conversations() {
        let want = chat::render(embedded, &conv, "", "", true).unwrap();
        let got = chat::render(ours, &conv, "", "", true).unwrap();
        assert_eq!(got, want, "{model} vs {named} on {conv:?}");
    }
}

#[test]
fn smollm2_template_equals_the_ggufs() {
    check("smollm2-135m", "smollm2");
}

#[test]
fn qwen_template_equals_the_ggufs() {
    check("qwen2.5-coder-0.5b", "qwen2.5");
}
