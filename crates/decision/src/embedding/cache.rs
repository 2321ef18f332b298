//! The on-disk cache of the examples' embeddings: building the embedding tier runs the model
//! once per labelled example (seconds for the 720 built-in ones), and every start — every
//! test process, every `baton up` — would pay it again for the same texts and weights.
//!
//! One safetensors file per **key** in the cache directory
//! (`decision.embedding.cache_dir`), named `minilm-<key>.safetensors`. The key is the sha256
//! of everything that decides what an embedding is, apart from the text:
//! - [`FORMAT`] (the file layout and this recipe) and the crate's version;
//! - the weights' fingerprint ([`Encoder::fingerprint`]: sha256 of `config.json`,
//!   `tokenizer.json` and `model.safetensors` as loaded);
//! - [`pooling`] (mean under the attention mask, L2 normalisation, f32, no padding, the token
//!   limit);
//! - the exact bits of one probe text's embedding, computed at start (one forward pass), so a
//!   change in how the forward pass computes (another precision, other CPU kernels) misses
//!   instead of mixing old and new embeddings.
//!
//! Inside a file, entries are **per text**: tensor `text_sha256` (`n × 32` u8, the sha256 of
//! each example's text) and tensor `embeddings` (`n × 384` f32, row `i` the embedding of text
//! `i`). Adding one example embeds only the new text; the file then keeps the current examples
//! and, after them, what it held before (another example set over the same weights), up to
//! [`MAX_ENTRIES`]. Per-text entries were chosen over one file per example set because example
//! files are edited one line at a time (tuning, `baton shadow --examples`), and a whole-set key
//! would make each edit pay for all 720 examples again.
//!
//! The metadata holds `format`, `key` and `data_sha256` (sha256 of the two tensors' bytes).
//! A file that is not complete safetensors (truncated, corrupt), has another format or key
//! (foreign), the wrong shapes, a checksum that does not match or a value that is not finite is
//! logged once with what was wrong, and every example is embedded again and the file
//! overwritten: a bad file never fails a start and never yields a wrong embedding. Files are
//! written to a temporary file in the same directory, synced, then renamed over the old one, so
//! a reader (another process starting at the same time) sees the old file or the new one,
//! whole; two writers of the same key each write a complete file and the last rename wins. A
//! directory that cannot be created or written is warned about once, and the tier runs without
//! the cache.
//!
//! Files of other keys (older weights, crate versions, precisions; heads of earlier example
//! sets) are removed once unused for [`STALE_AFTER`]: a start marks the files it uses as used
//! (their modification time is set to now) and, once its embeddings and head are read or
//! written, removes the directory's `minilm-*` and `head-*` files last used before that
//! ([`prune`]). A removed file that another installation still wanted costs it one
//! re-embedding, never a wrong embedding.
//!
//! With `linear` scoring the trained head is cached beside them (`head-<key>.safetensors`,
//! tensors `weight` and `bias`, the roles in the metadata), keyed by the embeddings' key, every
//! example's text and role in order and the training settings' bits: training is deterministic
//! (L-BFGS from zero weights), so a stored head is bit for bit the head training would give, and
//! reading it saves ~1 s per start. The same checks, logging and atomic writes apply.

use super::Encoder;
use crate::Error;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Version of the file layout and of the key's recipe. Bump it when either changes, or when
/// the way an embedding is computed changes in a way the key does not see.
pub const FORMAT: &str = "baton-example-embeddings/1";

/// The most entries one file keeps (about 1.5 KiB each): the current examples always, then
/// entries of earlier example sets until the file holds this many.
pub const MAX_ENTRIES: usize = 20_000;

/// How long a cache file of another key may go unused before a start removes it ([`prune`]).
pub const STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(30 * 24 * 3600);

/// The text whose embedding's bits are part of the key.
const PROBE: &str = "baton example embedding cache probe: routing requests to roles";

/// How an embedding is computed from the model's output, for an encoder that reads at most
/// `max_tokens` word pieces (part of the key).
pub fn pooling(max_tokens: usize) -> String {
    format!(
        "mean of the last hidden states under the attention mask; L2-normalised; f32 on cpu; \
         no padding; [CLS] and [SEP] added; truncated at {max_tokens} tokens"
    )
}

/// sha256 (64 hex digits) over the sha256 of each part, in order.
pub fn fingerprint(parts: &[&[u8]]) -> String {
    let mut all = Sha256::new();
    for part in parts {
        all.update(Sha256::digest(part));
    }
    hex::encode(all.finalize())
}

