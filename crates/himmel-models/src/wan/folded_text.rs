//! [`FoldedText`]: the text rows cross-attention needs. Prompts are padded to 512 rows with
//! identical ones (zeros, as Wan's pipelines pad), so their keys and values are identical too,
//! and `n` identical keys weigh in a softmax as one key whose score is raised by `ln n`. Folding
//! the repeated rows gives the same attention while embedding and attending each of them once:
//! a short prompt's cross-attention costs a few dozen keys instead of 512.

use candle_core::{DType, Result, Tensor};

/// Text rows with the trailing repeats of each item's last row folded away.
pub struct FoldedText {
    /// `[B, kept, C]`: the first `kept` rows of every item.
    pub rows: Tensor,
    /// `[B, kept]` (f32): `ln` of how many of the original rows each kept row stands for,
    /// to add to its attention scores; `None` where nothing was folded.
    pub key_bias: Option<Tensor>,
}

impl FoldedText {
    /// Folds `text` `[B, L, C]`: per item, the run of rows at its end that equal its last row
    /// bit for bit is kept once, or as often as the item with the shortest run needs (rows are
    /// kept alike for every item), its copies sharing the run's weight.
    pub fn new(text: &Tensor) -> Result<Self> {
        let (batch, len, _) = text.dims3()?;
        let items = text.to_dtype(DType::F32)?.to_vec3::<f32>()?;
        let runs: Vec<usize> = items.iter().map(|rows| trailing_repeats(rows)).collect();
        // No rows (runs of 0) keep none: the attention reports that there is nothing to attend.
        let kept = runs
            .iter()
            .map(|run| len - run + 1)
            .max()
            .unwrap_or(len)
            .min(len);
        if kept == len {
            return Ok(Self {
                rows: text.clone(),
                key_bias: None,
            });
        }
        let mut bias = vec![0f32; batch * kept];
        for (item, run) in runs.iter().enumerate() {
            let first_repeat = len - run;
            let copies = kept - first_repeat;
            let weight = (*run as f32 / copies as f32).ln();
            bias[item * kept + first_repeat..(item + 1) * kept].fill(weight);
        }
        Ok(Self {
            rows: text.narrow(1, 0, kept)?,
            key_bias: Some(Tensor::from_vec(bias, (batch, kept), text.device())?),
        })
    }
}

/// How many rows at the end of `rows` equal the last one bit for bit (at least 1).
fn trailing_repeats(rows: &[Vec<f32>]) -> usize {
    let Some(last) = rows.last() else {
        return 0;
    };
    let same = |row: &Vec<f32>| {
        row.iter()
            .zip(last)
            .all(|(a, b)| a.to_bits() == b.to_bits())
    };
    rows.iter().rev().take_while(|row| same(row)).count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn padding_folds_into_weighted_rows_alike_for_every_item() -> Result<()> {
        let device = Device::Cpu;
        // Item 0: 2 prompt rows, 4 rows of padding; item 1: 3 prompt rows, 3 of padding.
        let rows = |prompt: usize| -> Vec<f32> {
            (0..6)
                .flat_map(|row| [if row < prompt { row as f32 + 1.0 } else { 0.0 }, 0.5])
                .collect()
        };
        let text = Tensor::from_vec([rows(2), rows(3)].concat(), (2, 6, 2), &device)?;
        let folded = FoldedText::new(&text)?;
        assert_eq!(folded.rows.dims(), [2, 4, 2]);
        assert_eq!(
            folded.rows.to_vec3::<f32>()?,
            text.narrow(1, 0, 4)?.to_vec3::<f32>()?
        );
        let bias = folded.key_bias.expect("padding folded").to_vec2::<f32>()?;
        // Item 0 keeps two copies of its padding for four rows; item 1 one for three.
        let (half_of_four, three) = ((4f32 / 2.0).ln(), 3f32.ln());
        assert_eq!(
            bias,
            [
                [0.0, 0.0, half_of_four, half_of_four],
                [0.0, 0.0, 0.0, three]
            ]
        );
        Ok(())
    }

    #[test]
    fn rows_without_repeats_are_left_alone() -> Result<()> {
        let device = Device::Cpu;
        let text = Tensor::arange(0f32, 12.0, &device)?.reshape((1, 6, 2))?;
        let folded = FoldedText::new(&text)?;
        assert_eq!(folded.rows.dims(), [1, 6, 2]);
        assert!(folded.key_bias.is_none());
        Ok(())
    }
}
