//! The vocabulary of triplet extraction and SIMAT's captions: subjects, objects, relations with
//! their surface forms, caption templates, and the normalisation names are compared after. The
//! triplets stage extracts with it; the synthetic world plants its triplets from it.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The SIMAT vocabulary (subjects, relations and their surface forms, minimum region side).
pub const SIMAT_VOCABULARY: &str = include_str!("../data/simat_vocabulary.toml");

/// Default caption template; `{a|an}` becomes the article that fits the next word.
pub const DEFAULT_CAPTION: &str = "A {subj} {rel} {a|an} {obj}.";

/// The vocabulary of triplet extraction. The defaults reproduce SIMAT.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vocabulary {
    /// Minimum width and height, in pixels, of the union of the subject and object boxes.
    #[serde(default = "default_min_side")]
    pub min_region_side: i64,
    /// Subject names kept (normalised before comparison).
    pub subjects: Vec<String>,
    /// Object names kept; empty keeps every object.
    #[serde(default)]
    pub objects: Vec<String>,
    /// Each canonical relation with its surface forms (the predicates that mean it).
    pub relations: BTreeMap<String, Vec<String>>,
    /// Caption templates: the key `default`, or a relation name to override it for that
    /// relation. Placeholders: `{subj}`, `{rel}`, `{obj}`, `{a|an}`.
    #[serde(default)]
    pub captions: BTreeMap<String, String>,
}

fn default_min_side() -> i64 {
    32
}

impl Default for Vocabulary {
    fn default() -> Self {
        Vocabulary::from_toml_str(SIMAT_VOCABULARY, Path::new("data/simat_vocabulary.toml"))
            .expect("the embedded SIMAT vocabulary parses")
    }
}

impl Vocabulary {
    /// Parse a vocabulary: either the whole document, or its `[triplets]` table (a pipeline file).
    pub fn from_toml_str(text: &str, path: &Path) -> Result<Self> {
        let value: toml::Table =
            toml::from_str(text).map_err(|e| Error::config(path, e.to_string()))?;
        let table = match value.get("triplets") {
            Some(toml::Value::Table(t)) => t.clone(),
            _ => value,
        };
        let config: Vocabulary = table
            .try_into()
            .map_err(|e: toml::de::Error| Error::config(path, e.to_string()))?;
        config.validate(path)?;
        Ok(config)
    }

    /// Load a vocabulary file.
    pub fn load(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).map_err(|e| Error::io("failed to read", path, e))?;
        Self::from_toml_str(&text, path)
    }

    /// Check the vocabulary for contradictions.
    pub fn validate(&self, path: &Path) -> Result<()> {
        match self.problem() {
            Some((key, m)) => Err(Error::config(path, format!("`{key}`: {m}"))),
            None => Ok(()),
        }
    }

    /// The first contradiction: the key and what is wrong.
    pub fn problem(&self) -> Option<(&'static str, String)> {
        if self.subjects.is_empty() {
            return Some(("subjects", "is empty: no region could be kept".into()));
        }
        if self.relations.is_empty() {
            return Some(("relations", "is empty: no region could be kept".into()));
        }
        if self.min_region_side < 0 {
            return Some(("min_region_side", "must be ≥ 0".into()));
        }
        let mut seen: HashMap<String, &str> = HashMap::new();
        for (rel, forms) in &self.relations {
            for form in forms.iter().chain(std::iter::once(rel)) {
                if let Some(other) = seen.insert(normalise(form), rel) {
                    if other != rel {
                        return Some((
                            "relations",
                            format!(
                                "surface form `{form}` is listed under both `{other}` and `{rel}`"
                            ),
                        ));
                    }
                }
            }
        }
        for key in self.captions.keys() {
            if key != "default" && !self.relations.contains_key(key) {
                return Some((
                    "captions",
                    format!(
                        "caption template for `{key}`, which is not a relation (nor `default`)"
                    ),
                ));
            }
        }
        None
    }

    fn template(&self, rel: &str) -> &str {
        self.captions
            .get(rel)
            .or_else(|| self.captions.get("default"))
            .map(String::as_str)
            .unwrap_or(DEFAULT_CAPTION)
    }

    /// The caption of a triplet.
    pub fn caption(&self, subj: &str, rel: &str, obj: &str) -> String {
        render_caption(self.template(rel), subj, rel, obj)
    }
}

/// Lower case, trimmed, inner white space collapsed to one space.
pub fn normalise(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for word in s.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        for c in word.chars() {
            out.extend(c.to_lowercase());
        }
    }
    out
}

/// "an" before a vowel, else "a".
pub fn article_for(word: &str) -> &'static str {
    match word.chars().next().map(|c| c.to_ascii_lowercase()) {
        Some('a' | 'e' | 'i' | 'o' | 'u') => "an",
        _ => "a",
    }
}

/// Fill a caption template. `{a|an}` takes the article of the word after it; when the text
/// before it already ends with an article (a relation such as "sitting on a"), that article is
/// corrected instead of doubled.
pub fn render_caption(template: &str, subj: &str, rel: &str, obj: &str) -> String {
    let filled = template
        .replace("{subj}", subj)
        .replace("{rel}", rel)
        .replace("{obj}", obj);
    let mut out = String::with_capacity(filled.len());
    let mut rest = filled.as_str();
    while let Some(i) = rest.find("{a|an}") {
        let (before, after) = (&rest[..i], &rest[i + "{a|an}".len()..]);
        let next = after.trim_start();
        let article = article_for(next);
        out.push_str(before);
        let trimmed = out.trim_end().to_string();
        let prev_word = trimmed.rsplit(' ').next().unwrap_or("");
        if matches!(prev_word, "a" | "an") {
            out = format!("{}{}", &trimmed[..trimmed.len() - prev_word.len()], article);
        } else {
            out.push_str(article);
        }
        rest = after;
    }
    out.push_str(rest);
    let mut caption = out.split_whitespace().collect::<Vec<_>>().join(" ");
    caption = caption.replace(" .", ".");
    if let Some(first) = caption.chars().next() {
        let upper: String = first.to_uppercase().collect();
        caption.replace_range(..first.len_utf8(), &upper);
    }
    caption
}
