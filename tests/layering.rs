//! The dependency rules of ARCHITECTURE.md, checked against the code: every file of
//! `core/src`, `connectors/src` and `src` belongs to one layer of the table under
//! "Dependency rules", imports only from its own layer or the ones below, and no files
//! import each other in a loop. A connector imports core and the connector contract,
//! never another connector.
//!
//! The imports are read from the source text: `use` trees, paths written in full
//! (`crate::db::Db`), and names of modules brought into scope (`use crate::db;` then
//! `db::open`, or a child module `mod service;` then `service::run`). Comments, strings
//! and `#[cfg(test)]` modules are left out: tests may use what they need.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fs,
    path::{Path, PathBuf},
};

/// The crates this test reads: their name in paths, and their source folder.
const CRATES: [(&str, &str); 3] =
    [("onhand_core", "core/src"), ("onhand_connectors", "connectors/src"), ("onhand", "src")];

/// A source file and where it sits: its crate and its module path.
#[derive(Debug, Clone)]
struct File {
    path: String,
    krate: &'static str,
    module: Vec<String>,
}

impl File {
    /// `crate::a::b` as this file's crate names it.
    fn absolute(&self) -> Vec<String> {
        std::iter::once(self.krate.to_string()).chain(self.module.iter().cloned()).collect()
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every non-test source file of the crates, keyed by its absolute module path.
fn files() -> BTreeMap<Vec<String>, File> {
    let mut files = BTreeMap::new();
    for (krate, dir) in CRATES {
        let base = root().join(dir);
        let mut stack = vec![base.clone()];
        while let Some(dir) = stack.pop() {
            for entry in fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                    continue;
                }
                let relative = path.strip_prefix(&base).unwrap();
                let Some(module) = module_of(relative) else { continue };
                let file =
                    File { path: path.strip_prefix(root()).unwrap().to_string_lossy().into_owned(), krate, module };
                files.insert(file.absolute(), file);
            }
        }
    }
    files
}

/// `db/postgres/reservations.rs` is module `db::postgres::reservations`, `db/mod.rs` is
/// `db`, `lib.rs` and `main.rs` are the crate's root; test files are not modules here.
fn module_of(relative: &Path) -> Option<Vec<String>> {
    if relative.extension()? != "rs" {
        return None;
    }
    let mut parts: Vec<String> = relative.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let last = parts.pop()?;
    let stem = last.strip_suffix(".rs")?;
    if stem == "tests" || parts.iter().any(|p| p == "tests") {
        return None;
    }
    if parts.is_empty() && stem == "main" {
        // The binary's root: named apart from the library's root `lib.rs`.
        return Some(vec!["main".to_string()]);
    }
    if !matches!(stem, "mod" | "lib") {
        parts.push(stem.to_string());
    }
    Some(parts)
}

/// The source with comments, strings, chars and `#[cfg(test)]` items blanked out.
fn code_of(source: &str) -> String {
    let bytes = source.as_bytes();
    let mut out = String::with_capacity(source.len());
    let mut i = 0;
    while i < bytes.len() {
        let rest = &source[i..];
        let skip = if rest.starts_with("//") {
            rest.find('\n').unwrap_or(rest.len())
        } else if rest.starts_with("/*") {
            rest.find("*/").map_or(rest.len(), |end| end + 2)
        } else if let Some(len) = raw_string_len(rest) {
            len
        } else if rest.starts_with('"') || rest.starts_with("b\"") {
            string_len(rest)
        } else if let Some(len) = char_literal_len(rest) {
            len
        } else if rest.starts_with("#[cfg(test)]") {
            item_len(rest)
        } else {
            let c = rest.chars().next().unwrap();
            out.push(c);
            i += c.len_utf8();
            continue;
        };
        out.push(' ');
        i += skip;
    }
    out
}

fn raw_string_len(rest: &str) -> Option<usize> {
    let after = rest.strip_prefix("br").or_else(|| rest.strip_prefix('r'))?;
    let hashes = after.len() - after.trim_start_matches('#').len();
    let body = after[hashes..].strip_prefix('"')?;
    let close = format!("\"{}", "#".repeat(hashes));
    let end = body.find(&close)?;
    Some(rest.len() - body.len() + end + close.len())
}

