//! [`Policy`]: the prompt policy, checked before any work starts. Categories of phrases in
//! English and German (the default is `policy.toml` beside this crate), read from a TOML file
//! an operator can extend or relax, except the category that is always refused.
//!
//! The check is lexical: a prompt falls in a category when it holds one of its phrases, or a
//! phrase of every one of its lists (an act and a target, say). It catches direct requests
//! and their common paraphrases; it does not understand meaning, so euphemisms, misspellings
//! and other languages get through, and it is one layer of several (the provenance manifest
//! and the watermark say what made a video whatever it shows).

use serde::Deserialize;

/// The default policy.
pub const DEFAULT_POLICY: &str = include_str!("../policy.toml");

/// Why a policy file cannot be used.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PolicyError {
    /// The TOML is malformed.
    #[error("policy: {0}")]
    Syntax(String),
    /// A phrase is empty or malformed.
    #[error("policy category {category:?}: bad phrase {phrase:?}")]
    Phrase {
        /// The category.
        category: String,
        /// The phrase.
        phrase: String,
    },
    /// The file tries to relax what is always refused.
    #[error("policy category {0:?} is always refused; it can be extended but not turned off")]
    CannotRelax(String),
}

/// A refused prompt: the category and what matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The category's id, e.g. `violence`.
    pub category: String,
    /// The category in words, e.g. `graphic violence and gore`.
    pub name: String,
    /// The phrases that matched, as written in the policy.
    pub matched: String,
}

impl std::error::Error for Refusal {}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the prompt was refused by the content policy: {} (matched {:?})",
            self.name, self.matched
        )
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    category: Vec<CategoryFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CategoryFile {
    id: String,
    name: Option<String>,
    #[serde(default)]
    always_refused: bool,
    #[serde(default = "enabled")]
    enabled: bool,
    #[serde(default)]
    any: Vec<String>,
    #[serde(default)]
    all: Vec<Vec<String>>,
    #[serde(default)]
    unless: Vec<String>,
}

fn enabled() -> bool {
    true
}

/// One word of a phrase: whole, or (written with a trailing `*`) any word it begins.
#[derive(Debug, Clone, PartialEq)]
enum Word {
    Whole(String),
    Prefix(String),
}

impl Word {
    fn matches(&self, word: &str) -> bool {
        match self {
            Self::Whole(whole) => word == whole,
            Self::Prefix(prefix) => word.starts_with(prefix.as_str()),
        }
    }
}

/// A phrase: words in a row.
#[derive(Debug, Clone, PartialEq)]
struct Phrase {
    text: String,
    words: Vec<Word>,
}

impl Phrase {
    fn parse(text: &str, category: &str) -> Result<Self, PolicyError> {
        let bad = || PolicyError::Phrase {
            category: category.into(),
            phrase: text.into(),
        };
        let words: Vec<Word> = words(text)
            .into_iter()
            .zip(text.split_whitespace().map(|w| w.ends_with('*')))
            .map(|(word, prefix)| {
                if prefix {
                    Word::Prefix(word)
                } else {
                    Word::Whole(word)
                }
            })
            .collect();
        if words.is_empty() || words.len() != text.split_whitespace().count() {
            return Err(bad());
        }
        Ok(Self {
            text: text.into(),
            words,
        })
    }

    /// Where the phrase starts in `tokens`, if it occurs.
    fn find(&self, tokens: &[String]) -> Option<usize> {
        let length = self.words.len();
        (0..tokens.len().checked_sub(length - 1)?).find(|&start| {
            self.words
                .iter()
                .zip(&tokens[start..start + length])
                .all(|(word, token)| word.matches(token))
        })
    }
}

/// A category of refused prompts.
#[derive(Debug, Clone, PartialEq)]
struct Category {
    id: String,
    name: String,
    always_refused: bool,
    enabled: bool,
    any: Vec<Phrase>,
    all: Vec<Vec<Phrase>>,
    unless: Vec<Phrase>,
}

impl Category {
    fn parse(file: CategoryFile) -> Result<Self, PolicyError> {
        let id = file.id;
        let phrases = |texts: &[String]| -> Result<Vec<Phrase>, PolicyError> {
            texts.iter().map(|text| Phrase::parse(text, &id)).collect()
        };
        Ok(Self {
            name: file.name.clone().unwrap_or_else(|| id.replace('_', " ")),
            always_refused: file.always_refused,
            enabled: file.enabled,
            any: phrases(&file.any)?,
            all: file
                .all
                .iter()
                .map(|list| phrases(list))
                .collect::<Result<_, _>>()?,
            unless: phrases(&file.unless)?,
            id,
        })
    }

    /// What in `tokens` puts the prompt in this category.
    fn check(&self, tokens: &[String]) -> Option<String> {
        let mut tokens = tokens.to_vec();
        for phrase in &self.unless {
            while let Some(start) = phrase.find(&tokens) {
                for token in &mut tokens[start..start + phrase.words.len()] {
                    token.clear();
                }
            }
        }
        if let Some(phrase) = self.any.iter().find(|p| p.find(&tokens).is_some()) {
            return Some(phrase.text.clone());
        }
        if self.all.is_empty() {
            return None;
        }
        let found: Option<Vec<&str>> = self
            .all
            .iter()
            .map(|list| {
                list.iter()
                    .find(|p| p.find(&tokens).is_some())
                    .map(|p| p.text.as_str())
            })
            .collect();
        found.map(|phrases| phrases.join(" + "))
    }
}

