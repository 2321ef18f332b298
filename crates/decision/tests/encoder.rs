//! The encoder (`embedding::minilm`, behind [`Encoder`]) computes what candle-transformers'
//! `BertModel` computes on the real all-MiniLM-L6-v2 weights. For every sentence, the two
//! sentence embeddings (mean pooled under the mask, L2-normalised) are compared by cosine
//! similarity, with and without padding in the mask, and as the encoder reads a text (cut at
//! `decision.embedding.max_tokens`, 32 by default; one sentence is longer):
//! - at `f32` they agree to float rounding (≥ 0.9999);
//! - at `int8` (dynamic quantization) they stay within [`INT8_MIN_COSINE`].
//!
//! SKIPPED (passes, saying so) when `BATON_MINILM_DIR` is unset:
//! `export $(bash deploy/minilm.sh --env)`.

#![cfg(feature = "embedding")]

use baton_decision::embedding::{Encoder, Precision};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use std::path::{Path, PathBuf};

const SENTENCES: &[&str] = &[
    "Summarize my calendar for this week",
    "why are checkout requests timing out since noon?",
    "INC-7781: sysctl values on the batch hosts were tweaked manually during debugging and never reverted",
    "rotate the TLS certificate on the staging ingress before it expires on Friday, and tell the on-call channel when it is done so nobody is paged by the expiry alert",
    "x",
];

/// The least cosine similarity an int8 embedding keeps to the f32 reference.
const INT8_MIN_COSINE: f32 = 0.99;

fn model_dir() -> Option<PathBuf> {
    std::env::var_os("BATON_MINILM_DIR").map(PathBuf::from)
}

/// The reference: candle-transformers' BERT, mean pooled and normalised.
fn reference(model: &BertModel, ids: &[u32], mask: &[u32]) -> Vec<f32> {
    let n = ids.len();
    let dev = Device::Cpu;
    let input = Tensor::from_slice(ids, (1, n), &dev).unwrap();
    let types = input.zeros_like().unwrap();
    let mask_t = Tensor::from_slice(mask, (1, n), &dev).unwrap();
    let hidden = model.forward(&input, &types, Some(&mask_t)).unwrap();
    let hidden = hidden.squeeze(0).unwrap().to_vec2::<f32>().unwrap();
    // The mean of the attended rows, normalised, is their sum normalised.
    let mut sum = vec![0f32; hidden[0].len()];
    for (row, m) in hidden.iter().zip(mask) {
        if *m != 0 {
            sum.iter_mut().zip(row).for_each(|(s, v)| *s += v);
        }
    }
    let norm = sum.iter().map(|v| v * v).sum::<f32>().sqrt();
    sum.iter().map(|v| v / norm).collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb)
}

fn load_reference(dir: &Path) -> BertModel {
    let config: Config =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let vb = VarBuilder::from_buffered_safetensors(bytes, DType::F32, &Device::Cpu).unwrap();
    BertModel::load(vb, &config).unwrap()
}

/// Compares `precision`'s embeddings with the reference, each at least `min_cosine`, and prints
/// the lowest cosine seen.
fn compare(precision: Precision, min_cosine: f32) {
    let Some(dir) = model_dir() else {
        println!("SKIPPED: BATON_MINILM_DIR is unset; run `export $(bash deploy/minilm.sh --env)`");
        return;
    };
    let encoder = Encoder::load_with(&dir, precision).unwrap();
    assert_eq!(encoder.precision(), precision);
    let bert = load_reference(&dir);
    let tokenizer = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    // What the encoder reads of a text: no padding, cut at its max_tokens ([SEP] kept last).
    let max_tokens = encoder.max_tokens();
    let mut cut = tokenizer.clone();
    cut.with_padding(None);
    cut.with_truncation(Some(tokenizers::TruncationParams {
        max_length: max_tokens,
        ..Default::default()
    }))
    .unwrap();
    let mut worst = 1f32;
    let mut longest = 0;
    for text in SENTENCES {
        let enc = tokenizer.encode(*text, true).unwrap();
        // The file pads to 128: the padded ids, their mask (zeros on the padding) and the
        // unpadded prefix all give the same embedding.
        let (ids, mask) = (enc.get_ids(), enc.get_attention_mask());
        let n = mask.iter().filter(|m| **m != 0).count();
        longest = longest.max(n);
        assert!(n < ids.len(), "the tokenizer pads, so the mask has zeros");
        let short = encoder.embed(text).unwrap();
        let read = cut.encode(*text, true).unwrap();
        let want_short = reference(&bert, read.get_ids(), read.get_attention_mask());
        let want = reference(&bert, &ids[..n], &mask[..n]);
        let padded = encoder.forward(ids, mask).unwrap();
        let want_padded = reference(&bert, ids, mask);
        assert_eq!(short.len(), 384);
        for (got, want, what) in [
            (&short, &want_short, "unpadded, cut at max_tokens"),
            (&padded, &want_padded, "padded"),
            (&padded, &want, "padded against unpadded"),
        ] {
            let c = cosine(got, want);
            worst = worst.min(c);
            assert!(c >= min_cosine, "{precision:?} {text:?} {what}: cosine {c}");
        }
    }
    assert!(
        longest > max_tokens,
        "a sentence longer than max_tokens ({max_tokens}) checks the cut ({longest} tokens at most)"
    );
    println!("{precision:?}: lowest cosine similarity to candle-transformers' BERT: {worst}");
}

#[test]
fn f32_encoder_matches_candle_transformers_bert() {
    compare(Precision::F32, 0.9999);
}

#[test]
fn int8_encoder_stays_close_to_candle_transformers_bert() {
    compare(Precision::Int8, INT8_MIN_COSINE);
}

/// A pass that starts alone runs on every core (its products split by columns); passes that
/// overlap run one per single-threaded lane. Both must give the same embedding, to the bit:
/// the kernels split output columns, never the sum over the depth. Eight threads released
/// together by a barrier embed every sentence several times, so passes overlap.
#[test]
fn overlapping_passes_give_the_embedding_of_a_pass_alone() {
    let Some(dir) = model_dir() else {
        println!("SKIPPED: BATON_MINILM_DIR is unset; run `export $(bash deploy/minilm.sh --env)`");
        return;
    };
    let encoder = Encoder::load_with(&dir, Precision::Int8).unwrap();
    let alone: Vec<Vec<f32>> = SENTENCES
        .iter()
        .map(|t| encoder.embed(t).unwrap())
        .collect();
    let threads = 8;
    let barrier = std::sync::Barrier::new(threads);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                barrier.wait();
                for round in 0..4 {
                    for (text, want) in SENTENCES.iter().zip(&alone) {
                        let got = encoder.embed(text).unwrap();
                        assert!(
                            got == *want,
                            "{text:?} (round {round}): an overlapping pass differs from a pass alone"
                        );
                    }
                }
            });
        }
    });
}
