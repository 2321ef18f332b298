//! The forward pass of all-MiniLM-L6-v2 (a 6-layer BERT: hidden size 384, 12 heads,
//! intermediate size 1536) for one sequence at a time, on the CPU.
//!
//! It computes the function of candle-transformers' `BertModel` (post-layer-norm BERT, exact
//! erf-based GELU) over the same safetensors, arranged for what a request costs here, a batch
//! of one short sequence (8–48 tokens): at that size a pass is bound by streaming ~42 MB of
//! layer weights through the cache and by how well the matrix kernels use the vector units,
//! not by arithmetic count.
//!
//! - Every linear layer's weights are packed once, at load, into the layout of the matrix
//!   kernel (`rten-gemm`'s [`PackedBMatrix`]), so a pass never re-packs or transposes them;
//!   the kernel is picked at run time for the CPU (AVX-512, AVX2+FMA, NEON or generic).
//! - The query, key and value projections are one product against their concatenated
//!   weights, with the `1/√d` attention scale folded into the query weights.
//! - Layer norm, softmax and GELU are `rten-vecmath`'s vectorised kernels.
//! - A pass that starts while no other pass is running ("alone") runs on a pool with one
//!   thread per core, and each product is split across the cores by columns; a pass that
//!   starts while another runs goes to one of the encoder's single-threaded pools ("lanes",
//!   one per core, round robin), where nothing is split. Alone, a request gets every core
//!   (three alternating runs each: the forward bench's held-out texts went from p50 2.0–2.3 to
//!   1.5–1.6 ms and p99 3.9–4.2 to 2.7–2.9 ms; `eval-routing` on heldout5/6 from p50 2.7–3.4
//!   to 2.4–2.7 ms and p99 4.2–5.3 to 3.3–4.6 ms); under concurrent requests no pass pays
//!   for splitting and synchronising, and every core still works (the forward bench's four
//!   concurrent callers: 721–765 passes/s, against 715–717 with every pass on a lane). The
//!   columns of a product are computed the same way either way (the kernel splits output
//!   columns, never the depth), so where a pass ran does not change its result.
//! - The attention mask is applied only when some token is padding (a request encoded alone
//!   has none), and the type-0 token-type embedding is added to the position embeddings once.
//!
//! [`Precision::Int8`] quantizes the linear layers as ONNX Runtime's dynamic quantization does
//! for transformer encoders (ONNX `DynamicQuantizeLinear` + `MatMulInteger`): weights to `i8`,
//! symmetric, one scale per output feature, at load; each activation row to `u8` with its own
//! scale and zero point, per pass; the products accumulate in `i32` (VNNI's `vpdpbusd` where
//! the CPU has it) and are scaled back to f32. A quarter of the weight bytes and four times
//! the products per instruction; the embedding moves slightly (see the encoder tests for the
//! bound), and a CPU whose int8 kernel could saturate (x86 without VNNI) gets 7-bit weights, as
//! ONNX Runtime's `reduce_range` does.

use super::Precision;
use rten_gemm::{
    BiasVector, GemmExecutor, GemmInputA, GemmInputB, GemmOptions, GemmUninitOptions, PackedBMatrix,
};
use rten_simd::ops::{BitOps, FloatOps, NarrowSaturate, NumOps, ToFloat};
use rten_simd::{Isa, SimdOp, SimdUnaryOp, SliceWriter};
use rten_tensor::NdTensorView;
use rten_vecmath::{
    ExtendInit, Gelu, MinMax, Normalize, NormalizeOptions, Softmax, Sum, SumSquareSub,
};
use safetensors::SafeTensors;
use serde::Deserialize;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The parts of the model's `config.json` this encoder reads (other keys are ignored).
#[derive(Debug, Clone, Deserialize)]
pub struct BertConfig {
    /// Word pieces in the vocabulary (rows of the word embeddings).
    pub vocab_size: usize,
    /// Width of the hidden states (384 for MiniLM-L6).
    pub hidden_size: usize,
    /// Transformer layers.
    pub num_hidden_layers: usize,
    /// Attention heads per layer; `hidden_size` must be a multiple of it.
    pub num_attention_heads: usize,
    /// Width of the feed-forward layer.
    pub intermediate_size: usize,
    /// Activation of the feed-forward layer: `gelu` (exact, erf-based) is the one supported.
    pub hidden_act: String,
    /// Longest input, in tokens (rows of the position embeddings).
    pub max_position_embeddings: usize,
    /// Token types (rows of the token-type embeddings).
    pub type_vocab_size: usize,
    /// Epsilon of every layer norm.
    pub layer_norm_eps: f64,
}

