//! VADER sentiment: a lexicon- and rule-based score for short social text, which needs no
//! training and ships its lexicon in the `vader_sentiment` crate.

use domain::comments::SentimentLabel;
use vader_sentiment::SentimentIntensityAnalyzer;

/// VADER's own cut-offs for its compound score: at or above 0.05 positive, at or below -0.05
/// negative, neutral in between.
const THRESHOLD: f64 = 0.05;

/// The analyzer; building it parses the lexicon, so build one per process.
pub struct Sentiment {
    analyzer: SentimentIntensityAnalyzer<'static>,
}

impl Default for Sentiment {
    fn default() -> Self {
        Self {
            analyzer: SentimentIntensityAnalyzer::new(),
        }
    }
}

impl Sentiment {
    /// The compound score in [-1, 1] and its label.
    pub fn score(&self, text: &str) -> (f64, SentimentLabel) {
        let compound = self
            .analyzer
            .polarity_scores(text)
            .get("compound")
            .copied()
            .unwrap_or(0.0);
        let label = if compound >= THRESHOLD {
            SentimentLabel::Positive
        } else if compound <= -THRESHOLD {
            SentimentLabel::Negative
        } else {
            SentimentLabel::Neutral
        };
        (compound, label)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn praise_is_positive_complaints_negative_and_facts_neutral() {
        let s = Sentiment::default();
        assert_eq!(
            s.score("I love this, what a great post!").1,
            SentimentLabel::Positive
        );
        assert_eq!(
            s.score("This is terrible and wrong. I hate it.").1,
            SentimentLabel::Negative
        );
        assert_eq!(
            s.score("The post was published on Tuesday.").1,
            SentimentLabel::Neutral
        );
        let (score, _) = s.score("awful awful awful");
        assert!((-1.0..=1.0).contains(&score));
    }
}