/// The prompt policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    categories: Vec<Category>,
}

/// Lower-case words of `text`, with ä ö ü ß also written ae oe ue ss.
pub fn words(text: &str) -> Vec<String> {
    let mut folded = String::with_capacity(text.len());
    for c in text.chars().flat_map(char::to_lowercase) {
        match c {
            'ä' => folded.push_str("ae"),
            'ö' => folded.push_str("oe"),
            'ü' => folded.push_str("ue"),
            'ß' => folded.push_str("ss"),
            c if c.is_alphanumeric() => folded.push(c),
            _ => folded.push(' '),
        }
    }
    folded.split_whitespace().map(str::to_string).collect()
}

fn parse_file(text: &str) -> Result<Vec<Category>, PolicyError> {
    let file: PolicyFile =
        toml::from_str(text).map_err(|error| PolicyError::Syntax(error.to_string()))?;
    file.category.into_iter().map(Category::parse).collect()
}

impl Policy {
    /// The default policy.
    pub fn standard() -> Self {
        Self {
            categories: parse_file(DEFAULT_POLICY).expect("the default policy parses (tested)"),
        }
    }

    /// The default policy changed by the policy file `text`: a category with a known id
    /// replaces the default one (an always-refused one is extended instead, and cannot be
    /// turned off), a new id is added.
    pub fn with_overrides(mut self, text: &str) -> Result<Self, PolicyError> {
        for category in parse_file(text)? {
            match self.categories.iter_mut().find(|c| c.id == category.id) {
                Some(existing) if existing.always_refused => {
                    if !category.enabled {
                        return Err(PolicyError::CannotRelax(category.id));
                    }
                    existing.any.extend(category.any);
                    existing.unless.extend(category.unless);
                    if !category.all.is_empty() {
                        return Err(PolicyError::CannotRelax(category.id));
                    }
                }
                Some(existing) => *existing = category,
                None => self.categories.push(category),
            }
        }
        Ok(self)
    }

    /// `Ok` when `prompt` may be generated, else the first category it falls in (the
    /// always-refused ones are checked first).
    pub fn check(&self, prompt: &str) -> Result<(), Refusal> {
        let tokens = words(prompt);
        let mut ordered: Vec<&Category> = self.categories.iter().filter(|c| c.enabled).collect();
        ordered.sort_by_key(|c| !c.always_refused);
        for category in ordered {
            if let Some(matched) = category.check(&tokens) {
                return Err(Refusal {
                    category: category.id.clone(),
                    name: category.name.clone(),
                    matched,
                });
            }
        }
        Ok(())
    }

    /// The ids of the enabled categories, in order.
    pub fn categories(&self) -> Vec<&str> {
        self.categories
            .iter()
            .filter(|c| c.enabled)
            .map(|c| c.id.as_str())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(prompt: &str) -> Option<String> {
        Policy::standard().check(prompt).err().map(|r| r.category)
    }

    #[test]
    fn words_fold_case_and_german_letters() {
        assert_eq!(words("Ein MÄDCHEN, groß!"), ["ein", "maedchen", "gross"]);
    }

    #[test]
    fn harmless_prompts_that_share_words_pass() {
        for prompt in [
            "shoot a video of a sunset over the sea",
            "a killer whale jumps out of the water",
            "a child plays with a red ball on the grass",
            "a news anchor reads the weather report",
            "ein Kind spielt mit einem Ball",
            "a striped cat sleeps on a sofa",
            "a blood orange rolls across the table",
            "a musk ox walks through the snow",
        ] {
            assert_eq!(refused(prompt), None, "{prompt}");
        }
    }

    #[test]
    fn harmful_prompts_are_refused_by_category() {
        for (prompt, category) in [
            ("a naked child", "sexual_minors"),
            ("ein nacktes Mädchen", "sexual_minors"),
            ("a porn scene", "sexual"),
            ("a man shoots a woman, blood everywhere", "violence"),
            ("kill all immigrants", "hate"),
            ("Barack Obama dancing", "real_people"),
            (
                "breaking news footage of a terror attack in Berlin",
                "fabricated_news",
            ),
        ] {
            assert_eq!(refused(prompt).as_deref(), Some(category), "{prompt}");
        }
    }

    #[test]
    fn operators_extend_and_relax_but_never_the_always_refused() {
        let relaxed = Policy::standard()
            .with_overrides("[[category]]\nid = \"real_people\"\nenabled = false\n")
            .unwrap();
        assert!(relaxed.check("Barack Obama dancing").is_ok());
        let extended = Policy::standard()
            .with_overrides("[[category]]\nid = \"spiders\"\nany = [\"spider*\"]\n")
            .unwrap();
        assert_eq!(
            extended.check("a big spider").unwrap_err().category,
            "spiders"
        );
        let error = Policy::standard()
            .with_overrides("[[category]]\nid = \"sexual_minors\"\nenabled = false\n")
            .unwrap_err();
        assert_eq!(error, PolicyError::CannotRelax("sexual_minors".into()));
        assert!(matches!(
            Policy::standard().with_overrides("[[category]]\nid = 3"),
            Err(PolicyError::Syntax(_))
        ));
    }
}
