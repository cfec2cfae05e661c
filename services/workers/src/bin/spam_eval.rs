//! `spam-eval <corpus data dir> [threshold]`: measures the embedded model on the held-out fifth
//! of the SpamAssassin corpus, which training never saw, and prints precision and recall.

use std::path::PathBuf;

use workers::classifier::{Confusion, SpamModel, is_held_out, read_corpus};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let Some(corpus) = args.next().map(PathBuf::from) else {
        eprintln!("usage: spam-eval <corpus data dir> [threshold]");
        std::process::exit(64);
    };
    let threshold: f64 = match args.next() {
        Some(t) => t.parse()?,
        None => workers::DEFAULT_SPAM_THRESHOLD,
    };
    let model = SpamModel::embedded();
    let mut confusion = Confusion::default();
    for (name, text, is_spam) in read_corpus(&corpus)? {
        if is_held_out(&name) {
            confusion.add(model.score(&text).0 >= threshold, is_spam);
        }
    }
    let Confusion {
        true_spam,
        false_spam,
        true_ham,
        false_ham,
    } = confusion;
    println!(
        "held-out documents: {}",
        true_spam + false_spam + true_ham + false_ham
    );
    println!(
        "spam {} / ham {}",
        true_spam + false_ham,
        true_ham + false_spam
    );
    println!("threshold  {threshold}");
    println!("precision  {:.4}", confusion.precision());
    println!("recall     {:.4}", confusion.recall());
    println!("accuracy   {:.4}", confusion.accuracy());
    println!("confusion  tp={true_spam} fp={false_spam} tn={true_ham} fn={false_ham}");
    Ok(())
}