/// What went wrong loading the weights: the tensor and the problem.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file is not a safetensors file.
    #[error("not a safetensors file: {0}")]
    Format(String),
    /// A tensor the model needs is missing, not f32, or of another shape.
    #[error("tensor {name}: {problem}")]
    Tensor {
        /// Its name in the file.
        name: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The encoder's threads could not be started.
    #[error("cannot start the encoder's threads: {0}")]
    Threads(String),
    /// `config.json` describes a model this encoder does not compute.
    #[error("unsupported config: {0}")]
    Config(String),
}

/// The weights of one linear layer, packed for the kernel.
enum Packed {
    F32(PackedBMatrix<f32>),
    /// `i8` weights, one scale per output feature (`w ≈ q · scale`) and the sum of each
    /// output feature's `q` (for the activations' zero points).
    Int8 {
        weights: PackedBMatrix<i8>,
        scales: Vec<f32>,
        sums: Vec<i32>,
    },
}

/// `y = x · Wᵀ + b` with `W` of shape `(outputs, inputs)`.
struct Linear {
    packed: Packed,
    bias: Vec<f32>,
    inputs: usize,
    outputs: usize,
}

/// The matrix kernels for this CPU. An executor is neither `Send` nor `Sync`, so each pass
/// makes its own (feature detection is cached; a pass costs two small allocations); weights
/// packed by one executor are read by any other of the same kind.
struct Kernels {
    f32: GemmExecutor<f32, f32, f32>,
    int8: GemmExecutor<u8, i8, i32>,
}

impl Kernels {
    fn new() -> Kernels {
        Kernels {
            f32: GemmExecutor::default(),
            int8: GemmExecutor::default(),
        }
    }
}

impl Linear {
    /// Packs `w` (`outputs × inputs`, row-major, as the checkpoint stores it) and `bias`.
    fn new(
        kernels: &Kernels,
        precision: Precision,
        w: &[f32],
        bias: Vec<f32>,
        inputs: usize,
        outputs: usize,
    ) -> Linear {
        debug_assert_eq!(w.len(), inputs * outputs);
        let packed = match precision {
            Precision::F32 => {
                let w = NdTensorView::from_data([outputs, inputs], w);
                Packed::F32(kernels.f32.prepack_b(w.transposed()))
            }
            Precision::Int8 => {
                // x86 without VNNI multiplies u8 by i8 in pairs summed into a saturating i16:
                // 7-bit weights keep 2·255·63 below i16::MAX.
                let limit = if kernels.int8.may_saturate() {
                    63.0
                } else {
                    127.0
                };
                let mut q = Vec::with_capacity(w.len());
                let mut scales = Vec::with_capacity(outputs);
                let mut sums = Vec::with_capacity(outputs);
                for row in w.chunks_exact(inputs) {
                    let max = row.iter().fold(0f32, |m, v| m.max(v.abs()));
                    let scale = if max > 0.0 { max / limit } else { 1.0 };
                    let start = q.len();
                    q.extend(row.iter().map(|v| (v / scale).round() as i8));
                    sums.push(q[start..].iter().map(|&v| i32::from(v)).sum());
                    scales.push(scale);
                }
                let q = NdTensorView::from_data([outputs, inputs], q.as_slice());
                Packed::Int8 {
                    weights: kernels.int8.prepack_b(q.transposed()),
                    scales,
                    sums,
                }
            }
        };
        Linear {
            packed,
            bias,
            inputs,
            outputs,
        }
    }

