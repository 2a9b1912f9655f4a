//! `cargo xtask tidy`: the workspace's invariants, checked from its files.
//!
//! - swav-augment and swav-data have no burn in their dependency trees;
//! - workspace crates depend on each other only in the documented direction, and swav-models
//!   on the engine only through its `engine` feature;
//! - no two modules of a crate import each other, directly or through others;
//! - `unsafe` code lives in swav-engine alone, and the block-caching allocator is installed
//!   only by binaries;
//! - library crates use no global RNG and no anyhow; every Rust file starts with `//!`;
//! - product docs (README, ARCHITECTURE, docs/) and doc comments describe the product as it
//!   is: no development history, no paths outside the repository.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// The library crates: everything but xtask.
const LIBRARY_CRATES: [&str; 7] = [
    "swav-core",
    "swav-engine",
    "swav-augment",
    "swav-data",
    "swav-models",
    "swav-train",
    "swav-eval",
];

/// The crates that are applications (binaries and the code they share), and tinynet (a
/// backbone crate checked like a library).
const APPLICATION_CRATES: [&str; 3] = ["swav-cli", "xtask", "tinynet"];

/// Calls that draw from a process-global or OS-seeded generator. Library code takes a seeded
/// generator as an argument instead, so runs are reproducible.
const GLOBAL_RNG_PATTERNS: [&str; 6] = [
    "rand::rng(",
    "thread_rng(",
    "rand::random",
    "from_entropy(",
    "from_os_rng(",
    "OsRng",
];

/// Runs every check and reports each violation.
pub fn run(root: &Path) -> Result<()> {
    let mut problems = Vec::new();
    for krate in ["swav-augment", "swav-data"] {
        problems.extend(check_no_burn(root, krate)?);
    }
    problems.extend(check_engine_feature(root)?);
    problems.extend(check_module_cycles(root)?);
    problems.extend(check_unsafe_and_allocator(root)?);
    problems.extend(check_product_docs(root)?);
    problems.extend(check_library_sources(root)?);
    problems.extend(check_file_headers(root)?);
    problems.extend(check_no_anyhow_in_libraries(root)?);
    problems.extend(check_crate_graph(root)?);
    if problems.is_empty() {
        println!("tidy: all invariants hold");
        Ok(())
    } else {
        for p in &problems {
            eprintln!("tidy: {p}");
        }
        bail!("{} invariant violation(s)", problems.len())
    }
}

/// `cargo tree -p KRATE` (all edge kinds) must not mention burn: the crate is usable alone.
fn check_no_burn(root: &Path, krate: &str) -> Result<Vec<String>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(root)
        .args([
            "tree",
            "-p",
            krate,
            "-e",
            "normal,build,dev",
            "--prefix",
            "none",
            "--offline",
        ])
        .output()
        .context("running cargo tree")?;
    if !out.status.success() {
        bail!(
            "cargo tree -p {krate} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let tree = String::from_utf8_lossy(&out.stdout);
    let mut burn: Vec<&str> = tree
        .lines()
        .filter(|l| l.starts_with("burn"))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    burn.sort_unstable();
    burn.dedup();
    Ok(if burn.is_empty() {
        Vec::new()
    } else {
        vec![format!(
            "{krate} must not depend on burn, but its dependency tree has {}",
            burn.join(", ")
        )]
    })
}

/// Library crates must not draw from a global or OS-seeded RNG.
fn check_library_sources(root: &Path) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    for krate in LIBRARY_CRATES {
        for file in rust_files(&root.join(krate))? {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            for (n, line) in text.lines().enumerate() {
                let code = line.split("//").next().unwrap_or("");
                for pat in GLOBAL_RNG_PATTERNS {
                    if code.contains(pat) {
                        problems.push(format!(
                            "{}:{}: library code uses a global RNG (`{pat}`); pass a seeded RNG",
                            rel(root, &file),
                            n + 1
                        ));
                    }
                }
            }
        }
    }
    Ok(problems)
}

