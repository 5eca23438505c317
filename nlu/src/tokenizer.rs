//! SentencePiece-unigram tokenisation, as XLM-RoBERTa (and so
//! multilingual-e5) segments text: each code point through the
//! normalisation map, runs of spaces collapsed to one, a leading space
//! added, spaces replaced by the metaspace `▁`, then the segmentation with
//! the highest total piece score (Viterbi). A character no piece covers
//! becomes `unk` at the lowest piece score less 10.
//!
//! The vocabulary comes from a bundle's `tokenizer.json`
//! (`format: "edgedesk-unigram-1"`, written by `scripts/e5_encoder.py`);
//! ids are positions in its `pieces` list, so a pruned vocabulary gives
//! the pruned model's ids directly. Pure and allocation-light: no I/O
//! beyond [`Unigram::from_json`].

use std::collections::HashMap;

use serde::Deserialize;

const META: char = '\u{2581}';

/// Why a tokenizer file was refused.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("tokenizer file: {0}")]
    Parse(String),
    #[error("tokenizer file: format {0:?}, expected \"edgedesk-unigram-1\"")]
    Format(String),
    #[error("tokenizer file: {0} is outside the {1} pieces")]
    Special(&'static str, usize),
}

#[derive(Deserialize)]
struct File {
    format: String,
    unk: usize,
    bos: usize,
    eos: usize,
    unk_score: f32,
    pieces: Vec<(String, f32)>,
    #[serde(default)]
    normalize: HashMap<String, String>,
}

/// A unigram vocabulary ready to segment text.
#[derive(Debug)]
pub struct Unigram {
    /// piece → (id, score); the first of equal pieces wins.
    vocab: HashMap<String, (u32, f32)>,
    normalize: HashMap<char, String>,
    unk: u32,
    bos: u32,
    eos: u32,
    unk_score: f32,
    max_piece_bytes: usize,
    len: usize,
}

impl Unigram {
    pub fn from_json(bytes: &[u8]) -> Result<Unigram, TokenizerError> {
        let f: File =
            serde_json::from_slice(bytes).map_err(|e| TokenizerError::Parse(e.to_string()))?;
        if f.format != "edgedesk-unigram-1" {
            return Err(TokenizerError::Format(f.format));
        }
        let n = f.pieces.len();
        for (name, id) in [("unk", f.unk), ("bos", f.bos), ("eos", f.eos)] {
            if id >= n {
                return Err(TokenizerError::Special(name, n));
            }
        }
        let mut vocab = HashMap::with_capacity(n);
        let mut max_piece_bytes = 1;
        for (id, (piece, score)) in f.pieces.into_iter().enumerate() {
            if id == f.unk || piece.is_empty() {
                continue;
            }
            max_piece_bytes = max_piece_bytes.max(piece.len());
            vocab.entry(piece).or_insert((id as u32, score));
        }
        let mut normalize = HashMap::with_capacity(f.normalize.len());
        for (cp, out) in f.normalize {
            let c = cp
                .parse::<u32>()
                .ok()
                .and_then(char::from_u32)
                .ok_or_else(|| TokenizerError::Parse(format!("normalize key {cp:?}")))?;
            normalize.insert(c, out);
        }
        Ok(Unigram {
            vocab,
            normalize,
            unk: f.unk as u32,
            bos: f.bos as u32,
            eos: f.eos as u32,
            unk_score: f.unk_score,
            max_piece_bytes,
            len: n,
        })
    }