    /// `out = x · Wᵀ + b` for `x` of `rows × inputs` (row-major); `out` is resized to
    /// `rows × outputs`.
    fn forward(
        &self,
        kernels: &Kernels,
        x: &[f32],
        rows: usize,
        out: &mut Vec<f32>,
        s: &mut Scratch,
    ) {
        debug_assert_eq!(x.len(), rows * self.inputs);
        let len = rows * self.outputs;
        let a = NdTensorView::from_data([rows, self.inputs], x);
        match &self.packed {
            Packed::F32(w) => {
                // The product overwrites the output: it is not zeroed first.
                out.clear();
                out.reserve(len);
                out.extend_init(|spare| {
                    kernels
                        .f32
                        .gemm_uninit(
                            &mut spare[..len],
                            GemmInputA::Unpacked(a),
                            GemmInputB::Packed(w),
                            GemmUninitOptions {
                                bias: Some(BiasVector::Row(&self.bias)),
                                ..Default::default()
                            },
                        )
                        .expect("shapes are checked at load")
                });
            }
            Packed::Int8 {
                weights,
                scales,
                sums,
            } => {
                // DynamicQuantizeLinear per row: the range of the row, widened to hold 0, onto
                // 0..=255.
                s.quantized.clear();
                s.zero_points.clear();
                s.row_scales.clear();
                for row in x.chunks_exact(self.inputs) {
                    let (min, max) = MinMax::new(row).dispatch();
                    let (min, max) = (min.min(0.0), max.max(0.0));
                    let scale = if max > min { (max - min) / 255.0 } else { 1.0 };
                    let zero = (-min / scale).round().clamp(0.0, 255.0) as u8;
                    s.quantized.reserve(self.inputs);
                    s.quantized.extend_init(|spare| {
                        QuantizeRow {
                            src: row,
                            dest: &mut spare[..row.len()],
                            inv_scale: 1.0 / scale,
                            zero_point: zero,
                        }
                        .dispatch()
                    });
                    s.zero_points.push(zero);
                    s.row_scales.push(scale);
                }
                let qa = NdTensorView::from_data([rows, self.inputs], s.quantized.as_slice());
                s.accumulated.clear();
                s.accumulated.reserve(len);
                s.accumulated.extend_init(|spare| {
                    kernels
                        .int8
                        .gemm_uninit(
                            &mut spare[..len],
                            GemmInputA::Unpacked(qa),
                            GemmInputB::Packed(weights),
                            GemmUninitOptions::default(),
                        )
                        .expect("shapes are checked at load")
                });
                // Every element is written below; only growth is zeroed (a pass reuses its
                // buffers across layers of the same shapes).
                out.resize(len, 0.0);
                // The products are of the raw u8 values: Σ (a − z)·q = Σ a·q − z·Σ q. (The
                // kernel's own per-row zero points are not used: with rten-gemm 0.27 the rows
                // past its first row tile come out wrong when the zero points differ.)
                Dequantize {
                    accumulated: &s.accumulated,
                    out,
                    zero_points: &s.zero_points,
                    row_scales: &s.row_scales,
                    scales,
                    sums,
                    bias: &self.bias,
                }
                .dispatch();
            }
        }
    }
}

/// `out[i, j] = (accumulated[i, j] − zero_points[i] · sums[j]) · row_scales[i] · scales[j] +
/// bias[j]`: an int8 product back to f32 (ONNX `MatMulInteger`'s zero point, then the two
/// scales and the bias), in the vector width the CPU has. `accumulated` and `out` are
/// row-major, one row per entry of `zero_points` and `row_scales`, as wide as `scales`,
/// `sums` and `bias`.
struct Dequantize<'a> {
    accumulated: &'a [i32],
    out: &'a mut [f32],
    zero_points: &'a [u8],
    row_scales: &'a [f32],
    scales: &'a [f32],
    sums: &'a [i32],
    bias: &'a [f32],
}

impl SimdOp for Dequantize<'_> {
    type Output = ();

    #[inline(always)]
    fn eval<I: Isa>(self, isa: I) -> Self::Output {
        let n = self.bias.len();
        let (scales, sums, bias) = (&self.scales[..n], &self.sums[..n], &self.bias[..n]);
        let (f32s, i32s) = (isa.f32(), isa.i32());
        let width = f32s.len();
        for (((acc, out), &zero_point), &row_scale) in self
            .accumulated
            .chunks_exact(n)
            .zip(self.out.chunks_exact_mut(n))
            .zip(self.zero_points)
            .zip(self.row_scales)
        {
            let zero_point = i32::from(zero_point);
            let zero = i32s.splat(zero_point);
            let row_scale_v = f32s.splat(row_scale);
            let mut j = 0;
            while j + width <= n {
                let centred = i32s.sub(i32s.load(&acc[j..]), i32s.mul(zero, i32s.load(&sums[j..])));
                let scale = f32s.mul(row_scale_v, f32s.load(&scales[j..]));
                let y = f32s.mul_add(i32s.to_float(centred), scale, f32s.load(&bias[j..]));
                f32s.store(y, &mut out[j..]);
                j += width;
            }
            for j in j..n {
                out[j] = (acc[j] - zero_point * sums[j]) as f32 * (row_scale * scales[j]) + bias[j];
            }
        }
    }
}