/// Every Rust file of the workspace opens with a `//!` line saying what it holds.
fn check_file_headers(root: &Path) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    for krate in LIBRARY_CRATES.iter().chain(&APPLICATION_CRATES) {
        for file in rust_files(&root.join(krate))? {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            if !text.trim_start().starts_with("//!") {
                problems.push(format!(
                    "{}: does not start with a `//!` line saying what it holds",
                    rel(root, &file)
                ));
            }
        }
    }
    Ok(problems)
}

/// The workspace's crates: folder and package name.
const WORKSPACE_CRATES: [(&str, &str); 10] = [
    ("swav-core", "swav-core"),
    ("swav-augment", "swav-augment"),
    ("swav-engine", "swav-engine"),
    ("swav-data", "swav-data"),
    ("swav-models", "swav-models"),
    ("swav-eval", "swav-eval"),
    ("swav-train", "swav-train"),
    ("tinynet", "swav-tinynet"),
    ("swav-cli", "swav-cli"),
    ("xtask", "xtask"),
];

/// Where ARCHITECTURE.md's crate graph starts and ends.
const GRAPH_START: &str =
    "<!-- crate graph (cargo xtask tidy checks it against the Cargo.toml files) -->";
const GRAPH_END: &str = "<!-- end of crate graph -->";

/// A dependency of one workspace crate on another.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct CrateEdge {
    to: String,
    optional: bool,
}

/// Every workspace crate's normal and build dependencies on other workspace crates.
fn crate_graph(root: &Path) -> Result<BTreeMap<String, Vec<CrateEdge>>> {
    let names: BTreeSet<&str> = WORKSPACE_CRATES.iter().map(|(_, n)| *n).collect();
    let mut graph = BTreeMap::new();
    for (dir, name) in WORKSPACE_CRATES {
        let manifest = root.join(dir).join("Cargo.toml");
        let text = std::fs::read_to_string(&manifest)
            .with_context(|| format!("reading {}", manifest.display()))?;
        let mut section = String::new();
        let mut edges = Vec::new();
        for line in text.lines().map(str::trim) {
            if line.starts_with('[') {
                section = line.to_string();
                continue;
            }
            if section != "[dependencies]" && section != "[build-dependencies]" {
                continue;
            }
            let dep = line.split(['=', ' ', '.']).next().unwrap_or("");
            if names.contains(dep) {
                let optional = line.replace(' ', "").contains("optional=true");
                edges.push(CrateEdge {
                    to: dep.to_string(),
                    optional,
                });
            }
        }
        edges.sort();
        graph.insert(name.to_string(), edges);
    }
    Ok(graph)
}

/// The graph as ARCHITECTURE.md shows it: one row per crate, bottom up (a crate after all it
/// depends on), then by name.
fn render_graph(graph: &BTreeMap<String, Vec<CrateEdge>>) -> String {
    fn depth(graph: &BTreeMap<String, Vec<CrateEdge>>, name: &str, seen: usize) -> usize {
        match graph.get(name) {
            Some(edges) if seen < graph.len() => edges
                .iter()
                .map(|e| 1 + depth(graph, &e.to, seen + 1))
                .max()
                .unwrap_or(0),
            _ => 0,
        }
    }
    let mut rows: Vec<(usize, &String)> = graph
        .keys()
        .map(|name| (depth(graph, name, 0), name))
        .collect();
    rows.sort();
    let mut out = String::from("| crate | depends on (workspace crates) |\n|---|---|\n");
    for (_, name) in rows {
        let deps: Vec<String> = graph[name]
            .iter()
            .map(|e| {
                if e.optional {
                    format!("`{}` (optional)", e.to)
                } else {
                    format!("`{}`", e.to)
                }
            })
            .collect();
        let deps = if deps.is_empty() {
            "none".to_string()
        } else {
            deps.join(", ")
        };
        out.push_str(&format!("| `{name}` | {deps} |\n"));
    }
    out
}

