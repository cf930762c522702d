//! The plan, checked: which module may name which, and no import cycle between files.
//!
//! Reads `src/` and collects, per file, the crate paths it names (`crate::x::y`, `super::z`, and the
//! modules of `use crate::{a, b}` groups), resolves them to files, and checks the rules of the README's
//! architecture. `SMARTSCHEDULER_PRINT_MODULE_GRAPH=1 cargo test --test architecture -- --nocapture` prints
//! the module graph (for reviews); `SMARTSCHEDULER_ARCH_SRC=<dir>` reads another tree's `src/`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level modules that must not name each other, as (from, to): data flows one way, writer → outbox →
/// relay → event_log → stream → http, and the relay and the stream meet only in `event_log`.
const FORBIDDEN: &[(&str, &str)] = &[
    ("relay", "stream"),
    ("stream", "relay"),
    ("outbox", "recommendations"),
    ("outbox", "http"),
    ("outbox", "relay"),
    ("outbox", "stream"),
    ("recommendations", "stream"),
    ("recommendations", "relay"),
    ("recommendations", "http"),
    ("event_log", "relay"),
    ("event_log", "stream"),
    ("auth", "http"),
    ("auth", "stream"),
    ("watches", "http"),
    ("watches", "stream"),
    ("watches", "relay"),
    // Receipts are stored and read by their own module; the hub only passes their hints on.
    ("receipts", "http"),
    ("receipts", "stream"),
    ("receipts", "relay"),
    ("receipts", "broker"),
    // The broker meets the relay and the hub only in event_log (the rows, `FeedTarget`) and server.rs:
    // the hub does not care where its events come from, and the relay does not know it is copied on.
    ("broker", "stream"),
    ("broker", "relay"),
    ("broker", "http"),
    ("stream", "broker"),
    ("relay", "broker"),
    ("event_log", "broker"),
];

/// A file of the library, by module path (`stream::hub`), and the module paths it names.
type Graph = BTreeMap<String, BTreeSet<String>>;

fn src_dir() -> PathBuf {
    std::env::var_os("SMARTSCHEDULER_ARCH_SRC")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("src"))
}

/// `a/b.rs` and `a/b/mod.rs` → `a::b`; `lib.rs` → `` (the crate root). Binaries are not the library.
fn module_of(relative: &Path) -> Option<String> {
    let text = relative.to_str()?.strip_suffix(".rs")?;
    if text == "main" || text.starts_with("bin/") || text == "lib" {
        return (text == "lib").then(String::new);
    }
    Some(text.strip_suffix("/mod").unwrap_or(text).replace('/', "::"))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src is readable").flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The text without comments and string literals, so that a path in a doc comment is not an import.
fn code_only(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            // A raw string `r#"..."#` (SQL may hold quotes): skip to its closing `"#`.
            'r' if chars.peek() == Some(&'#') => {
                let mut last = ' ';
                for c in chars.by_ref() {
                    if c == '#' && last == '"' {
                        break;
                    }
                    last = c;
                }
                out.push_str("\"\"");
            }
            // A char literal (`'"'`, `'\''`), not a lifetime (`'a`).
            '\'' => {
                let mut ahead = chars.clone();
                match (ahead.next(), ahead.next()) {
                    (Some('\\'), _) => {
                        chars.next();
                        chars.next();
                        for c in chars.by_ref() {
                            if c == '\'' {
                                break;
                            }
                        }
                    }
                    (Some(_), Some('\'')) => {
                        chars.next();
                        chars.next();
                    }
                    _ => out.push(c),
                }
            }
            '/' if chars.peek() == Some(&'/') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            '"' => {
                let mut escaped = false;
                for c in chars.by_ref() {
                    if c == '"' && !escaped {
                        break;
                    }
                    escaped = c == '\\' && !escaped;
                }
                out.push_str("\"\"");
            }
            _ => out.push(c),
        }
    }
    out
}

