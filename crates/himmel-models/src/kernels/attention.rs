//! Fused scaled dot-product attention for f32 on the CPU, flash style (Dao et al., 2022): each
//! task takes one head's block of queries through the keys a block at a time, keeping the
//! running maximum and sum of its softmax, so the scores of a query block and key block are the
//! only ones that ever exist (in cache) and no pass over a score matrix goes through memory.
//! Queries, keys and values are read in place from `[B, L, heads, head_dim]` and the output is
//! written in place to `[B, L, heads * head_dim]`: no transposes. bf16 inputs on CPUs with
//! AVX-512 BF16 multiply in bf16 pairs with f32 sums ([`super::bf16_gemm`]); the softmax and
//! its running statistics stay in f32, and the probabilities are rounded to bf16 for the product
//! with the values, as PyTorch's bf16 attention does.

use candle_core::{CpuStorage, DType, Result, Storage, Tensor, bail};
use rayon::prelude::*;

use super::{SendPtr, cpu_slice, elementwise, product};

/// Queries per task: a block of scores (`QUERY_BLOCK x KEY_BLOCK`, 128 KiB) and the running
/// output stay in a core's L2 cache.
const QUERY_BLOCK: usize = 64;

/// Keys per step of a task (a multiple of the bf16 products' panels of 64 keys).
const KEY_BLOCK: usize = 512;

/// Whether [`attention`] can run on these inputs: f32 (or bf16 where the CPU has AVX-512 BF16)
/// on the CPU, no gradients wanted.
pub fn applies(query: &Tensor, key: &Tensor, value: &Tensor) -> bool {
    let dtype = query.dtype();
    let dtype_runs = dtype == DType::F32 || (dtype == DType::BF16 && bf16_runs());
    dtype_runs
        && [query, key, value]
            .iter()
            .all(|t| t.device().is_cpu() && t.dtype() == dtype && !t.track_op())
}