/// ARCHITECTURE.md's crate graph is the one the Cargo.toml files make: a dependency added or
/// removed in a manifest fails tidy until the graph shows it (and a review sees it).
fn check_crate_graph(root: &Path) -> Result<Vec<String>> {
    let path = root.join("ARCHITECTURE.md");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let expected = render_graph(&crate_graph(root)?);
    let drawn = text
        .split_once(GRAPH_START)
        .and_then(|(_, rest)| rest.split_once(GRAPH_END))
        .map(|(block, _)| block.trim().to_string());
    Ok(match drawn {
        Some(d) if d == expected.trim() => Vec::new(),
        Some(_) => vec![format!(
            "ARCHITECTURE.md: the crate graph differs from the Cargo.toml files; the graph they \
             make is:\n{expected}"
        )],
        None => vec![format!(
            "ARCHITECTURE.md: no crate graph between `{GRAPH_START}` and `{GRAPH_END}`"
        )],
    })
}

/// `anyhow` belongs to binaries and xtask; library crates return `thiserror` errors.
fn check_no_anyhow_in_libraries(root: &Path) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    for krate in LIBRARY_CRATES {
        let manifest = root.join(krate).join("Cargo.toml");
        if manifest_dependencies(&manifest, &["[dependencies]"])?
            .iter()
            .any(|n| n == "anyhow")
        {
            problems.push(format!(
                "{}: library crate depends on anyhow; use a thiserror enum",
                rel(root, &manifest)
            ));
        }
    }
    Ok(problems)
}

/// Names of the dependencies listed in `sections` of a crate's manifest.
fn manifest_dependencies(manifest: &Path, sections: &[&str]) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(manifest)
        .with_context(|| format!("reading {}", manifest.display()))?;
    let mut section = String::new();
    let mut names = Vec::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('[') {
            section = t.to_string();
        } else if sections.contains(&section.as_str()) {
            let name = t.split(['=', ' ', '.']).next().unwrap_or("");
            if !name.is_empty() && !name.starts_with('#') {
                names.push(name.to_string());
            }
        }
    }
    Ok(names)
}

fn rust_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            Err(_) => continue,
        };
        for entry in entries {
            let path = entry?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if path.is_dir() {
                if name != "target" && !name.starts_with('.') {
                    stack.push(path);
                }
            } else if name.ends_with(".rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

fn rel(root: &Path, p: &Path) -> String {
    p.strip_prefix(root).unwrap_or(p).display().to_string()
}

/// swav-models reaches the engine only through its `engine` feature (on by default), so a
/// backbone crate can build on the models without the kernels.
fn check_engine_feature(root: &Path) -> Result<Vec<String>> {
    let manifest = root.join("swav-models").join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest)
        .with_context(|| format!("reading {}", manifest.display()))?;
    let mut problems = Vec::new();
    let mut section = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('[') {
            section = t.to_string();
        } else if section == "[dependencies]"
            && t.starts_with("swav-engine")
            && !t.contains("optional = true")
        {
            problems.push(format!(
                "{}: swav-engine must be an optional dependency (the `engine` feature)",
                rel(root, &manifest)
            ));
        }
    }
    if !text.contains("engine = [\"dep:swav-engine\"]") {
        problems.push(format!(
            "{}: no `engine = [\"dep:swav-engine\"]` feature",
            rel(root, &manifest)
        ));
    }
    Ok(problems)
}

/// The top-level module a source file of a crate's `src/` is (`lib`, `main` and `bin/*` are
/// roots, not modules).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?.to_string();
    let name = first.strip_suffix(".rs").unwrap_or(&first).to_string();
    (!matches!(name.as_str(), "lib" | "main" | "bin")).then_some(name)
}

