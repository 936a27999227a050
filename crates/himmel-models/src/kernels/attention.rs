//! Fused scaled dot-product attention for f32 on the CPU, flash style (Dao et al., 2022): each
//! task takes one head's block of queries through the keys a block at a time, keeping the
//! running maximum and sum of its softmax, so the scores of a query block and key block are the
//! only ones that ever exist (in cache) and no pass over a score matrix goes through memory.
//! Queries, keys and values are read in place from `[B, L, heads, head_dim]` and the output is
//! written in place to `[B, L, heads * head_dim]`: no transposes.

use candle_core::{DType, Result, Tensor, bail};
use rayon::prelude::*;

use super::{SendPtr, cpu_slice, product};

/// Queries per task: a block of scores (`QUERY_BLOCK x KEY_BLOCK`, 128 KiB) and the running
/// output stay in a core's L2 cache.
const QUERY_BLOCK: usize = 64;

/// Keys per step of a task.
const KEY_BLOCK: usize = 512;

/// Whether [`attention`] can run on these inputs: f32 on the CPU, no gradients wanted.
pub fn applies(query: &Tensor, key: &Tensor, value: &Tensor) -> bool {
    [query, key, value]
        .iter()
        .all(|t| t.device().is_cpu() && t.dtype() == DType::F32 && !t.track_op())
}

/// `softmax(q kᵀ / sqrt(head_dim)) v` per batch item and head: `query` `[B, L, heads, D]`,
/// `key` and `value` `[B, S, heads, D]`; gives `[B, L, heads * D]`.
pub fn attention(query: &Tensor, key: &Tensor, value: &Tensor) -> Result<Tensor> {
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
    let q = cpu_slice(
        &query_storage,
        query_layout.start_offset(),
        query.elem_count(),
    )?;
    let k = cpu_slice(&key_storage, key_layout.start_offset(), key.elem_count())?;
    let v = cpu_slice(
        &value_storage,
        value_layout.start_offset(),
        value.elem_count(),
    )?;
    // Rows of every operand are whole tokens: `heads * head_dim` floats apart.
    let row = heads * head_dim;
    let scale = 1.0 / (head_dim as f32).sqrt();
    let blocks = tokens.div_ceil(QUERY_BLOCK);
    let mut out = vec![0f32; batch * tokens * row];
    let out_ptr = SendPtr(out.as_mut_ptr());
    (0..batch * heads * blocks).into_par_iter().for_each_init(
        || {
            (
                vec![0f32; QUERY_BLOCK * KEY_BLOCK],
                vec![0f32; QUERY_BLOCK * head_dim],
                vec![0f32; 2 * QUERY_BLOCK],
            )
        },
        |(scores, output, statistics), task| {
            let (item, head, block) = (task / blocks / heads, task / blocks % heads, task % blocks);
            let first = block * QUERY_BLOCK;
            let rows = QUERY_BLOCK.min(tokens - first);
            let queries = &q[(item * tokens + first) * row + head * head_dim..];
            let output = &mut output[..rows * head_dim];
            let (maxima, sums) = statistics.split_at_mut(QUERY_BLOCK);
            maxima.fill(f32::NEG_INFINITY);
            sums.fill(0.0);
            for start in (0..keys).step_by(KEY_BLOCK) {
                let columns = KEY_BLOCK.min(keys - start);
                let offset = (item * keys + start) * row + head * head_dim;
                let scores = &mut scores[..rows * columns];
                // SAFETY: `queries` holds `rows x head_dim` and the keys `columns x head_dim`,
                // rows `row` apart; `scores` is `rows x columns`, row-major.
                unsafe {
                    product(
                        (rows, columns, head_dim),
                        (scores.as_mut_ptr(), columns),
                        (queries.as_ptr(), row, 1),
                        (k.as_ptr().add(offset), 1, row),
                        false,
                        scale,
                    );
                }
                for (i, scores) in scores.chunks_exact_mut(columns).enumerate() {
                    let maximum = scores.iter().fold(maxima[i], |a, &b| a.max(b));
                    let correction = (maxima[i] - maximum).exp();
                    let mut sum = 0.0;
                    for score in scores.iter_mut() {
                        *score = (*score - maximum).exp();
                        sum += *score;
                    }
                    sums[i] = sums[i] * correction + sum;
                    maxima[i] = maximum;
                    if start > 0 {
                        for value in &mut output[i * head_dim..(i + 1) * head_dim] {
                            *value *= correction;
                        }
                    }
                }
                // SAFETY: `scores` is `rows x columns`, the values `columns x head_dim` with
                // rows `row` apart, `output` `rows x head_dim`, row-major.
                unsafe {
                    product(
                        (rows, head_dim, columns),
                        (output.as_mut_ptr(), head_dim),
                        (scores.as_ptr(), columns, 1),
                        (v.as_ptr().add(offset), row, 1),
                        start > 0,
                        1.0,
                    );
                }
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use himmel_core::compare::max_abs_difference;

    /// The same attention from candle's composed ops.
    fn reference(query: &Tensor, key: &Tensor, value: &Tensor) -> Result<Tensor> {
        let (batch, tokens, heads, head_dim) = query.dims4()?;
        let query = query.transpose(1, 2)?.contiguous()?;
        let key = key.transpose(1, 2)?.contiguous()?;
        let value = value.transpose(1, 2)?.contiguous()?;
        let scores = (query.matmul(&key.t()?)? / (head_dim as f64).sqrt())?;
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
            let ours = attention(&query, &key, &value)?;
            let theirs = reference(&query, &key, &value)?;
            assert_eq!(ours.dims(), theirs.dims());
            let error = max_abs_difference(&ours, &theirs)?;
            assert!(
                error < 1e-5,
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
        let error = attention(&query, &key, &key).unwrap_err().to_string();
        assert!(error.contains("do not fit together"), "{error}");
        Ok(())
    }
}