/// Every `crate::a::b` or `super::x` path in `code`, as absolute module paths (`from` is the file's own).
fn named_paths(code: &str, from: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    for (start, root) in code
        .match_indices("crate::")
        .map(|(i, _)| (i, "crate"))
        .chain(code.match_indices("super::").map(|(i, _)| (i, "super")))
    {
        if start > 0 && code[..start].ends_with(|c: char| ident(c) || c == ':') {
            continue; // `foo::super::` or `$crate::`
        }
        let rest = &code[start + root.len() + 2..];
        let mut base: Vec<String> = match root {
            "crate" => Vec::new(),
            _ => {
                // `super` of `a::b` (file a/b.rs) is `a`; of `a::b` in a/b/mod.rs it is `a` too.
                let mut parts: Vec<String> = from.split("::").filter(|p| !p.is_empty()).map(str::to_owned).collect();
                parts.pop();
                parts
            }
        };
        let tail: String = rest
            .chars()
            .take_while(|c| ident(*c) || *c == ':' || *c == '{' || *c == ',' || *c == ' ' || *c == '\n')
            .collect();
        if let Some(group) = tail.split_once('{') {
            // `crate::a::{b, c::d}`: the prefix, then each member's first segment.
            let prefix: Vec<&str> = group.0.split("::").map(str::trim).filter(|p| !p.is_empty()).collect();
            base.extend(prefix.iter().map(|p| (*p).to_owned()));
            for member in group.1.split(',') {
                let first = member.trim().split("::").next().unwrap_or("").trim();
                if !first.is_empty() && first != "self" {
                    let mut path = base.clone();
                    path.push(first.to_owned());
                    found.insert(path.join("::"));
                }
            }
            if !base.is_empty() {
                found.insert(base.join("::"));
            }
        } else {
            base.extend(
                tail.split("::")
                    .map(str::trim)
                    .take_while(|p| !p.is_empty() && p.chars().all(ident))
                    .map(str::to_owned),
            );
            found.insert(base.join("::"));
        }
    }
    found
}

/// The graph of files: each file's module → the files (modules) it names. A named item inside a module
/// (`crate::stream::hub::Hub`) resolves to the longest module path that is a file.
fn graph() -> Graph {
    let root = src_dir();
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    let modules: BTreeMap<String, String> = files
        .iter()
        .filter_map(|f| {
            let relative = f.strip_prefix(&root).ok()?;
            Some((module_of(relative)?, std::fs::read_to_string(f).ok()?))
        })
        .collect();
    let resolve = |path: &str| -> Option<String> {
        let parts: Vec<&str> = path.split("::").collect();
        (1..=parts.len()).rev().map(|n| parts[..n].join("::")).find(|m| modules.contains_key(m))
    };
    // Files declared `#[cfg(test)] mod x;` are tests, whatever their name.
    let test_files: BTreeSet<String> = modules
        .iter()
        .flat_map(|(module, text)| {
            test_module_names(&code_only(text))
                .into_iter()
                .map(move |name| if module.is_empty() { name } else { format!("{module}::{name}") })
        })
        .collect();
    let mut graph = Graph::new();
    for (module, text) in modules.iter().filter(|(m, _)| !test_files.contains(*m)) {
        // Tests inside a file may reach anywhere; the plan is about the code that ships.
        let shipped = without_test_items(&code_only(text));
        let targets = named_paths(&shipped, module)
            .iter()
            .filter_map(|p| resolve(p))
            .filter(|t| {
                t != module
                    && !t.is_empty()
                    && !module.starts_with(&format!("{t}::"))
                    && !t.starts_with(&format!("{module}::"))
            })
            .collect();
        graph.insert(module.clone(), targets);
    }
    graph
}

/// The names of the modules declared `#[cfg(test)] mod name;` (in a file of their own).
fn test_module_names(code: &str) -> Vec<String> {
    code.match_indices("#[cfg(test)]")
        .filter_map(|(at, marker)| {
            let item = code[at + marker.len()..].trim_start();
            let item = item.strip_prefix("pub(crate) ").or_else(|| item.strip_prefix("pub ")).unwrap_or(item);
            let name = item.strip_prefix("mod ")?.split(';').next()?.trim();
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_').then(|| name.to_owned())
        })
        .collect()
}

/// `code` without the items marked `#[cfg(test)]`: each marker and the item after it, up to its `;` or
/// the end of its `{ ... }` block, whichever comes first.
fn without_test_items(code: &str) -> String {
    let mut out = String::with_capacity(code.len());
    let mut rest = code;
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let item = &rest[at..];
        let mut depth = 0usize;
        let mut end = item.len();
        for (i, c) in item.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        end = i + 1;
                        break;
                    }
                }
                ';' if depth == 0 => {
                    end = i + 1;
                    break;
                }
                _ => {}
            }
        }
        rest = &item[end..];
    }
    out.push_str(rest);
    out
}