/// The top-level modules of its crate a file's code names through `crate::` (in `use` lines
/// and paths, comments excluded).
fn crate_references(text: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            let rest_trim = rest.trim_start_matches('{');
            // `use crate::{a::X, b::Y}` names several.
            let names: Vec<&str> = if rest.starts_with('{') {
                rest_trim
                    .split('}')
                    .next()
                    .unwrap_or("")
                    .split(',')
                    .map(str::trim)
                    .collect()
            } else {
                vec![rest_trim]
            };
            for n in names {
                let m: String = n
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if modules.contains(&m) {
                    found.insert(m);
                }
            }
        }
    }
    found
}

/// No import circles between the modules of a crate: a module may not use another that uses
/// it back, directly or through others.
fn check_module_cycles(root: &Path) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    for krate in LIBRARY_CRATES.iter().chain(&APPLICATION_CRATES) {
        let src = root.join(krate).join("src");
        let files = rust_files(&src)?;
        let modules: BTreeSet<String> = files.iter().filter_map(|f| module_of(&src, f)).collect();
        let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for file in &files {
            let Some(m) = module_of(&src, file) else {
                continue;
            };
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("reading {}", file.display()))?;
            // A module's own tests (`#[cfg(test)] mod tests`) import it through `super::`.
            let code = text.split("#[cfg(test)]").next().unwrap_or(&text);
            let refs = crate_references(code, &modules);
            edges
                .entry(m.clone())
                .or_default()
                .extend(refs.into_iter().filter(|r| *r != m));
        }
        for cycle in cycles(&edges) {
            problems.push(format!(
                "{krate}: modules import each other in a circle: {}",
                cycle.join(" -> ")
            ));
        }
    }
    Ok(problems)
}

/// Every circle of the graph, once each (as found from its smallest module).
fn cycles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    fn walk(
        start: &str,
        node: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        out: &mut Vec<Vec<String>>,
    ) {
        for next in edges.get(node).into_iter().flatten() {
            if next == start {
                let mut c = path.clone();
                c.push(start.to_string());
                out.push(c);
            } else if next.as_str() > start && !path.contains(next) {
                path.push(next.clone());
                walk(start, next, edges, path, out);
                path.pop();
            }
        }
    }
    let mut out = Vec::new();
    for start in edges.keys() {
        let mut path = vec![start.clone()];
        walk(start, start, edges, &mut path, &mut out);
    }
    out
}

/// `unsafe` code only in swav-engine; the block-caching allocator installed only by binaries
/// (xtask, swav-cli, `src/bin/`, benches, examples), never by a library.
fn check_unsafe_and_allocator(root: &Path) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    for krate in LIBRARY_CRATES.iter().chain(&APPLICATION_CRATES) {
        for file in rust_files(&root.join(krate))? {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let r = rel(root, &file);
            let binary = ["xtask", "swav-cli"].contains(krate)
                || ["/bin/", "/benches/", "/examples/"]
                    .iter()
                    .any(|d| r.contains(d));
            for (n, line) in text.lines().enumerate() {
                let code = without_strings(line.split("//").next().unwrap_or(""));
                if *krate != "swav-engine"
                    && (code.contains("unsafe ")
                        || code.contains("unsafe{")
                        || code.contains("unsafe_code"))
                {
                    problems.push(format!("{r}:{}: unsafe code outside swav-engine", n + 1));
                }
                if code.contains("BlockCache") && !binary && *krate != "swav-engine" {
                    problems.push(format!(
                        "{r}:{}: the block-caching allocator is for binaries, not libraries",
                        n + 1
                    ));
                }
            }
        }
    }
    Ok(problems)
}

/// `code` with the contents of its string literals blanked (a check's own patterns are not
/// code).
fn without_strings(code: &str) -> String {
    let mut out = String::with_capacity(code.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in code.chars() {
        if in_string {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
                out.push(c);
            }
        } else {
            if c == '"' {
                in_string = true;
            }
            out.push(c);
        }
    }
    out
}