/// Whether this CPU multiplies bf16 pairs ([`super::bf16_gemm`]).
fn bf16_runs() -> bool {
    #[cfg(target_arch = "x86_64")]
    return super::bf16_gemm::is_available();
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// `softmax(q kᵀ / sqrt(head_dim) + key_bias) v` per batch item and head: `query`
/// `[B, L, heads, D]`, `key` and `value` `[B, S, heads, D]`, `key_bias` `[B, S]` (f32, added to
/// every query's score of that key); gives `[B, L, heads * D]`.
pub fn attention(
    query: &Tensor,
    key: &Tensor,
    value: &Tensor,
    key_bias: Option<&Tensor>,
) -> Result<Tensor> {
    let (batch, tokens, heads, head_dim) = query.dims4()?;
    let (key_batch, keys, key_heads, key_dim) = key.dims4()?;
    if (key_batch, key_heads, key_dim) != (batch, heads, head_dim) || key.dims() != value.dims() {
        bail!(
            "attention: query {:?}, key {:?} and value {:?} do not fit together",
            query.dims(),
            key.dims(),
            value.dims()
        );
    }
    if keys == 0 {
        bail!("attention: no keys to attend to");
    }
    let (query, key, value) = (query.contiguous()?, key.contiguous()?, value.contiguous()?);
    let (query_storage, query_layout) = query.storage_and_layout();
    let (key_storage, key_layout) = key.storage_and_layout();
    let (value_storage, value_layout) = value.storage_and_layout();
    // Rows of every operand are whole tokens: `heads * head_dim` values apart.
    let row = heads * head_dim;
    let operands = Operands::new(
        (&query_storage, query_layout.start_offset()),
        (&key_storage, key_layout.start_offset()),
        (&value_storage, value_layout.start_offset()),
        (batch, tokens, keys, heads, head_dim),
    )?;
    let scale = 1.0 / (head_dim as f32).sqrt();
    // Added to the scores before they are scaled.
    let key_bias = match key_bias {
        Some(bias) if bias.dims() == [batch, keys] => Some(
            bias.to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?
                .into_iter()
                .map(|bias| bias / scale)
                .collect::<Vec<_>>(),
        ),
        Some(bias) => bail!(
            "attention: key bias {:?} does not fit {batch} items of {keys} keys",
            bias.dims()
        ),
        None => None,
    };
    let blocks = tokens.div_ceil(QUERY_BLOCK);
    let mut out = vec![0f32; batch * tokens * row];
    let out_ptr = SendPtr(out.as_mut_ptr());
    (0..batch * heads * blocks).into_par_iter().for_each_init(
        || Scratch::new(head_dim),
        |scratch, task| {
            let (item, head, block) = (task / blocks / heads, task / blocks % heads, task % blocks);
            let first = block * QUERY_BLOCK;
            let rows = QUERY_BLOCK.min(tokens - first);
            let queries = (item * tokens + first) * row + head * head_dim;
            let output = &mut scratch.output[..rows * head_dim];
            let (maxima, sums) = scratch.statistics.split_at_mut(QUERY_BLOCK);
            maxima.fill(f32::NEG_INFINITY);
            sums.fill(0.0);
            let queries_shape = (rows, head_dim, row);
            let head_operands = operands.head(item * heads + head);
            head_operands.load_queries(queries_shape, queries, &mut scratch.pairs);
            for start in (0..keys).step_by(KEY_BLOCK) {
                let columns = KEY_BLOCK.min(keys - start);
                let keys_at = (item * keys + start) * row + head * head_dim;
                let scores = &mut scratch.scores[..rows * columns];
                let block = (rows, columns, head_dim, row);
                head_operands.scores(block, queries, (keys_at, start), scores, &scratch.pairs);
                if let Some(bias) = &key_bias {
                    let bias = &bias[item * keys + start..][..columns];
                    for scores in scores.chunks_exact_mut(columns) {
                        for (score, bias) in scores.iter_mut().zip(bias) {
                            *score += bias;
                        }
                    }
                }
                for (i, scores) in scores.chunks_exact_mut(columns).enumerate() {
                    let maximum = elementwise::scale_and_max(scores, scale, maxima[i]);
                    let correction = (maxima[i] - maximum).exp();
                    let sum = elementwise::exp_shifted(scores, maximum);
                    sums[i] = sums[i] * correction + sum;
                    maxima[i] = maximum;
                    if start > 0 {
                        for value in &mut output[i * head_dim..(i + 1) * head_dim] {
                            *value *= correction;
                        }
                    }
                }
                let values_at = (keys_at, start);
                let accumulate = start > 0;
                head_operands.weigh_values(
                    block,
                    scores,
                    values_at,
                    output,
                    accumulate,
                    &mut scratch.pairs,
                );
            }
            for (i, values) in output.chunks_exact(head_dim).enumerate() {
                let target = (item * tokens + first + i) * row + head * head_dim;
                let inverse = 1.0 / sums[i];
                // SAFETY: tasks write disjoint (token, head) rows of `out`, inside its bounds.
                let target =
                    unsafe { std::slice::from_raw_parts_mut(out_ptr.get().add(target), head_dim) };
                for (target, value) in target.iter_mut().zip(values) {
                    *target = value * inverse;
                }
            }
        },
    );
    Tensor::from_vec(out, (batch, tokens, row), query.device())
}

/// Queries, keys and values, each whole tokens `heads * head_dim` apart; for the bf16
/// products each head's keys and values packed once, for all its blocks of queries.
enum Operands<'a> {
    F32([&'a [f32]; 3]),
    #[cfg(target_arch = "x86_64")]
    Bf16(&'a [half::bf16], Vec<KeysValues>),
}

/// One batch item's head's keys (`keys x head_dim`) and values (`head_dim x keys`) packed.
#[cfg(target_arch = "x86_64")]
struct KeysValues {
    keys: super::bf16_gemm::Panels,
    values: super::bf16_gemm::Panels,
}

/// `(batch, tokens, keys, heads, head_dim)`.
type Dims = (usize, usize, usize, usize, usize);

impl<'a> Operands<'a> {
    /// The operands in `(storage, start)`, all f32 or all bf16, of `dims`.
    fn new(
        query: (&'a Storage, usize),
        key: (&'a Storage, usize),
        value: (&'a Storage, usize),
        (batch, tokens, keys, heads, head_dim): Dims,
    ) -> Result<Self> {
        let row = heads * head_dim;
        let (query_count, key_count) = (batch * tokens * row, batch * keys * row);
        let counts = [query_count, key_count, key_count];
        let all = [query, key, value];
        if all
            .iter()
            .all(|(s, _)| matches!(s, Storage::Cpu(CpuStorage::F32(_))))
        {
            let slice = |i: usize| cpu_slice(all[i].0, all[i].1, counts[i]);
            return Ok(Self::F32([slice(0)?, slice(1)?, slice(2)?]));
        }
        #[cfg(target_arch = "x86_64")]
        if bf16_runs() {
            let slice = |i: usize| match all[i].0 {
                Storage::Cpu(CpuStorage::BF16(values)) => {
                    Some(&values[all[i].1..all[i].1 + counts[i]])
                }
                _ => None,
            };
            if let (Some(q), Some(k), Some(v)) = (slice(0), slice(1), slice(2)) {
                let packed = (0..batch * heads)
                    .into_par_iter()
                    .map(|task| {
                        let (item, head) = (task / heads, task % heads);
                        let at = item * keys * row + head * head_dim;
                        let mut packed = KeysValues {
                            keys: Default::default(),
                            values: Default::default(),
                        };
                        let key = |c: usize, d: usize| k[at + c * row + d];
                        packed.keys.refill(keys, head_dim, key);
                        let value = |d: usize, c: usize| v[at + c * row + d];
                        packed.values.refill(head_dim, keys, value);
                        packed
                    })
                    .collect();
                return Ok(Self::Bf16(q, packed));
            }
        }
        bail!("fused attention takes f32 (or bf16 with AVX-512 BF16) inputs on the CPU")
    }

    /// The operands of one batch item's head (`item * heads + head`).
    fn head(&self, index: usize) -> HeadOperands<'_> {
        match self {
            Self::F32(all) => HeadOperands::F32(*all),
            #[cfg(target_arch = "x86_64")]
            Self::Bf16(queries, packed) => HeadOperands::Bf16(queries, &packed[index]),
        }
    }
}

/// [`Operands`] of one batch item's head.
enum HeadOperands<'a> {
    F32([&'a [f32]; 3]),
    #[cfg(target_arch = "x86_64")]
    Bf16(&'a [half::bf16], &'a KeysValues),
}

/// `(rows, columns, head_dim, token stride)` of one block of queries and keys.
type BlockShape = (usize, usize, usize, usize);

impl HeadOperands<'_> {
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
    /// Packs a task's `rows x head_dim` queries from `queries` for the bf16 products (the f32
    /// products read them in place).
    fn load_queries(
        &self,
        (rows, head_dim, row): (usize, usize, usize),
        queries: usize,
        pairs: &mut Pairs,
    ) {
        #[cfg(target_arch = "x86_64")]
        if let Self::Bf16(q, _) = self {
            let query = |r: usize| &q[queries + r * row..];
            pairs.queries.refill(rows, head_dim, query);
        }
    }

    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
    /// `scores` (`rows x columns`) = the queries (packed by [`Self::load_queries`] for bf16)
    /// from `queries` times the keys from `(offset, first key)`.
    fn scores(
        &self,
        (rows, columns, head_dim, row): BlockShape,
        queries: usize,
        (keys, first): (usize, usize),
        scores: &mut [f32],
        pairs: &Pairs,
    ) {
        match self {
            Self::F32([q, k, _]) => {
                // SAFETY: the queries hold `rows x head_dim` and the keys `columns x head_dim`,
                // rows `row` apart; `scores` is `rows x columns`, row-major.
                unsafe {
                    product(
                        (rows, columns, head_dim),
                        (scores.as_mut_ptr(), columns),
                        (q.as_ptr().add(queries), row, 1),
                        (k.as_ptr().add(keys), 1, row),
                        false,
                        1.0,
                    );
                }
            }
            #[cfg(target_arch = "x86_64")]
            Self::Bf16(_, packed) => {
                let keys = (first..first + columns, 0);
                super::bf16_gemm::product(
                    &pairs.queries,
                    &packed.keys,
                    keys,
                    scores,
                    columns,
                    false,
                );
            }
        }
    }

    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
    /// `output` (`rows x head_dim`) = (or `+=` with `accumulate`) the weights `scores` times
    /// the values from `(offset, first key)`.
    fn weigh_values(
        &self,
        (rows, columns, head_dim, row): BlockShape,
        scores: &[f32],
        (values, first): (usize, usize),
        output: &mut [f32],
        accumulate: bool,
        pairs: &mut Pairs,
    ) {
        match self {
            Self::F32([_, _, v]) => {
                // SAFETY: `scores` is `rows x columns`, the values `columns x head_dim` with
                // rows `row` apart, `output` `rows x head_dim`, row-major.
                unsafe {
                    product(
                        (rows, head_dim, columns),
                        (output.as_mut_ptr(), head_dim),
                        (scores.as_ptr(), columns, 1),
                        (v.as_ptr().add(values), row, 1),
                        accumulate,
                        1.0,
                    );
                }
            }
            #[cfg(target_arch = "x86_64")]
            Self::Bf16(_, packed) => {
                pairs.weights.refill_rounded(rows, columns, scores);
                // Key blocks start at even keys: at a pair of the packed values.
                let values = (0..head_dim, first / 2);
                let weights = &pairs.weights;
                super::bf16_gemm::product(
                    weights,
                    &packed.values,
                    values,
                    output,
                    head_dim,
                    accumulate,
                );
            }
        }
    }
}

/// A task's operands packed for the bf16 products (empty for f32).
#[derive(Default)]
struct Pairs {
    #[cfg(target_arch = "x86_64")]
    queries: super::bf16_gemm::Rows<'static>,
    #[cfg(target_arch = "x86_64")]
    weights: super::bf16_gemm::Rows<'static>,
}

/// One task's working memory: a block of scores, the running output and softmax statistics.
struct Scratch {
    scores: Vec<f32>,
    output: Vec<f32>,
    statistics: Vec<f32>,
    pairs: Pairs,
}

impl Scratch {
    fn new(head_dim: usize) -> Self {
        Self {
            scores: vec![0f32; QUERY_BLOCK * KEY_BLOCK],
            output: vec![0f32; QUERY_BLOCK * head_dim],
            statistics: vec![0f32; 2 * QUERY_BLOCK],
            pairs: Pairs::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use himmel_core::compare::max_abs_difference;

    /// The same attention from candle's composed ops.
    fn reference(
        query: &Tensor,
        key: &Tensor,
        value: &Tensor,
        key_bias: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (batch, tokens, heads, head_dim) = query.dims4()?;
        let query = query.transpose(1, 2)?.contiguous()?;
        let key = key.transpose(1, 2)?.contiguous()?;
        let value = value.transpose(1, 2)?.contiguous()?;
        let mut scores = (query.matmul(&key.t()?)? / (head_dim as f64).sqrt())?;
        if let Some(bias) = key_bias {
            scores = scores.broadcast_add(&bias.unsqueeze(1)?.unsqueeze(1)?)?;
        }
        candle_nn::ops::softmax_last_dim(&scores)?
            .matmul(&value)?
            .transpose(1, 2)?
            .reshape((batch, tokens, heads * head_dim))
    }

    #[test]
    fn matches_composed_attention_on_ragged_blocks() -> Result<()> {
        let device = Device::Cpu;
        // (batch, queries, keys, heads, head dim): blocks of queries and keys cut unevenly,
        // one key, more keys than a block, and large scores (scale 4) for the running maximum.
        let cases = [
            (1, 5, 7, 2, 8, 1.0),
            (2, 130, 600, 3, 16, 1.0),
            (1, 64, 1, 1, 4, 1.0),
            (1, 70, 1100, 2, 32, 4.0),
        ];
        for (batch, tokens, keys, heads, head_dim, spread) in cases {
            let query = Tensor::randn(0f32, spread, (batch, tokens, heads, head_dim), &device)?;
            let key = Tensor::randn(0f32, spread, (batch, keys, heads, head_dim), &device)?;
            let value = Tensor::randn(0f32, 1.0, (batch, keys, heads, head_dim), &device)?;
            // Without a bias, and with one of several magnitudes per item and key.
            let bias = (Tensor::rand(0f32, 3.0, (batch, keys), &device)? - 1.0)?;
            // The reference in f64. Scores grow with the square of the inputs' spread, and f32's
            // rounding of them with it (about 2e-5 at spread 4 over 1100 keys).
            let tolerance = 1e-5 * spread * spread;
            let wide = |x: &Tensor| x.to_dtype(DType::F64);
            for bias in [None, Some(&bias)] {
                let ours = attention(&query, &key, &value, bias)?;
                let wide_bias = bias.map(wide).transpose()?;
                let theirs = reference(
                    &wide(&query)?,
                    &wide(&key)?,
                    &wide(&value)?,
                    wide_bias.as_ref(),
                )?
                .to_dtype(DType::F32)?;
                assert_eq!(ours.dims(), theirs.dims());
                let error = max_abs_difference(&ours, &theirs)?;
                assert!(
                    error < tolerance,
                    "case {tokens}x{keys}x{heads}x{head_dim}, bias {}: {error}",
                    bias.is_some()
                );
            }
        }
        Ok(())
    }

    #[test]
    fn bf16_inputs_match_composed_attention_in_f32() -> Result<()> {
        if !bf16_runs() {
            eprintln!("skipped: this CPU lacks AVX-512 BF16");
            return Ok(());
        }
        let device = Device::Cpu;
        for (batch, tokens, keys, heads, head_dim) in [(1, 5, 7, 2, 8), (2, 130, 600, 3, 16)] {
            let draw = |len: usize, scale: f64| -> Result<Tensor> {
                let values = Tensor::randn(0f32, 1.0, (batch, len, heads, head_dim), &device)?;
                (values * scale)?.to_dtype(DType::BF16)
            };
            let (query, key, value) = (draw(tokens, 1.0)?, draw(keys, 1.0)?, draw(keys, 1.0)?);
            assert!(applies(&query, &key, &value));
            let ours = attention(&query, &key, &value, None)?;
            let f32 = |t: &Tensor| t.to_dtype(DType::F32);
            let theirs = reference(&f32(&query)?, &f32(&key)?, &f32(&value)?, None)?;
            // The probabilities are rounded to bf16 (2^-9 relative) before the values.
            let error = max_abs_difference(&ours, &theirs)?;
            assert!(
                error < 1e-2,
                "case {tokens}x{keys}x{heads}x{head_dim}: {error}"
            );
        }
        Ok(())
    }

    #[test]
    fn mismatched_inputs_are_an_error() -> Result<()> {
        let device = Device::Cpu;
        let query = Tensor::zeros((1, 4, 2, 8), DType::F32, &device)?;
        let key = Tensor::zeros((1, 4, 3, 8), DType::F32, &device)?;
        let error = attention(&query, &key, &key, None).unwrap_err().to_string();
        assert!(error.contains("do not fit together"), "{error}");
        let bias = Tensor::zeros((1, 5), DType::F32, &device)?;
        let error = attention(&query, &query, &query, Some(&bias)).unwrap_err();
        assert!(error.to_string().contains("does not fit"), "{error}");
        Ok(())
    }
}