/// `dest[i] = saturate(round_ties_even(src[i] · inv_scale) + zero_point)`: one activation row
/// onto `u8` (ONNX `QuantizeLinear`), in the vector width the CPU has.
///
/// The same function as `rten_vecmath::Quantize`, written without closures: in rten-vecmath
/// 0.27 that op maps over an array of vectors with a closure, which the compiler outlines
/// without the AVX-512 target features, so every vector intrinsic became a function call —
/// a fifth of a pass's time in the forward bench's profile (`perf record`), for the cheapest
/// step of a pass.
struct QuantizeRow<'s, 'd> {
    src: &'s [f32],
    dest: &'d mut [MaybeUninit<u8>],
    inv_scale: f32,
    zero_point: u8,
}

impl<'d> SimdOp for QuantizeRow<'_, 'd> {
    type Output = &'d mut [u8];

    #[inline(always)]
    fn eval<I: Isa>(self, isa: I) -> Self::Output {
        debug_assert_eq!(self.src.len(), self.dest.len());
        let (f32s, i32s) = (isa.f32(), isa.i32());
        let zero = i32s.splat(i32::from(self.zero_point));
        let inv_scale = f32s.splat(self.inv_scale);
        let width = f32s.len();
        let mut chunks = self.src.chunks_exact(width * 4);
        let mut writer = SliceWriter::new(self.dest);
        // Four f32 vectors narrow to one u8 vector: i32 → i16 → u8, saturating.
        for chunk in chunks.by_ref() {
            let a = i32s.add(
                f32s.to_int_round(f32s.mul(f32s.load(chunk), inv_scale)),
                zero,
            );
            let b = i32s.add(
                f32s.to_int_round(f32s.mul(f32s.load(&chunk[width..]), inv_scale)),
                zero,
            );
            let c = i32s.add(
                f32s.to_int_round(f32s.mul(f32s.load(&chunk[2 * width..]), inv_scale)),
                zero,
            );
            let d = i32s.add(
                f32s.to_int_round(f32s.mul(f32s.load(&chunk[3 * width..]), inv_scale)),
                zero,
            );
            let low = i32s.narrow_saturate(a, b);
            let high = i32s.narrow_saturate(c, d);
            writer.write_vec(isa.u8(), isa.i16().narrow_saturate(low, high));
        }
        for &x in chunks.remainder() {
            let y = (x * self.inv_scale).round_ties_even() as i32 + i32::from(self.zero_point);
            writer.write_scalar(y.clamp(0, 255) as u8);
        }
        writer.into_mut_slice()
    }
}

/// Buffers a pass reuses between layers.
#[derive(Default)]
struct Scratch {
    quantized: Vec<u8>,
    zero_points: Vec<u8>,
    row_scales: Vec<f32>,
    accumulated: Vec<i32>,
    scores: Vec<f32>,
    head: Vec<f32>,
}

/// Layer norm's scale and shift.
struct Norm {
    weight: Vec<f32>,
    bias: Vec<f32>,
}

impl Norm {
    /// Normalises every `weight.len()`-wide row of `x` in place.
    fn apply(&self, x: &mut [f32], eps: f32) {
        let h = self.weight.len();
        for row in x.chunks_exact_mut(h) {
            let mean = Sum::new(row).dispatch() / h as f32;
            let var = SumSquareSub::new(row, mean).dispatch() / h as f32;
            Normalize::new_mut(
                row,
                NormalizeOptions {
                    pre_scale_bias: mean,
                    scale: 1.0 / (var + eps).sqrt(),
                    element_scale: Some(&self.weight),
                    element_bias: Some(&self.bias),
                    ..Default::default()
                },
            )
            .dispatch();
        }
    }
}

struct Layer {
    qkv: Linear,
    attention_out: Linear,
    norm1: Norm,
    up: Linear,
    down: Linear,
    norm2: Norm,
}