/// What the cache did while a classifier was built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheReport {
    /// The cache file (`<cache_dir>/minilm-<key>.safetensors`).
    pub path: PathBuf,
    /// Examples whose embedding was read from the file.
    pub hits: usize,
    /// Examples whose text the file did not have (or all of them, when the file was unusable):
    /// embedded by the model, each distinct text once.
    pub misses: usize,
    /// The key (64 hex digits) the file is named by.
    pub key: String,
    /// Whether the file was (re)written.
    pub written: bool,
    /// `linear` scoring only: whether the trained head was read from its file
    /// ([`head_path`]) instead of being trained.
    pub head_hit: bool,
    /// What went wrong, if anything: the file found was unusable (truncated, corrupt, foreign;
    /// it was recomputed and overwritten), or it could not be written (the tier runs without
    /// the cache). Each was logged once as a warning.
    pub problem: Option<String>,
}

/// The cache key of the embeddings `encoder` computes (64 hex digits; see the module doc),
/// and the embedding width.
///
/// Errors: [`Error::Embedding`] when the probe cannot be embedded.
pub fn key(encoder: &Encoder) -> Result<(String, usize), Error> {
    let probe = encoder.embed(PROBE)?;
    let bits: Vec<u8> = probe.iter().flat_map(|x| x.to_le_bytes()).collect();
    let key = fingerprint(&[
        FORMAT.as_bytes(),
        env!("CARGO_PKG_VERSION").as_bytes(),
        encoder.fingerprint().as_bytes(),
        pooling(encoder.max_tokens()).as_bytes(),
        &bits,
    ]);
    Ok((key, probe.len()))
}

/// Marks the cache file at `path` as used now (its modification time), so [`prune`] keeps it.
/// A file that is not there or cannot be touched is left alone.
pub fn mark_used(path: &Path) {
    if let Ok(file) = std::fs::File::options().append(true).open(path) {
        let _ = file.set_modified(std::time::SystemTime::now());
    }
}

/// Removes the cache files in `dir` (`minilm-*.safetensors`, `head-*.safetensors`) last used
/// more than `stale_after` ago; returns how many. Other files are never touched, and a file
/// that cannot be removed is logged and left.
pub fn prune(dir: &Path, stale_after: std::time::Duration) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let now = std::time::SystemTime::now();
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let ours = (name.starts_with("minilm-") || name.starts_with("head-"))
            && name.ends_with(".safetensors");
        let stale = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| now.duration_since(t).ok())
            .is_some_and(|age| age > stale_after);
        if ours && stale {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => removed += 1,
                Err(e) => {
                    tracing::warn!(file = %entry.path().display(), error = %e, "cannot remove a stale embedding cache file")
                }
            }
        }
    }
    if removed > 0 {
        tracing::info!(dir = %dir.display(), removed, "removed embedding cache files unused for {} days", stale_after.as_secs() / 86_400);
    }
    removed
}

/// The file of `key` in `dir`.
pub fn file_path(dir: &Path, key: &str) -> PathBuf {
    dir.join(format!("minilm-{key}.safetensors"))
}