fn string_len(rest: &str) -> usize {
    let start = rest.find('"').unwrap() + 1;
    let mut escaped = false;
    for (i, c) in rest[start..].char_indices() {
        match (escaped, c) {
            (true, _) => escaped = false,
            (false, '\\') => escaped = true,
            (false, '"') => return start + i + 1,
            _ => {}
        }
    }
    rest.len()
}

/// A char literal (`'a'`, `'\n'`, `'\''`), not a lifetime (`'a`).
fn char_literal_len(rest: &str) -> Option<usize> {
    let mut chars = rest.char_indices();
    chars.next().filter(|(_, c)| *c == '\'')?;
    let (_, first) = chars.next()?;
    if first == '\\' {
        let close = rest[2..].find('\'')?;
        return Some(2 + close + 1);
    }
    let (i, second) = chars.next()?;
    (second == '\'').then_some(i + 1)
}

/// The attribute and the item it marks: up to the `;` or the matching `}`.
fn item_len(rest: &str) -> usize {
    let mut depth = 0;
    for (i, c) in rest.char_indices().skip("#[cfg(test)]".len()) {
        match c {
            '{' => depth += 1,
            '}' if depth == 1 => return i + 1,
            '}' => depth -= 1,
            ';' if depth == 0 => return i + 1,
            _ => {}
        }
    }
    rest.len()
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Ident(String),
    Path,
    Open,
    Close,
    Comma,
    Semi,
    Other,
}

fn tokens(code: &str) -> Vec<Token> {
    let mut tokens = Vec::new();
    let chars: Vec<char> = code.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            tokens.push(Token::Ident(chars[start..i].iter().collect()));
            continue;
        }
        let token = match c {
            ':' if chars.get(i + 1) == Some(&':') => {
                i += 1;
                Token::Path
            }
            '{' => Token::Open,
            '}' => Token::Close,
            ',' => Token::Comma,
            ';' => Token::Semi,
            c if c.is_whitespace() => {
                i += 1;
                continue;
            }
            _ => Token::Other,
        };
        tokens.push(token);
        i += 1;
    }
    tokens
}

/// Every path a file names, as written (`crate::db::Db`, `super::x`, `db::open`).
fn paths(tokens: &[Token]) -> (Vec<Vec<String>>, Vec<Vec<String>>) {
    let (mut used, mut written) = (Vec::new(), Vec::new());
    let mut i = 0;
    while i < tokens.len() {
        if tokens[i] == Token::Ident("use".into()) {
            i = use_tree(tokens, i + 1, &[], &mut used);
            continue;
        }
        if let Token::Ident(first) = &tokens[i] {
            let preceded_by_path = i > 0 && tokens[i - 1] == Token::Path;
            if !preceded_by_path && tokens.get(i + 1) == Some(&Token::Path) {
                let mut path = vec![first.clone()];
                let mut j = i + 1;
                while tokens.get(j) == Some(&Token::Path) {
                    match tokens.get(j + 1) {
                        Some(Token::Ident(next)) => path.push(next.clone()),
                        _ => break,
                    }
                    j += 2;
                }
                written.push(path);
                i = j;
                continue;
            }
        }
        i += 1;
    }
    (used, written)
}

/// Reads one use tree from `i`, pushing each full path; answers where it ends.
fn use_tree(tokens: &[Token], mut i: usize, prefix: &[String], out: &mut Vec<Vec<String>>) -> usize {
    let mut path = prefix.to_vec();
    loop {
        match tokens.get(i) {
            Some(Token::Ident(name)) if name == "as" => i += 2,
            Some(Token::Ident(name)) => {
                path.push(name.clone());
                i += 1;
            }
            Some(Token::Path) => i += 1,
            Some(Token::Open) => {
                i += 1;
                loop {
                    i = use_tree(tokens, i, &path, out);
                    match tokens.get(i) {
                        Some(Token::Comma) => i += 1,
                        Some(Token::Close) => return i + 1,
                        _ => return i,
                    }
                    if tokens.get(i) == Some(&Token::Close) {
                        return i + 1;
                    }
                }
            }
            _ => {
                if path.len() > prefix.len() {
                    out.push(path);
                }
                return if tokens.get(i) == Some(&Token::Semi) { i + 1 } else { i };
            }
        }
    }
}

