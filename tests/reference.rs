//! Our backbone against candle-transformers' reference implementations:
//! greedy tokens must be identical on real GGUF models.
//!
//! The reference consumes the prompt one token at a time. Our backbone
//! computes every position with the arithmetic of a single-token step
//! (that is what makes verification forwards of lossless methods equal to
//! AR decoding), so the two agree bit for bit; candle's own multi-row
//! prefill rounds differently, and with 8-bit activation quantization such
//! rounding differences can change a greedy token.

mod common;

use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use candle_transformers::models::{quantized_llama, quantized_qwen2};

const N: usize = 64;

fn argmax(t: &Tensor) -> u32 {
    let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
    pdbench::model::argmax(&v)
}

fn reference_greedy(mut fwd: impl FnMut(&[u32], usize) -> Tensor, prompt: &[u32]) -> Vec<u32> {
    let mut out = Vec::new();
    let mut last = None;
    for (pos, &t) in prompt.iter().enumerate() {
        last = Some(fwd(&[t], pos));
    }
    let mut tok = argmax(&last.expect("a non-empty prompt"));
    for pos in prompt.len()..prompt.len() + N {
        out.push(tok);
        tok = argmax(&fwd(&[tok], pos));
    }
    out
}

#[test]
fn smollm2_greedy_equals_candle_quantized_llama() {
    let path = common::fetched("smollm2-135m");
    let ours = common::load("smollm2-135m");
    let mut f = std::fs::File::open(&path).unwrap();
    let ct = gguf_file::Content::read(&mut f).unwrap();
    let mut reference = quantized_llama::ModelWeights::from_gguf(ct, &mut f, &Device::Cpu).unwrap();
    for prompt in common::chat_prompts(&ours) {
        reference.clear_kv_cache();
        let want = reference_greedy(
            |ids, pos| {
                reference
                    .forward(
                        &Tensor::new(ids, &Device::Cpu)
                            .unwrap()
                            .unsqueeze(0)
                            .unwrap(),
                        pos,
                    )
                    .unwrap()
            },
            &prompt,
        );
        let got = common::decode_with("ar", serde_json::Value::Null, &ours, &prompt, N, 0);
        assert_eq!(got, want, "prompt of {} tokens", prompt.len());
    }
}

#[test]
fn qwen_coder_greedy_equals_candle_quantized_qwen2() {
    let path = common::fetched("qwen2.5-coder-0.5b");
    let ours = common::load("qwen2.5-coder-0.5b");
    let mut f = std::fs::File::open(&path).unwrap();
    let ct = gguf_file::Content::read(&mut f).unwrap();
    let mut reference = quantized_qwen2::ModelWeights::from_gguf(ct, &mut f, &Device::Cpu).unwrap();
    for prompt in common::chat_prompts(&ours) {
        reference.clear_kv_cache();
        let want = reference_greedy(
            |ids, pos| {
                reference
                    .forward(
                        &Tensor::new(ids, &Device::Cpu)
                            .unwrap()
                            .unsqueeze(0)
                            .unwrap(),
                        pos,
                    )
                    .unwrap()
            },
            &prompt,
        );
        let got = common::decode_with("ar", serde_json::Value::Null, &ours, &prompt, N, 0);
        assert_eq!(got, want, "prompt of {} tokens", prompt.len());
    }
}