    /// Number of ids (the model's vocabulary size).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The pieces of `text`, without the sequence markers.
    pub fn content(&self, text: &str) -> Vec<u32> {
        // Normalise, collapse runs of spaces, metaspace.
        let mut chars: Vec<char> = Vec::with_capacity(text.len() + 1);
        for c in text.chars() {
            match self.normalize.get(&c) {
                Some(out) => chars.extend(out.chars()),
                None => chars.push(c),
            }
        }
        chars.dedup_by(|b, a| *a == ' ' && *b == ' ');
        let mut s = String::with_capacity(text.len() + 3);
        if chars.first() != Some(&' ') {
            s.push(META);
        }
        for c in chars {
            s.push(if c == ' ' { META } else { c });
        }
        // Character boundaries, in bytes.
        let bounds: Vec<usize> = s
            .char_indices()
            .map(|(i, _)| i)
            .chain(std::iter::once(s.len()))
            .collect();
        let n = bounds.len() - 1;
        let mut best = vec![f32::NEG_INFINITY; n + 1];
        let mut back: Vec<(u32, usize)> = vec![(self.unk, 0); n + 1];
        best[0] = 0.0;
        for i in 0..n {
            if best[i] == f32::NEG_INFINITY {
                continue;
            }
            for e in i + 1..=n {
                let piece = &s[bounds[i]..bounds[e]];
                if piece.len() > self.max_piece_bytes {
                    break;
                }
                if let Some(&(id, score)) = self.vocab.get(piece) {
                    let total = best[i] + score;
                    if total > best[e] {
                        best[e] = total;
                        back[e] = (id, i);
                    }
                }
            }
            let total = best[i] + self.unk_score;
            if total > best[i + 1] {
                best[i + 1] = total;
                back[i + 1] = (self.unk, i);
            }
        }
        let mut ids = Vec::new();
        let mut i = n;
        while i > 0 {
            let (id, from) = back[i];
            ids.push(id);
            i = from;
        }
        ids.reverse();
        ids
    }

    /// `bos`, the pieces of `prefix` + `text` (at most `max_len` − 2), `eos`.
    pub fn encode(&self, prefix: &str, text: &str, max_len: usize) -> Vec<u32> {
        let mut joined = String::with_capacity(prefix.len() + text.len());
        joined.push_str(prefix);
        joined.push_str(text);
        let mut content = self.content(&joined);
        content.truncate(max_len.saturating_sub(2));
        let mut ids = Vec::with_capacity(content.len() + 2);
        ids.push(self.bos);
        ids.extend(content);
        ids.push(self.eos);
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> Unigram {
        let doc = serde_json::json!({
            "format": "edgedesk-unigram-1",
            "unk": 3, "bos": 0, "eos": 2, "unk_score": -20.0,
            "pieces": [["<s>", 0.0], ["<pad>", 0.0], ["</s>", 0.0], ["<unk>", 0.0],
                       ["▁card", -2.0], ["▁car", -1.0], ["d", -1.5], ["▁", -3.0],
                       ["卡", -2.0], ["银行卡", -2.5], ["银行", -2.0]],
            "normalize": {"65313": "A", "12288": " "}
        });
        Unigram::from_json(doc.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn the_best_scoring_segmentation_wins() {
        let t = tiny();
        // "▁card" scores -2 alone, "▁car"+"d" -2.5: the single piece wins.
        assert_eq!(t.content("card"), vec![4]);
        // 银行卡: one piece (-2.5) beats 银行 + 卡 (-4.0).
        assert_eq!(t.content("银行卡"), vec![7, 9]);
        // Unknown characters fall back to unk, one each.
        assert_eq!(t.content("card?"), vec![4, 3]);
        // Full-width space normalised, runs collapsed.
        assert_eq!(t.content("card\u{3000}  card"), vec![4, 4]);
        assert_eq!(t.encode("", "card", 16), vec![0, 4, 2]);
        assert_eq!(t.encode("", "card card card", 4), vec![0, 4, 4, 2]);
        assert_eq!(t.encode("", "", 4), vec![0, 7, 2]);
    }

    #[test]
    fn bad_files_are_refused_with_the_reason() {
        assert!(matches!(
            Unigram::from_json(b"{}"),
            Err(TokenizerError::Parse(_))
        ));
        let mut doc = serde_json::json!({
            "format": "other", "unk": 0, "bos": 0, "eos": 0, "unk_score": 0.0,
            "pieces": [["a", 0.0]]
        });
        assert!(matches!(
            Unigram::from_json(doc.to_string().as_bytes()),
            Err(TokenizerError::Format(_))
        ));
        doc["format"] = "edgedesk-unigram-1".into();
        doc["eos"] = 5.into();
        assert!(matches!(
            Unigram::from_json(doc.to_string().as_bytes()),
            Err(TokenizerError::Special("eos", 1))
        ));
    }
}