/// A path as an absolute one (`onhand_core::db::Db`), resolved from `file`.
fn absolute(file: &File, path: &[String], aliases: &HashMap<String, Vec<String>>) -> Option<Vec<String>> {
    let (first, rest) = path.split_first()?;
    let mut base = match first.as_str() {
        "crate" => vec![file.krate.to_string()],
        "self" => file.absolute(),
        "super" => {
            let mut here = file.absolute();
            here.pop();
            let mut rest = rest;
            while rest.first().map(String::as_str) == Some("super") {
                here.pop();
                rest = &rest[1..];
            }
            return Some(here.into_iter().chain(rest.iter().cloned()).collect());
        }
        name if CRATES.iter().any(|(krate, _)| *krate == name) => vec![name.to_string()],
        name => aliases.get(name)?.clone(),
    };
    base.extend(rest.iter().cloned());
    Some(base)
}

/// The file that defines what `path` names: the longest prefix of it that is a module.
fn target<'a>(files: &'a BTreeMap<Vec<String>, File>, path: &[String]) -> Option<&'a File> {
    (1..=path.len()).rev().find_map(|len| files.get(&path[..len]))
}

/// Which files each file imports.
fn imports(files: &BTreeMap<Vec<String>, File>) -> BTreeMap<String, BTreeSet<String>> {
    let mut graph = BTreeMap::new();
    for file in files.values() {
        let code = code_of(&fs::read_to_string(root().join(&file.path)).unwrap());
        let tokens = tokens(&code);
        let (used, written) = paths(&tokens);
        // Names in scope that stand for modules: child modules, and modules used by name.
        let mut aliases: HashMap<String, Vec<String>> = HashMap::new();
        for pair in tokens.windows(2) {
            if let [Token::Ident(kw), Token::Ident(name)] = pair {
                if kw == "mod" {
                    aliases.insert(name.clone(), file.absolute().into_iter().chain([name.clone()]).collect());
                }
            }
        }
        for path in &used {
            let mut path = path.clone();
            if path.last().map(String::as_str) == Some("self") {
                path.pop();
            }
            if let Some(full) = absolute(file, &path, &aliases) {
                if files.contains_key(&full) {
                    aliases.insert(path.last().unwrap().clone(), full);
                }
            }
        }
        let edges: &mut BTreeSet<String> = graph.entry(file.path.clone()).or_default();
        for path in used.iter().chain(&written) {
            let Some(full) = absolute(file, path, &aliases) else { continue };
            if let Some(to) = target(files, &full) {
                if to.path != file.path {
                    edges.insert(to.path.clone());
                }
            }
        }
    }
    graph
}

/// The layers of ARCHITECTURE.md's table: module path (`core::ledger::rules`) to rank.
fn layers() -> Vec<(Vec<String>, u32, String)> {
    let doc = fs::read_to_string(root().join("ARCHITECTURE.md")).unwrap();
    let section = doc.split("## Dependency rules").nth(1).expect("ARCHITECTURE.md has a Dependency rules section");
    let mut layers = Vec::new();
    for row in section.lines().take_while(|l| !l.starts_with("## ")).filter(|l| l.starts_with('|')) {
        let cells: Vec<&str> = row.trim_matches('|').split('|').map(str::trim).collect();
        let [rank, layer, modules, ..] = cells[..] else { continue };
        let Ok(rank) = rank.parse::<u32>() else { continue };
        for module in modules.split(',').map(|m| m.trim().trim_matches('`')).filter(|m| !m.is_empty()) {
            let mut parts: Vec<String> = module.split("::").map(String::from).collect();
            parts[0] = match parts[0].as_str() {
                "core" => "onhand_core".into(),
                "connectors" => "onhand_connectors".into(),
                "onhand" => "onhand".into(),
                other => panic!("{other}: a layer's module starts with core, connectors or onhand"),
            };
            layers.push((parts, rank, layer.to_string()));
        }
    }
    assert!(!layers.is_empty(), "the Dependency rules table of ARCHITECTURE.md has no rows");
    layers
}

/// A file's layer: the most specific module of the table that contains it.
fn layer_of<'a>(layers: &'a [(Vec<String>, u32, String)], file: &File) -> Option<&'a (Vec<String>, u32, String)> {
    let module = file.absolute();
    layers.iter().filter(|(prefix, ..)| module.starts_with(prefix)).max_by_key(|(prefix, ..)| prefix.len())
}

