//! Chat templates: the Jinja template a checkpoint ships, rendered with
//! minijinja and its Python-compatibility layer.

use serde::{Deserialize, Serialize};

use super::ModelError;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }

    pub fn user(content: &str) -> Self {
        Self::new("user", content)
    }

    pub fn assistant(content: &str) -> Self {
        Self::new("assistant", content)
    }
}

const CHATML: &str = "{%- for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{%- if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

/// ChatML with a default system message when the conversation has none.
macro_rules! chatml_with_system {
    ($system:literal) => {
        concat!(
            "{%- if messages[0].role != 'system' %}<|im_start|>system\n",
            $system,
            "<|im_end|>\n{% endif %}",
            "{%- for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{%- if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
        )
    };
}

/// Built-in chat templates by name: (name, description, Jinja source). They
/// pin a format whatever a checkpoint ships, and serve models that ship none.
pub static NAMED_TEMPLATES: &[(&str, &str, &str)] = &[
    ("chatml", "ChatML, no default system message", CHATML),
    (
        "qwen2.5",
        "ChatML with Qwen2.5's default system message (Qwen2.5 and Qwen2.5-Coder instruct)",
        chatml_with_system!("You are Qwen, created by Alibaba Cloud. You are a helpful assistant."),
    ),
    (
        "smollm2",
        "ChatML with SmolLM2's default system message (SmolLM2 instruct)",
        chatml_with_system!("You are a helpful AI assistant named SmolLM, trained by Hugging Face"),
    ),
];

pub fn named_template(name: &str) -> Option<&'static str> {
    NAMED_TEMPLATES
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, _, t)| *t)
}

/// Renders `messages` with `template`, ending with the assistant's turn
/// opened when `add_generation_prompt` is set.
pub fn render(
    template: &str,
    messages: &[Message],
    bos_token: &str,
    eos_token: &str,
    add_generation_prompt: bool,
) -> Result<String, ModelError> {
    let mut env = minijinja::Environment::new();
    minijinja_contrib::add_to_environment(&mut env);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function(
        "raise_exception",
        |msg: String| -> Result<String, minijinja::Error> {
            Err(minijinja::Error::new(
                minijinja::ErrorKind::InvalidOperation,
                msg,
            ))
        },
    );
    env.add_template("chat", template)
        .map_err(|e| ModelError::ChatTemplate(format!("the template does not parse: {e}")))?;
    let tmpl = env.get_template("chat").expect("just added");
    tmpl.render(minijinja::context! {
        messages => messages,
        bos_token => bos_token,
        eos_token => eos_token,
        add_generation_prompt => add_generation_prompt,
        tools => minijinja::Value::from(()),
    })
    .map_err(|e| ModelError::ChatTemplate(format!("rendering failed: {e}")))
}