/// The embedding of each of `texts`, in order, read from the cache in `dir` where it has them
/// and computed by `encoder` where not (then the file is written with them); with no `dir`,
/// all computed and no report.
///
/// A cache problem is never an error (see the module doc): it is logged, reported in
/// [`CacheReport::problem`], and the embeddings computed.
///
/// Errors: [`Error::Embedding`] or [`Error::InvalidRequest`] when the model cannot embed a text.
pub fn embed_all(
    encoder: &Encoder,
    texts: &[&str],
    dir: Option<&Path>,
) -> Result<(Vec<Vec<f32>>, Option<CacheReport>), Error> {
    let Some(dir) = dir else {
        let vectors = texts
            .iter()
            .map(|t| encoder.embed(t))
            .collect::<Result<_, _>>()?;
        return Ok((vectors, None));
    };
    let (key, dim) = key(encoder)?;
    let path = file_path(dir, &key);
    let mut report = CacheReport {
        path: path.clone(),
        hits: 0,
        misses: 0,
        key: key.clone(),
        written: false,
        head_hit: false,
        problem: None,
    };
    let stored = match read(&path, &key, dim) {
        Ok(entries) => {
            mark_used(&path);
            entries
        }
        Err(problem) => {
            tracing::warn!(
                file = %path.display(),
                %problem,
                "embedding cache file unusable: embedding every example again and overwriting it"
            );
            report.problem = Some(format!("{} {problem}", path.display()));
            HashMap::new()
        }
    };
    let mut fresh: HashMap<[u8; 32], Vec<f32>> = HashMap::new();
    let mut hashes = Vec::with_capacity(texts.len());
    let mut vectors = Vec::with_capacity(texts.len());
    for text in texts {
        let hash: [u8; 32] = Sha256::digest(text.as_bytes()).into();
        let vector = match stored.get(&hash) {
            Some(v) => {
                report.hits += 1;
                v.clone()
            }
            None => {
                report.misses += 1;
                match fresh.get(&hash) {
                    Some(v) => v.clone(),
                    None => {
                        let v = encoder.embed(text)?;
                        fresh.insert(hash, v.clone());
                        v
                    }
                }
            }
        };
        hashes.push(hash);
        vectors.push(vector);
    }
    if report.misses > 0 || report.problem.is_some() {
        // The current examples first, then what the file held for other texts (in hash order,
        // so two processes with the same inputs write the same bytes), up to MAX_ENTRIES.
        let mut seen = std::collections::HashSet::new();
        let mut entries: Vec<([u8; 32], &[f32])> = Vec::new();
        for (h, v) in hashes.iter().zip(&vectors) {
            if seen.insert(*h) {
                entries.push((*h, v));
            }
        }
        let mut older: Vec<(&[u8; 32], &Vec<f32>)> =
            stored.iter().filter(|(h, _)| !seen.contains(*h)).collect();
        older.sort_by_key(|(h, _)| **h);
        let room = MAX_ENTRIES.saturating_sub(entries.len());
        entries.extend(
            older
                .into_iter()
                .take(room)
                .map(|(h, v)| (*h, v.as_slice())),
        );
        match write(dir, &path, &key, dim, encoder.max_tokens(), &entries) {
            Ok(()) => report.written = true,
            Err(problem) => {
                tracing::warn!(
                    dir = %dir.display(),
                    %problem,
                    "cannot write the embedding cache, running without it: set decision.embedding.cache_dir to a writable directory, or decision.embedding.cache = false"
                );
                let problem = format!("cannot write {}: {problem}", path.display());
                report.problem = Some(match report.problem.take() {
                    Some(before) => format!("{before}; {problem}"),
                    None => problem,
                });
            }
        }
    }
    Ok((vectors, Some(report)))
}

/// The bytes of the cache file at `path`; `None` when there is no file, or why it cannot be
/// read (a message that completes "the cache file …").
fn read_bytes(path: &Path) -> Result<Option<Vec<u8>>, String> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot be read: {e}")),
    }
}

/// `bytes` as a safetensors file and its `__metadata__` map (empty when it has none), or why
/// it is not a complete one.
fn parse(bytes: &[u8]) -> Result<(SafeTensors<'_>, HashMap<String, String>), String> {
    let incomplete = |e: safetensors::SafeTensorError| {
        format!("is not a complete safetensors file ({e}): truncated or corrupt")
    };
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(incomplete)?;
    let tensors = SafeTensors::deserialize(bytes).map_err(incomplete)?;
    Ok((tensors, header.metadata().clone().unwrap_or_default()))
}