/// The connector a file of `connectors/src` belongs to, if any.
fn connector_of(file: &File) -> Option<&str> {
    (file.krate == "onhand_connectors" && file.module.len() > 1).then(|| file.module[0].as_str())
}

#[test]
fn every_file_imports_only_from_its_layer_or_below() {
    let files = files();
    let layers = layers();
    let graph = imports(&files);
    let by_path: HashMap<&str, &File> = files.values().map(|f| (f.path.as_str(), f)).collect();
    let mut wrong = Vec::new();
    for file in files.values() {
        let Some((_, rank, layer)) = layer_of(&layers, file) else {
            wrong.push(format!("{}: in no layer; add its module to ARCHITECTURE.md's Dependency rules", file.path));
            continue;
        };
        for to in &graph[&file.path] {
            let imported = by_path[to.as_str()];
            let Some((_, to_rank, to_layer)) = layer_of(&layers, imported) else { continue };
            if to_rank > rank {
                wrong.push(format!(
                    "{} ({layer}, {rank}) imports {to} ({to_layer}, {to_rank}), a layer above it",
                    file.path
                ));
            }
            if let (Some(from), Some(other)) = (connector_of(file), connector_of(imported)) {
                if from != other {
                    wrong.push(format!("{}: connector {from} imports connector {other} ({to})", file.path));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "imports against the dependency rules:\n{}", wrong.join("\n"));
}

#[test]
fn no_files_import_each_other_in_a_loop() {
    let graph = imports(&files());
    let circles = strongly_connected(&graph);
    let loops: Vec<String> = circles.iter().filter(|c| c.len() > 1).map(|c| c.join(" <-> ")).collect();
    assert!(loops.is_empty(), "files that import each other in a loop:\n{}", loops.join("\n"));
}

#[test]
fn the_reader_sees_the_imports_it_must() {
    // A check of the checker: known imports of the tree are found.
    let graph = imports(&files());
    for (from, to) in [
        ("core/src/api/reservations.rs", "core/src/reservation/service.rs"),
        ("core/src/db/mod.rs", "core/src/freshness/mod.rs"),
        ("core/src/ledger/mod.rs", "core/src/db/mod.rs"),
        ("src/app.rs", "core/src/api/mod.rs"),
    ] {
        assert!(graph[from].contains(to), "{from} imports {to}; read: {:?}", graph[from]);
    }
    let code =
        code_of("use a::{b, c::{d as e}}; // use x::y;\nlet s = \"crate::z\"; #[cfg(test)]\nmod tests { use w; }");
    let (used, _) = paths(&tokens(&code));
    assert_eq!(used, [vec!["a", "b"], vec!["a", "c", "d"]]);
}

/// Tarjan's algorithm: the groups of files that reach each other.
fn strongly_connected(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct Walk<'a> {
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        index: HashMap<&'a str, usize>,
        low: HashMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        groups: Vec<Vec<String>>,
    }
    fn visit<'a>(walk: &mut Walk<'a>, node: &'a str) {
        let n = walk.index.len();
        walk.index.insert(node, n);
        walk.low.insert(node, n);
        walk.stack.push(node);
        walk.on_stack.insert(node);
        for next in walk.graph.get(node).into_iter().flatten() {
            let next = next.as_str();
            if !walk.index.contains_key(next) {
                visit(walk, next);
                let low = walk.low[node].min(walk.low[next]);
                walk.low.insert(node, low);
            } else if walk.on_stack.contains(next) {
                let low = walk.low[node].min(walk.index[next]);
                walk.low.insert(node, low);
            }
        }
        if walk.low[node] == walk.index[node] {
            let mut group = Vec::new();
            while let Some(top) = walk.stack.pop() {
                walk.on_stack.remove(top);
                group.push(top.to_string());
                if top == node {
                    break;
                }
            }
            group.sort();
            walk.groups.push(group);
        }
    }
    let mut walk = Walk {
        graph,
        index: HashMap::new(),
        low: HashMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        groups: Vec::new(),
    };
    for node in graph.keys() {
        if !walk.index.contains_key(node.as_str()) {
            visit(&mut walk, node);
        }
    }
    walk.groups
}