/// Words that narrate development history, and paths outside the repository, as
/// (pattern, what it is): matched case-insensitively, as words.
const NARRATION: [(&str, &str); 5] = [
    ("session ", "development history (a work session)"),
    ("sessions ", "development history (work sessions)"),
    ("issue ", "development history (an issue number)"),
    ("issues ", "development history (issue numbers)"),
    ("../shared", "a path outside the repository"),
];

/// The narration patterns a line matches: a word from [`NARRATION`] followed by a number (or
/// `#` and a number), or the outside path anywhere.
fn narration(line: &str) -> Vec<&'static str> {
    let lower = line.to_lowercase();
    let mut found = Vec::new();
    for (pat, what) in NARRATION {
        let mut rest = lower.as_str();
        while let Some(i) = rest.find(pat) {
            let before = rest[..i].chars().last();
            let after = rest[i + pat.len()..].trim_start_matches('#');
            let word_start = before.is_none_or(|c| !c.is_alphanumeric());
            let numbered = after.starts_with(|c: char| c.is_ascii_digit());
            if pat.starts_with("..") || (word_start && numbered) {
                found.push(what);
                break;
            }
            rest = &rest[i + pat.len()..];
        }
    }
    found
}

/// README, ARCHITECTURE, docs/ and every doc comment describe the product as it is: history
/// goes to CHANGELOG.md, and nothing points outside the repository.
fn check_product_docs(root: &Path) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    let mut docs = vec![root.join("README.md"), root.join("ARCHITECTURE.md")];
    let mut stack = vec![root.join("docs")];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten() {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "md") {
                docs.push(path);
            }
        }
    }
    for krate in LIBRARY_CRATES.iter().chain(&APPLICATION_CRATES) {
        let readme = root.join(krate).join("README.md");
        if readme.is_file() {
            docs.push(readme);
        }
    }
    docs.sort();
    for doc in docs.iter().filter(|d| d.is_file()) {
        let text =
            std::fs::read_to_string(doc).with_context(|| format!("reading {}", doc.display()))?;
        for (n, line) in text.lines().enumerate() {
            for what in narration(line) {
                problems.push(format!("{}:{}: {what}", rel(root, doc), n + 1));
            }
        }
    }
    for krate in LIBRARY_CRATES.iter().chain(&APPLICATION_CRATES) {
        for file in rust_files(&root.join(krate))? {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            for (n, line) in text.lines().enumerate() {
                let t = line.trim_start();
                if !(t.starts_with("///") || t.starts_with("//!")) {
                    continue;
                }
                for what in narration(t) {
                    problems.push(format!(
                        "{}:{}: {what} in a doc comment",
                        rel(root, &file),
                        n + 1
                    ));
                }
            }
        }
    }
    Ok(problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn narration_is_found_as_numbered_words_only() {
        assert!(!narration("Measured in session 9 on the AVX-512 machine").is_empty());
        assert!(!narration("as issue #12 asked").is_empty());
        assert!(!narration("copy ../shared/refs/x.py").is_empty());
        assert!(narration("a training session of 3 epochs is short").is_empty());
        assert!(narration("the issue is the learning rate").is_empty());
        assert!(narration("sessions are cheap").is_empty());
    }

    #[test]
    fn circles_are_found_through_other_modules() {
        let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut add = |a: &str, b: &str| {
            edges.entry(a.into()).or_default().insert(b.into());
        };
        add("a", "b");
        add("b", "c");
        add("c", "a");
        add("c", "d");
        assert_eq!(cycles(&edges), vec![vec!["a", "b", "c", "a"]]);
        let modules: BTreeSet<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let refs = crate_references(
            "use crate::{a::X, b};\nlet y = crate::c::f(); // crate::d\n",
            &modules,
        );
        assert_eq!(refs.into_iter().collect::<Vec<_>>(), vec!["a", "b", "c"]);
    }
}