/// The entries of the file at `path` (none when there is no file), or what is wrong with it.
fn read(path: &Path, key: &str, dim: usize) -> Result<HashMap<[u8; 32], Vec<f32>>, String> {
    let Some(bytes) = read_bytes(path)? else {
        return Ok(HashMap::new());
    };
    let (tensors, meta) = parse(&bytes)?;
    let get = |k: &str| meta.get(k).map(String::as_str);
    if get("format") != Some(FORMAT) {
        return Err(format!(
            "is not a {FORMAT} file (its format is {:?}): foreign",
            get("format")
        ));
    }
    if get("key") != Some(key) {
        return Err(format!(
            "holds embeddings of other weights or settings (key {:?}): foreign",
            get("key")
        ));
    }
    let tensor = |name: &str| {
        tensors
            .tensor(name)
            .map_err(|e| format!("has no tensor {name} ({e}): corrupt"))
    };
    let hashes = tensor("text_sha256")?;
    let vectors = tensor("embeddings")?;
    let n = hashes.shape().first().copied().unwrap_or(0);
    if hashes.dtype() != Dtype::U8 || hashes.shape() != [n, 32] {
        return Err(format!(
            "has text_sha256 of {:?} {:?}, not u8 [n, 32]: corrupt",
            hashes.dtype(),
            hashes.shape()
        ));
    }
    if vectors.dtype() != Dtype::F32 || vectors.shape() != [n, dim] {
        return Err(format!(
            "has embeddings of {:?} {:?}, not f32 [{n}, {dim}]: corrupt",
            vectors.dtype(),
            vectors.shape()
        ));
    }
    let sum = hex::encode(
        Sha256::new()
            .chain_update(hashes.data())
            .chain_update(vectors.data())
            .finalize(),
    );
    if get("data_sha256") != Some(sum.as_str()) {
        return Err(format!(
            "does not match its checksum (data_sha256 {:?}, content {sum}): corrupt",
            get("data_sha256")
        ));
    }
    let values: Vec<f32> = vectors
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    if values.iter().any(|x| !x.is_finite()) {
        return Err("has an embedding value that is not finite: corrupt".into());
    }
    Ok(hashes
        .data()
        .chunks_exact(32)
        .zip(values.chunks_exact(dim.max(1)))
        .map(|(h, v)| {
            let mut hash = [0u8; 32];
            hash.copy_from_slice(h);
            (hash, v.to_vec())
        })
        .collect())
}

/// Writes `entries` as the file of `key` at `path` in `dir`: a temporary file in `dir`,
/// synced, then renamed over `path`.
fn write(
    dir: &Path,
    path: &Path,
    key: &str,
    dim: usize,
    max_tokens: usize,
    entries: &[([u8; 32], &[f32])],
) -> Result<(), String> {
    let n = entries.len();
    let mut hashes = Vec::with_capacity(n * 32);
    let mut vectors = Vec::with_capacity(n * dim * 4);
    for (h, v) in entries {
        if v.len() != dim {
            return Err(format!("an embedding has {} values, not {dim}", v.len()));
        }
        hashes.extend_from_slice(h);
        vectors.extend(v.iter().flat_map(|x| x.to_le_bytes()));
    }
    let sum = hex::encode(
        Sha256::new()
            .chain_update(&hashes)
            .chain_update(&vectors)
            .finalize(),
    );
    let meta = HashMap::from([
        ("format".to_string(), FORMAT.to_string()),
        ("key".to_string(), key.to_string()),
        ("data_sha256".to_string(), sum),
        ("model".to_string(), "all-MiniLM-L6-v2".to_string()),
        ("pooling".to_string(), pooling(max_tokens)),
        (
            "written_by".to_string(),
            format!("baton-decision {}", env!("CARGO_PKG_VERSION")),
        ),
    ]);
    write_file(
        dir,
        path,
        meta,
        [
            ("embeddings", Dtype::F32, vec![n, dim], &vectors[..]),
            ("text_sha256", Dtype::U8, vec![n, 32], &hashes[..]),
        ],
    )
}

/// Serialises `tensors` (name, dtype, shape, little-endian bytes) with `meta` and puts the file
/// at `path`: a temporary file in `dir`, synced, then renamed over `path`.
fn write_file<const N: usize>(
    dir: &Path,
    path: &Path,
    meta: HashMap<String, String>,
    tensors: [(&str, Dtype, Vec<usize>, &[u8]); N],
) -> Result<(), String> {
    let views = tensors
        .into_iter()
        .map(|(name, dtype, shape, data)| {
            TensorView::new(dtype, shape, data)
                .map(|v| (name, v))
                .map_err(|e| e.to_string())
        })
        .collect::<Result<Vec<_>, _>>()?;
    let bytes = safetensors::serialize(views, Some(meta)).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".minilm-")
        .suffix(".partial")
        .tempfile_in(dir)
        .map_err(|e| format!("cannot create a file in {}: {e}", dir.display()))?;
    tmp.write_all(&bytes)
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(|e| format!("cannot write {}: {e}", tmp.path().display()))?;
    tmp.persist(path)
        .map_err(|e| format!("cannot rename the new file to {}: {e}", path.display()))?;
    Ok(())
}

// ---- the trained linear head ----

/// The head's file of `key` in `dir` (beside the embeddings).
pub fn head_path(dir: &Path, key: &str) -> PathBuf {
    dir.join(format!("head-{key}.safetensors"))
}