fn top(module: &str) -> &str {
    module.split("::").next().unwrap_or(module)
}

/// A cycle between files, if any (depth-first search over the graph).
fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    fn visit(node: &str, graph: &Graph, stack: &mut Vec<String>, done: &mut BTreeSet<String>) -> Option<Vec<String>> {
        if let Some(at) = stack.iter().position(|n| n == node) {
            let mut cycle = stack[at..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        stack.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, stack, done) {
                return Some(cycle);
            }
        }
        stack.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph.keys().find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

fn print_if_asked(graph: &Graph) {
    if std::env::var_os("SMARTSCHEDULER_PRINT_MODULE_GRAPH").is_none() {
        return;
    }
    let mut tops: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (from, targets) in graph {
        let entry = tops.entry(top(from)).or_default();
        entry.extend(targets.iter().map(|t| top(t)).filter(|t| *t != top(from)));
    }
    println!("module graph (top-level modules; an arrow: names something of)");
    for (from, targets) in &tops {
        println!("  {from} -> {}", targets.iter().copied().collect::<Vec<_>>().join(", "));
    }
    println!("file graph");
    for (from, targets) in graph {
        println!("  {from} -> {}", targets.iter().cloned().collect::<Vec<_>>().join(", "));
    }
}

#[test]
fn no_module_names_one_the_plan_forbids() {
    let graph = graph();
    print_if_asked(&graph);
    let violations: Vec<String> = graph
        .iter()
        .flat_map(|(from, targets)| targets.iter().map(move |to| (from, to)))
        .filter(|(from, to)| FORBIDDEN.contains(&(top(from), top(to))))
        .map(|(from, to)| format!("{from} -> {to}"))
        .collect();
    assert!(violations.is_empty(), "imports the plan forbids: {violations:#?}");
}

#[test]
fn no_import_cycle_between_files() {
    let graph = graph();
    assert_eq!(find_cycle(&graph), None, "a cycle of files naming each other");
}

#[test]
fn no_test_helper_ships_in_the_library() {
    // Test code belongs in tests/ (one test-database helper: tests/api/helpers.rs); unit tests inside a
    // file's own `#[cfg(test)] mod tests` are fine.
    let root = src_dir();
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    let helpers: Vec<String> = files
        .iter()
        .filter_map(|f| f.strip_prefix(&root).ok()?.to_str().map(str::to_owned))
        .filter(|f| !f.starts_with("bin/"))
        .filter(|f| ["test_support", "db_tests", "fuzz_support", "bench"].iter().any(|h| f.contains(h)))
        .collect();
    assert!(helpers.is_empty(), "test or bench code compiled into the library: {helpers:?}");
}

/// The product crate holds the product: the benchmark and the fault suite are workspace members of their own
/// (crates/), with their own dependencies, and the product depends on none of them.
#[test]
fn the_tools_live_in_crates_of_their_own() {
    assert!(!src_dir().join("bin").exists(), "src/bin: tools belong in crates/ (crates/bench, crates/chaos)");
    let manifest = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml")).unwrap();
    let dependencies = manifest.split("[dependencies]").nth(1).unwrap_or_default();
    let dependencies = dependencies.split("\n[").next().unwrap_or_default();
    for tool in ["smartscheduler-bench", "smartscheduler-chaos", "smartscheduler-sse-client", "hdrhistogram"] {
        assert!(!dependencies.contains(tool), "the product depends on a tool's crate: {tool}");
    }
}

#[test]
fn the_scanner_reads_paths_groups_and_super() {
    let code = code_only(
        "use crate::a::{b, c::d};\nuse super::e::F;\nlet x = crate::g::h('\"', '\\''); // crate::not::this\n\"crate::nor::this\" r#\"crate::\"x\"#",
    );
    let found = named_paths(&code, "m::n");
    let expected: BTreeSet<String> = ["a", "a::b", "a::c", "m::e::F", "g::h"].into_iter().map(str::to_owned).collect();
    assert_eq!(found, expected);
}
