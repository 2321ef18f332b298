//! Lexical features for the linear head: the request's words, weighted by TF-IDF, beside its
//! sentence embedding.
//!
//! A frozen sentence embedding places "write the runbook for rotating certificates" near
//! "rotate the certificates": the topic dominates, while the role turns on a few words (write
//! the runbook → `sop`). Word unigrams and bigrams carry exactly those words, and a
//! logistic regression over both the embedding and the words is the usual remedy. In 10-fold
//! cross-validation over the 1979 shipped examples (`baton eval-routing --cross-validate 10`),
//! the head scores 87.7% with the embedding alone and 92.7% with the words (over the 1138
//! examples it was first measured on, 85.3% and 90.2%; a scikit-learn check of the same
//! features there gave 85.5% for the embedding, 88.3% for the words alone, 91.7% for both).
//!
//! Weighting as scikit-learn's `TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)`
//! computes it: terms are the lower-cased words of two or more letters, digits or
//! underscores and each pair of adjacent words; a term's weight in a text is
//! `(1 + ln count) × idf`, with `idf = ln((1 + n) / (1 + df)) + 1` over the `n` example texts
//! (`df` of them hold the term); each text's vector is then L2-normalised. Only terms held by
//! at least `min_count` examples enter the vocabulary, so a word seen once cannot become a
//! rule of its own.

use std::collections::HashMap;

/// The terms of the examples a head was trained on, with their inverse document frequency.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Vocabulary {
    /// Term → (column, idf).
    index: HashMap<String, (u32, f32)>,
    /// Column → term, for explanations.
    terms: Vec<String>,
}

/// The words of `text` (lower-cased runs of two or more alphanumeric or `_` characters), then
/// every pair of adjacent words joined by a space.
pub fn terms(text: &str) -> Vec<String> {
    let lower = text.to_lowercase();
    let words: Vec<&str> = lower
        .split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .filter(|w| w.chars().nth(1).is_some())
        .collect();
    let bigrams = words.windows(2).map(|p| format!("{} {}", p[0], p[1]));
    words.iter().map(|w| w.to_string()).chain(bigrams).collect()
}

impl Vocabulary {
    /// The vocabulary of `texts`: every term held by at least `min_count` of them, in sorted
    /// order (so the same texts give the same columns whatever their order), with its idf.
    pub fn build<'a>(texts: impl IntoIterator<Item = &'a str>, min_count: usize) -> Vocabulary {
        let mut df: HashMap<String, usize> = HashMap::new();
        let mut n = 0usize;
        for text in texts {
            n += 1;
            let mut seen = terms(text);
            seen.sort_unstable();
            seen.dedup();
            for t in seen {
                *df.entry(t).or_default() += 1;
            }
        }
        let mut kept: Vec<(String, usize)> =
            df.into_iter().filter(|(_, d)| *d >= min_count).collect();
        kept.sort_unstable();
        let idf = |d: usize| (((1 + n) as f64 / (1 + d) as f64).ln() + 1.0) as f32;
        Vocabulary {
            index: kept
                .iter()
                .enumerate()
                .map(|(i, (t, d))| (t.clone(), (i as u32, idf(*d))))
                .collect(),
            terms: kept.into_iter().map(|(t, _)| t).collect(),
        }
    }

    /// Number of terms (the lexical part's width).
    pub fn len(&self) -> usize {
        self.terms.len()
    }

    /// Whether no term made it into the vocabulary.
    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    /// The term of column `i`.
    pub fn term(&self, i: u32) -> &str {
        &self.terms[i as usize]
    }

    /// The TF-IDF vector of `text` as (column, weight) pairs, sorted by column, L2-normalised;
    /// empty when none of its terms is in the vocabulary.
    pub fn features(&self, text: &str) -> Vec<(u32, f32)> {
        let mut counts: HashMap<u32, (u32, f32)> = HashMap::new();
        for t in terms(text) {
            if let Some(&(column, idf)) = self.index.get(&t) {
                counts.entry(column).or_insert((0, idf)).0 += 1;
            }
        }
        let mut out: Vec<(u32, f32)> = counts
            .into_iter()
            .map(|(column, (count, idf))| (column, (1.0 + (count as f32).ln()) * idf))
            .collect();
        out.sort_unstable_by_key(|&(column, _)| column);
        let norm = out.iter().map(|(_, w)| w * w).sum::<f32>().sqrt();
        if norm > 0.0 {
            out.iter_mut().for_each(|(_, w)| *w /= norm);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terms_are_lower_cased_words_of_two_characters_and_adjacent_pairs() {
        assert_eq!(
            terms("Write the run-book, a CIS_L1 check!"),
            [
                "write",
                "the",
                "run",
                "book",
                "cis_l1",
                "check",
                "write the",
                "the run",
                "run book",
                "book cis_l1",
                "cis_l1 check"
            ]
        );
        assert!(terms("? a !").is_empty());
    }

    #[test]
    fn rare_terms_are_left_out_and_weights_follow_smoothed_idf_and_sublinear_tf() {
        let v = Vocabulary::build(["restart the workers", "restart the db", "bill"], 2);
        assert_eq!(v.terms, ["restart", "restart the", "the"]);
        // Unknown words are ignored; the vector is normalised.
        let f = v.features("Restart restart the queue");
        let n = 3.0f32;
        let idf = ((1.0 + n) / (1.0 + 2.0)).ln() + 1.0;
        let raw = [(1.0 + 2f32.ln()) * idf, idf, idf];
        let norm = raw.iter().map(|x| x * x).sum::<f32>().sqrt();
        let want: Vec<(u32, f32)> = raw
            .iter()
            .enumerate()
            .map(|(i, w)| (i as u32, w / norm))
            .collect();
        assert_eq!(f.len(), 3);
        for ((c, w), (wc, ww)) in f.iter().zip(&want) {
            assert_eq!(c, wc);
            assert!((w - ww).abs() < 1e-6, "{f:?} vs {want:?}");
        }
        assert!(v.features("nothing known here").is_empty());
    }
}
