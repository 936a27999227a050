//! [`WordTokenizer`]: a word-level vocabulary learnt from captions; no external files.

use std::collections::HashMap;

/// Id of padding.
pub const PAD: u32 = 0;
/// Id of any word outside the vocabulary.
pub const UNKNOWN: u32 = 1;

/// Lower-case words of `text`: runs of letters and digits (umlauts included), punctuation dropped.
pub fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|word| !word.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// Maps words to ids: 0 is padding, 1 unknown, then the vocabulary in order.
#[derive(Debug, Clone, PartialEq)]
pub struct WordTokenizer {
    vocabulary: Vec<String>,
    ids: HashMap<String, u32>,
}

/// Token ids of one text and the words that were not in the vocabulary.
#[derive(Debug, Clone, PartialEq)]
pub struct Tokens {
    /// Ids, at most the requested length, without padding.
    pub ids: Vec<u32>,
    /// Words mapped to [`UNKNOWN`], in order.
    pub unknown: Vec<String>,
}

impl WordTokenizer {
    /// A tokenizer over `vocabulary` (ids 2, 3, ... in order).
    pub fn new(vocabulary: Vec<String>) -> Self {
        let ids = vocabulary
            .iter()
            .enumerate()
            .map(|(i, word)| (word.clone(), i as u32 + 2))
            .collect();
        Self { vocabulary, ids }
    }

    /// The sorted set of words in `texts`.
    pub fn from_texts<'a>(texts: impl IntoIterator<Item = &'a str>) -> Self {
        let mut vocabulary: Vec<String> = texts.into_iter().flat_map(words).collect();
        vocabulary.sort();
        vocabulary.dedup();
        Self::new(vocabulary)
    }

    /// The words, in id order from 2.
    pub fn vocabulary(&self) -> &[String] {
        &self.vocabulary
    }

    /// Number of ids, padding and unknown included.
    pub fn size(&self) -> usize {
        self.vocabulary.len() + 2
    }

    /// Ids of the first `max_tokens` words of `text`.
    pub fn encode(&self, text: &str, max_tokens: usize) -> Tokens {
        let mut unknown = Vec::new();
        let ids = words(text)
            .into_iter()
            .take(max_tokens)
            .map(|word| match self.ids.get(&word) {
                Some(&id) => id,
                None => {
                    unknown.push(word);
                    UNKNOWN
                }
            })
            .collect();
        Tokens { ids, unknown }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_map_to_ids_and_strangers_are_reported() {
        let tokenizer = WordTokenizer::from_texts(["A red ball.", "Ein grüner Würfel, a ball"]);
        assert_eq!(
            tokenizer.vocabulary(),
            ["a", "ball", "ein", "grüner", "red", "würfel"]
        );
        let tokens = tokenizer.encode("A RED dragon; ein Würfel", 10);
        assert_eq!(tokens.ids, [2, 6, UNKNOWN, 4, 7]);
        assert_eq!(tokens.unknown, ["dragon"]);
        assert_eq!(tokenizer.encode("a a a a", 2).ids.len(), 2);
    }
}