/// The encoder: weights loaded and packed once, read-only afterwards (shared across threads;
/// each pass allocates its own buffers).
pub struct MiniLm {
    /// One single-threaded pool per core, for a pass that starts while another runs: the
    /// matrix kernels see one thread and do not split a product.
    lanes: Vec<rayon::ThreadPool>,
    /// The lane the next such pass goes to (round robin).
    next_lane: AtomicUsize,
    /// One pool with a thread per core, for a pass that starts alone: the kernels split each
    /// product across its threads. `None` on a one-core machine.
    wide: Option<rayon::ThreadPool>,
    /// Passes (with the work around them, see [`MiniLm::on_encoder`]) running now.
    running: AtomicUsize,
    hidden: usize,
    /// Word embeddings, `vocab × hidden`.
    word: Vec<f32>,
    /// Position embeddings plus the type-0 embedding, `max_positions × hidden`.
    position: Vec<f32>,
    embedding_norm: Norm,
    layers: Vec<Layer>,
    heads: usize,
    head_dim: usize,
    eps: f32,
    max_positions: usize,
    precision: Precision,
}

/// Reads the tensors of a safetensors file by name, with or without a `bert.` prefix.
struct Tensors<'a> {
    file: SafeTensors<'a>,
    prefix: &'static str,
}

