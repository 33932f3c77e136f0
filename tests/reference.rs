//! Our backbone against candle-transformers' reference implementations:
//! greedy tokens must be identical on real GGUF models.

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
    let mut tok = argmax(&fwd(prompt, 0));
    let mut pos = prompt.len();
    for _ in 0..N {
        out.push(tok);
        tok = argmax(&fwd(&[tok], pos));
        pos += 1;
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
