//! Every metric the documentation and the deployment files name exists in the code: a
//! dashboard panel, an alert or a runbook that names a metric nobody exports shows
//! nothing and says nothing. No server: the names are read from the source.
//!
//! What counts as a metric mention: each `onhand_[a-z0-9_]+` token of docs/**/*.md,
//! README.md, ARCHITECTURE.md and deploy/** (yml, yaml, json, md, toml), except
//! - a Rust path (`onhand_core::ledger`, followed by `::`),
//! - the few names that are not metrics, in [`NOT_METRICS`] (databases, roles, crates,
//!   Compose's network and volume names).
//!
//! A token ending in `_` (`onhand_source_*`) names a family: some metric must start with
//! it. A histogram's series (`_bucket`, `_sum`, `_count`) count as their histogram.
//!
//! The metrics defined are the `"onhand_..."` string literals of core/src, connectors/src
//! and src, test code left out (`testing.rs`, `tests.rs`, and what follows `#[cfg(test)]`).

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

/// `onhand_` names that are not metrics: a name here matches itself, or, ending in `*`,
/// every name it starts.
const NOT_METRICS: [&str; 6] = [
    "onhand_core",       // the core crate, in RUST_LOG filters and log targets
    "onhand_connectors", // the connectors crate
    "onhand_test*",      // the test databases (onhand_test_14939_0_fdd5eeb6)
    "onhand_reader",     // the ERP database role of docs/connectors/erp.md
    "onhand_default",    // the network Compose creates for project onhand
    "onhand_postgres",   // the volume of deploy/compose.yaml
];

const HISTOGRAM_SERIES: [&str; 3] = ["_bucket", "_sum", "_count"];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Files under `dir` whose extension is one of `extensions`, recursively.
fn files(dir: &Path, extensions: &[&str], out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            files(&path, extensions, out);
        } else if path.extension().and_then(|e| e.to_str()).is_some_and(|e| extensions.contains(&e)) {
            out.push(path);
        }
    }
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'
}

/// Each `onhand_[a-z0-9_]+` token of `text` that starts a word, with the text after it.
fn tokens(text: &str) -> Vec<(&str, &str)> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(found) = text[from..].find("onhand_") {
        let start = from + found;
        let end = text[start..].find(|c: char| !is_name_char(c)).map_or(text.len(), |n| start + n);
        let starts_word = !text[..start].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_');
        if starts_word {
            out.push((&text[start..end], &text[end..]));
        }
        from = end;
    }
    out
}

fn not_a_metric(token: &str, after: &str) -> bool {
    after.starts_with("::")
        || NOT_METRICS.iter().any(|name| match name.strip_suffix('*') {
            Some(prefix) => token.starts_with(prefix),
            None => token == *name,
        })
}

/// Whether `token` names a metric of `defined`, a histogram's series or a family.
fn is_defined(token: &str, defined: &BTreeSet<String>) -> bool {
    if token.ends_with('_') {
        return defined.iter().any(|name| name.starts_with(token));
    }
    defined.contains(token)
        || HISTOGRAM_SERIES.iter().any(|suffix| token.strip_suffix(suffix).is_some_and(|base| defined.contains(base)))
}

/// The metric names of `text` that `defined` does not hold.
fn unknown_names(text: &str, defined: &BTreeSet<String>) -> BTreeSet<String> {
    tokens(text)
        .into_iter()
        .filter(|(token, after)| !not_a_metric(token, after) && !is_defined(token, defined))
        .map(|(token, _)| token.to_string())
        .collect()
}

/// The `"onhand_..."` string literals of the non-test code of `source`.
fn literals(source: &str) -> impl Iterator<Item = String> + '_ {
    let code = source.split("#[cfg(test)]").next().unwrap_or_default();
    tokens(code)
        .into_iter()
        .filter(|(token, after)| after.starts_with('"') && code.contains(&format!("\"{token}\"")))
        .map(|(token, _)| token.to_string())
}

fn defined_metrics() -> BTreeSet<String> {
    let mut sources = Vec::new();
    for dir in ["core/src", "connectors/src", "src"] {
        files(&root().join(dir), &["rs"], &mut sources);
    }
    sources.retain(|path| !matches!(path.file_name().and_then(|n| n.to_str()), Some("testing.rs" | "tests.rs")));
    sources.iter().flat_map(|path| literals(&std::fs::read_to_string(path).unwrap()).collect::<Vec<_>>()).collect()
}

fn documents() -> Vec<PathBuf> {
    let mut out = vec![root().join("README.md"), root().join("ARCHITECTURE.md")];
    files(&root().join("docs"), &["md"], &mut out);
    files(&root().join("deploy"), &["yml", "yaml", "json", "md", "toml"], &mut out);
    out
}

#[test]
fn every_metric_the_docs_and_deploy_files_name_is_defined_in_the_code() {
    let defined = defined_metrics();
    // The registries of core and of the connectors hold at least these many.
    assert!(defined.len() >= 60, "only {} metric names found in the code: {defined:?}", defined.len());
    let mut unknown = Vec::new();
    for path in documents() {
        let text = std::fs::read_to_string(&path).unwrap();
        for name in unknown_names(&text, &defined) {
            let file = path.strip_prefix(root()).unwrap_or(&path).display().to_string();
            unknown.push(format!("{file}: {name}"));
        }
    }
    assert!(
        unknown.is_empty(),
        "metrics named in the docs but defined nowhere in core/src, connectors/src or src (a typo, a renamed \
         metric, or a name that is no metric: add it to NOT_METRICS then):\n{}",
        unknown.join("\n")
    );
}

#[test]
fn a_misspelt_name_is_caught_and_what_is_no_metric_is_not() {
    let defined: BTreeSet<String> =
        ["onhand_ledger_behind_seconds", "onhand_query_propagation_seconds", "onhand_source_gap"]
            .map(String::from)
            .into();
    let text = "\
        `onhand_ledger_behind_seconds{partition}` > 60 and `onhand_ledger_behind_secnds` (a typo);\n\
        rate(onhand_query_propagation_seconds_bucket[5m]), onhand_query_propagation_seconds_count,\n\
        onhand_query_propagation_seconds_buckets; the `onhand_source_*` family, not `onhand_sorce_*`;\n\
        RUST_LOG=onhand_core::ledger=debug, postgres://onhand_reader@db/onhand_test_1_2, \
        the volume onhand_postgres, and xonhand_unknown_total inside another word.";
    let unknown = unknown_names(text, &defined);
    let expected: BTreeSet<String> =
        ["onhand_ledger_behind_secnds", "onhand_query_propagation_seconds_buckets", "onhand_sorce_"]
            .map(String::from)
            .into();
    assert_eq!(unknown, expected);
}

#[test]
fn the_code_defines_metrics_by_string_literals_outside_its_tests() {
    let source = r#"
        let c = counter("onhand_ledger_rejoins_total", "Times the ledger rejoined.");
        // onhand_not_a_literal_total in a comment
        #[cfg(test)]
        mod tests { const NAME: &str = "onhand_only_in_a_test_total"; }
    "#;
    assert_eq!(literals(source).collect::<Vec<_>>(), ["onhand_ledger_rejoins_total"]);
}