impl Tensors<'_> {
    /// The f32 tensor `name`, checked to have `shape`.
    fn get(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, LoadError> {
        let full = format!("{}{name}", self.prefix);
        let bad = |problem: String| LoadError::Tensor {
            name: full.clone(),
            problem,
        };
        let view = self
            .file
            .tensor(&full)
            .map_err(|e| bad(format!("not found ({e})")))?;
        if view.dtype() != safetensors::Dtype::F32 {
            return Err(bad(format!("is {:?}, expected F32", view.dtype())));
        }
        if view.shape() != shape {
            return Err(bad(format!(
                "has shape {:?}, expected {shape:?}",
                view.shape()
            )));
        }
        Ok(view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    }

    fn linear(
        &self,
        kernels: &Kernels,
        precision: Precision,
        name: &str,
        inputs: usize,
        outputs: usize,
    ) -> Result<Linear, LoadError> {
        let w = self.get(&format!("{name}.weight"), &[outputs, inputs])?;
        let b = self.get(&format!("{name}.bias"), &[outputs])?;
        Ok(Linear::new(kernels, precision, &w, b, inputs, outputs))
    }

    fn norm(&self, name: &str, size: usize) -> Result<Norm, LoadError> {
        Ok(Norm {
            weight: self.get(&format!("{name}.weight"), &[size])?,
            bias: self.get(&format!("{name}.bias"), &[size])?,
        })
    }
}

impl MiniLm {
    /// Loads and packs the weights in `bytes` (a safetensors file with the tensor names of the
    /// sentence-transformers checkpoint, with or without a `bert.` prefix) for `config`.
    ///
    /// Errors: [`LoadError`] naming a missing tensor, one of another dtype or shape, or a
    /// `config` this encoder does not compute (another activation, heads not dividing the
    /// hidden size).
    pub fn load(
        bytes: &[u8],
        config: &BertConfig,
        precision: Precision,
    ) -> Result<MiniLm, LoadError> {
        if config.hidden_act != "gelu" {
            return Err(LoadError::Config(format!(
                "hidden_act {:?}: only \"gelu\" (erf-based) is supported",
                config.hidden_act
            )));
        }
        let h = config.hidden_size;
        let heads = config.num_attention_heads;
        if heads == 0 || !h.is_multiple_of(heads) {
            return Err(LoadError::Config(format!(
                "hidden_size {h} is not a multiple of num_attention_heads {heads}"
            )));
        }
        if config.type_vocab_size == 0 {
            return Err(LoadError::Config(
                "type_vocab_size is 0: a sequence needs the type-0 embedding".into(),
            ));
        }
        let head_dim = h / heads;
        let file = SafeTensors::deserialize(bytes).map_err(|e| LoadError::Format(e.to_string()))?;
        let prefix = if file
            .tensor("bert.embeddings.word_embeddings.weight")
            .is_ok()
        {
            "bert."
        } else {
            ""
        };
        let t = Tensors { file, prefix };
        let kernels = Kernels::new();
        let word = t.get("embeddings.word_embeddings.weight", &[config.vocab_size, h])?;
        let mut position = t.get(
            "embeddings.position_embeddings.weight",
            &[config.max_position_embeddings, h],
        )?;
        let types = t.get(
            "embeddings.token_type_embeddings.weight",
            &[config.type_vocab_size, h],
        )?;
        for row in position.chunks_exact_mut(h) {
            row.iter_mut().zip(&types[..h]).for_each(|(p, t)| *p += t);
        }
        let embedding_norm = t.norm("embeddings.LayerNorm", h)?;

        let scale = 1.0 / (head_dim as f32).sqrt();
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let at = |s: &str| format!("encoder.layer.{i}.{s}");
            let part = |s: &str| -> Result<(Vec<f32>, Vec<f32>), LoadError> {
                Ok((
                    t.get(&at(&format!("attention.self.{s}.weight")), &[h, h])?,
                    t.get(&at(&format!("attention.self.{s}.bias")), &[h])?,
                ))
            };
            let (mut qkv_w, mut qkv_b) = part("query")?;
            qkv_w.iter_mut().for_each(|w| *w *= scale);
            qkv_b.iter_mut().for_each(|b| *b *= scale);
            for name in ["key", "value"] {
                let (w, b) = part(name)?;
                qkv_w.extend(w);
                qkv_b.extend(b);
            }
            layers.push(Layer {
                qkv: Linear::new(&kernels, precision, &qkv_w, qkv_b, h, 3 * h),
                attention_out: t.linear(
                    &kernels,
                    precision,
                    &at("attention.output.dense"),
                    h,
                    h,
                )?,
                norm1: t.norm(&at("attention.output.LayerNorm"), h)?,
                up: t.linear(
                    &kernels,
                    precision,
                    &at("intermediate.dense"),
                    h,
                    config.intermediate_size,
                )?,
                down: t.linear(
                    &kernels,
                    precision,
                    &at("output.dense"),
                    config.intermediate_size,
                    h,
                )?,
                norm2: t.norm(&at("output.LayerNorm"), h)?,
            });
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let lanes = (0..cores)
            .map(|i| {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(1)
                    .thread_name(move |_| format!("baton-encoder-{i}"))
                    .build()
                    .map_err(|e| LoadError::Threads(e.to_string()))
            })
            .collect::<Result<_, _>>()?;
        let wide = if cores > 1 {
            Some(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(cores)
                    .thread_name(|i| format!("baton-encoder-wide-{i}"))
                    .build()
                    .map_err(|e| LoadError::Threads(e.to_string()))?,
            )
        } else {
            None
        };
        Ok(MiniLm {
            lanes,
            next_lane: AtomicUsize::new(0),
            wide,
            running: AtomicUsize::new(0),
            hidden: h,
            word,
            position,
            embedding_norm,
            layers,
            heads,
            head_dim,
            eps: config.layer_norm_eps as f32,
            max_positions: config.max_position_embeddings,
            precision,
        })
    }

    /// How the linear layers compute.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Width of the hidden states (and of the sentence embedding).
    pub fn hidden_size(&self) -> usize {
        self.hidden
    }

    /// The last hidden state of one sequence, `tokens × hidden` row-major: `ids` (word-piece
    /// ids, `[CLS] … [SEP]`) under `mask` (1 attended, 0 padding; same length).
    ///
    /// Errors: a message when `ids` and `mask` differ in length, are empty or longer than the
    /// position embeddings, or an id is outside the vocabulary.
    pub fn forward(&self, ids: &[u32], mask: &[u32]) -> Result<Vec<f32>, String> {
        self.on_encoder(|| self.forward_here(ids, mask))
    }

    /// Runs `f` (a pass and the work around it) on the encoder's threads and waits for it:
    /// on the pool of one thread per core when no other call is running, so its products are
    /// split across the cores; else on the next single-threaded lane, so concurrent calls each
    /// keep one core and split nothing.
    ///
    /// Inline when the calling thread already belongs to the encoder's pools (a pass inside
    /// scoring), or to a one-thread pool of its own (a process whose global pool has one
    /// thread, `RAYON_NUM_THREADS=1`).
    pub fn on_encoder<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        let inside = self
            .wide
            .iter()
            .chain(&self.lanes)
            .any(|pool| pool.current_thread_index().is_some());
        if inside || rayon::current_num_threads() == 1 {
            return f();
        }
        /// Counts a call as running until it returns or unwinds.
        struct Running<'a>(&'a AtomicUsize);
        impl Drop for Running<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::AcqRel);
            }
        }
        let alone = self.running.fetch_add(1, Ordering::AcqRel) == 0;
        let _running = Running(&self.running);
        match &self.wide {
            Some(wide) if alone => wide.install(f),
            _ => {
                let lane = self.next_lane.fetch_add(1, Ordering::Relaxed) % self.lanes.len();
                self.lanes[lane].install(f)
            }
        }
    }

    /// [`MiniLm::forward`] on the calling thread.
    fn forward_here(&self, ids: &[u32], mask: &[u32]) -> Result<Vec<f32>, String> {
        let (n, h) = (ids.len(), self.hidden);
        if n == 0 || n != mask.len() || n > self.max_positions {
            return Err(format!(
                "{n} ids and {} mask values: need 1 to {} of each",
                mask.len(),
                self.max_positions
            ));
        }
        let mut x = Vec::with_capacity(n * h);
        for (i, &id) in ids.iter().enumerate() {
            let id = id as usize;
            let Some(word) = self.word.get(id * h..(id + 1) * h) else {
                return Err(format!("token id {id} is outside the vocabulary"));
            };
            let position = &self.position[i * h..(i + 1) * h];
            x.extend(word.iter().zip(position).map(|(w, p)| w + p));
        }
        self.embedding_norm.apply(&mut x, self.eps);
        // Additive bias over the keys: only when some token is padding.
        let key_bias: Option<Vec<f32>> = mask.contains(&0).then(|| {
            mask.iter()
                .map(|&m| if m == 0 { f32::MIN } else { 0.0 })
                .collect()
        });
        let kernels = Kernels::new();
        let mut s = Scratch::default();
        let (mut qkv, mut context, mut up, mut y) =
            (Vec::new(), vec![0f32; n * h], Vec::new(), Vec::new());
        for layer in &self.layers {
            layer.qkv.forward(&kernels, &x, n, &mut qkv, &mut s);
            self.attention(&qkv, n, &kernels, key_bias.as_deref(), &mut context, &mut s);
            layer
                .attention_out
                .forward(&kernels, &context, n, &mut y, &mut s);
            x.iter_mut().zip(&y).for_each(|(x, y)| *x += y);
            layer.norm1.apply(&mut x, self.eps);
            layer.up.forward(&kernels, &x, n, &mut up, &mut s);
            Gelu {}.map_mut(&mut up);
            layer.down.forward(&kernels, &up, n, &mut y, &mut s);
            x.iter_mut().zip(&y).for_each(|(x, y)| *x += y);
            layer.norm2.apply(&mut x, self.eps);
        }
        Ok(x)
    }

    /// Multi-head self-attention over `qkv` (`n × 3·hidden`: queries, already scaled, then
    /// keys, then values), written into `context` (`n × hidden`).
    fn attention(
        &self,
        qkv: &[f32],
        n: usize,
        kernels: &Kernels,
        key_bias: Option<&[f32]>,
        context: &mut [f32],
        s: &mut Scratch,
    ) {
        let (h, d) = (self.hidden, self.head_dim);
        let stride = 3 * h;
        for head in 0..self.heads {
            let at = |offset: usize| &qkv[offset + head * d..];
            // Views into the rows of qkv: (n, d) queries and values, (d, n) keys transposed.
            let q = NdTensorView::from_data_with_strides([n, d], at(0), [stride, 1])
                .expect("in bounds");
            let k_t = NdTensorView::from_data_with_strides([d, n], at(h), [1, stride])
                .expect("in bounds");
            let v = NdTensorView::from_data_with_strides([n, d], at(2 * h), [stride, 1])
                .expect("in bounds");
            // Products with beta 0 overwrite their output: sized, not zeroed, per head.
            s.scores.resize(n * n, 0.0);
            kernels
                .f32
                .gemm(
                    &mut s.scores,
                    GemmInputA::Unpacked(q),
                    GemmInputB::Unpacked(k_t),
                    GemmOptions::default(),
                )
                .expect("shapes agree");
            for row in s.scores.chunks_exact_mut(n) {
                if let Some(bias) = key_bias {
                    row.iter_mut().zip(bias).for_each(|(s, b)| *s += b);
                }
                Softmax::new_mut(row).dispatch();
            }
            s.head.resize(n * d, 0.0);
            let p = NdTensorView::from_data([n, n], s.scores.as_slice());
            kernels
                .f32
                .gemm(
                    &mut s.head,
                    GemmInputA::Unpacked(p),
                    GemmInputB::Unpacked(v),
                    GemmOptions::default(),
                )
                .expect("shapes agree");
            for (out, row) in context.chunks_exact_mut(h).zip(s.head.chunks_exact(d)) {
                out[head * d..(head + 1) * d].copy_from_slice(row);
            }
        }
    }
}
