//! Reading the Prometheus text format back, the way Prometheus does: for tests and tools that
//! check what a process exposes, and how its numbers move.

use std::collections::{BTreeMap, HashMap};

/// A series: the sample name and its labels, sorted.
pub type SeriesKey = (String, BTreeMap<String, String>);

/// One scrape of `GET /metrics`: each series' value, and each family's declared type.
#[derive(Debug, Default, Clone)]
pub struct Scrape {
    pub samples: HashMap<SeriesKey, f64>,
    pub types: HashMap<String, String>,
}

/// Text that is not the Prometheus exposition format.
#[derive(Debug, thiserror::Error)]
#[error("line {line}: {reason}: {text}")]
pub struct ParseError {
    pub line: usize,
    pub reason: &'static str,
    pub text: String,
}

impl Scrape {
    /// Parses the text format. Label values are taken as written (with no escapes to undo:
    /// scaleout's label values are route patterns, names and numbers).
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        let mut scrape = Self::default();
        for (n, line) in text.lines().enumerate() {
            let fail = |reason| ParseError {
                line: n + 1,
                reason,
                text: line.to_owned(),
            };
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').ok_or_else(|| fail("no type"))?;
                scrape.types.insert(name.to_owned(), kind.to_owned());
                continue;
            }
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').ok_or_else(|| fail("no value"))?;
            let value: f64 = value.parse().map_err(|_| fail("not a number"))?;
            let (name, labels) = match series.split_once('{') {
                Some((name, labels)) => (
                    name,
                    labels
                        .strip_suffix('}')
                        .ok_or_else(|| fail("unclosed labels"))?,
                ),
                None => (series, ""),
            };
            let labels = labels
                .split("\",")
                .filter(|l| !l.is_empty())
                .map(|l| {
                    let (k, v) = l
                        .split_once("=\"")
                        .ok_or_else(|| fail("not label=\"value\""))?;
                    Ok((k.to_owned(), v.trim_end_matches('"').to_owned()))
                })
                .collect::<Result<_, ParseError>>()?;
            scrape.samples.insert((name.to_owned(), labels), value);
        }
        Ok(scrape)
    }

    /// The value of a series, 0 when it is absent (a counter not yet incremented).
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let labels = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        self.samples
            .get(&(name.to_owned(), labels))
            .copied()
            .unwrap_or(0.0)
    }

    /// Whether a series with exactly these labels is exposed, whatever its value.
    pub fn has(&self, name: &str, labels: &[(&str, &str)]) -> bool {
        let labels = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        self.samples.contains_key(&(name.to_owned(), labels))
    }

    /// The family a sample belongs to: histogram and summary samples carry a suffix.
    pub fn family(name: &str) -> &str {
        ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name)
    }

    /// Samples that break Prometheus conventions: no `# TYPE` for their family, a counter not
    /// ending in `_total`, a gauge named like one, a histogram not in seconds. Empty when all
    /// is well.
    pub fn convention_breaks(&self) -> Vec<String> {
        let mut breaks = Vec::new();
        for (name, _) in self.samples.keys() {
            let family = Self::family(name);
            let kind = self
                .types
                .get(family)
                .or_else(|| self.types.get(name.as_str()))
                .or_else(|| name.strip_suffix("_total").and_then(|f| self.types.get(f)));
            let problem = match kind.map(String::as_str) {
                None => Some("no # TYPE"),
                Some("counter") if !name.ends_with("_total") => {
                    Some("a counter not ending in _total")
                }
                Some("gauge") if name.ends_with("_total") => Some("a gauge named like a counter"),
                Some("histogram") if !family.ends_with("_seconds") => {
                    Some("a histogram not in seconds")
                }
                _ => None,
            };
            if let Some(problem) = problem {
                breaks.push(format!("{name}: {problem}"));
            }
        }
        breaks.sort();
        breaks.dedup();
        breaks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_types_and_labels_are_read_back() {
        let text = "# HELP cache_hits Hits.\n# TYPE cache_hits counter\n\
                    cache_hits_total{kind=\"post\"} 3\n\
                    # TYPE lag_seconds gauge\nlag_seconds 0.25\n";
        let scrape = Scrape::parse(text).unwrap();
        assert_eq!(scrape.get("cache_hits_total", &[("kind", "post")]), 3.0);
        assert_eq!(scrape.get("cache_hits_total", &[("kind", "list")]), 0.0);
        assert!(scrape.has("lag_seconds", &[]));
        assert!(scrape.convention_breaks().is_empty());
    }

    #[test]
    fn a_counter_without_total_and_a_line_without_a_value_are_reported() {
        let scrape = Scrape::parse("# TYPE hits counter\nhits 1\nlatency_ms 3\n").unwrap();
        assert_eq!(
            scrape.convention_breaks(),
            [
                "hits: a counter not ending in _total",
                "latency_ms: no # TYPE"
            ]
        );
        let error = Scrape::parse("# TYPE x gauge\nx\n").unwrap_err();
        assert_eq!(error.line, 2);
    }
}