/// The key of a linear head trained on examples whose embeddings have key `embeddings_key`:
/// sha256 (64 hex digits) over it, each example's text and role in order, and the exact bits
/// of `config`'s training settings (`linear_c`, `linear_max_iterations`, `lexical_weight`,
/// `lexical_min_count`). Training is deterministic:
/// the same inputs give the same weights, bit for bit, so a cached head is the head training
/// would give.
pub fn head_key(
    embeddings_key: &str,
    examples: &[(&str, &str)],
    config: &super::EmbeddingConfig,
) -> String {
    let mut all = Sha256::new();
    all.update(FORMAT.as_bytes());
    all.update(b"\0linear head with words, L-BFGS\0");
    all.update(embeddings_key.as_bytes());
    all.update(config.linear_c.to_bits().to_le_bytes());
    all.update((config.linear_max_iterations as u64).to_le_bytes());
    all.update(config.lexical_weight.to_bits().to_le_bytes());
    all.update((config.lexical_min_count as u64).to_le_bytes());
    for (text, role) in examples {
        all.update(Sha256::digest(text.as_bytes()));
        all.update(Sha256::digest(role.as_bytes()));
    }
    hex::encode(all.finalize())
}

/// A trained head's `roles × dim` weights (row-major) and its one bias per role.
pub type HeadParts = (Vec<f32>, Vec<f32>);

/// The head stored at `path` under `key` for `roles` (the logits' order) and rows of `dim`
/// weights: `Ok(None)` when there is no file, `Err` saying what is wrong with one that is there
/// (truncated, corrupt, foreign, other roles, wrong shapes).
pub fn read_head(
    path: &Path,
    key: &str,
    roles: &[String],
    dim: usize,
) -> Result<Option<HeadParts>, String> {
    let Some(bytes) = read_bytes(path)? else {
        return Ok(None);
    };
    let (tensors, meta) = parse(&bytes)?;
    let get = |k: &str| meta.get(k).map(String::as_str);
    if get("format") != Some(FORMAT) || get("key") != Some(key) {
        return Err(format!(
            "is not this head's file (format {:?}, key {:?}): foreign",
            get("format"),
            get("key")
        ));
    }
    let stored: Vec<&str> = get("roles").unwrap_or_default().split('\n').collect();
    if stored != roles {
        return Err(format!(
            "holds the roles {stored:?}, not the examples' {roles:?}: foreign"
        ));
    }
    let r = roles.len();
    let tensor = |name: &str, len: usize| {
        let t = tensors
            .tensor(name)
            .map_err(|e| format!("has no tensor {name} ({e}): corrupt"))?;
        if t.dtype() != Dtype::F32 || t.shape().iter().product::<usize>() != len {
            return Err(format!(
                "has {name} of {:?} {:?}: corrupt",
                t.dtype(),
                t.shape()
            ));
        }
        Ok(t.data())
    };
    let (weights, bias) = (tensor("weight", r * dim)?, tensor("bias", r)?);
    let sum = hex::encode(
        Sha256::new()
            .chain_update(weights)
            .chain_update(bias)
            .finalize(),
    );
    if get("data_sha256") != Some(sum.as_str()) {
        return Err("does not match its checksum: corrupt".into());
    }
    let floats = |b: &[u8]| -> Vec<f32> {
        b.chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    };
    let (weights, bias) = (floats(weights), floats(bias));
    if weights.iter().chain(&bias).any(|x| !x.is_finite()) {
        return Err("has a weight that is not finite: corrupt".into());
    }
    Ok(Some((weights, bias)))
}

/// Writes a trained head as the file of `key` at `path` in `dir` (atomically, as the
/// embeddings).
pub fn write_head(
    dir: &Path,
    path: &Path,
    key: &str,
    (roles, weights, bias): (&[String], &[f32], &[f32]),
) -> Result<(), String> {
    let w: Vec<u8> = weights.iter().flat_map(|x| x.to_le_bytes()).collect();
    let b: Vec<u8> = bias.iter().flat_map(|x| x.to_le_bytes()).collect();
    let sum = hex::encode(Sha256::new().chain_update(&w).chain_update(&b).finalize());
    let dim = weights.len() / roles.len().max(1);
    let meta = HashMap::from([
        ("format".to_string(), FORMAT.to_string()),
        ("key".to_string(), key.to_string()),
        ("data_sha256".to_string(), sum),
        ("roles".to_string(), roles.join("\n")),
    ]);
    write_file(
        dir,
        path,
        meta,
        [
            ("bias", Dtype::F32, vec![roles.len()], &b[..]),
            ("weight", Dtype::F32, vec![roles.len(), dim], &w[..]),
        ],
    )
}
