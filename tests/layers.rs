//! The crate's shape, checked: no two modules import each other (directly or round a longer
//! loop), and no layer reaches up (server -> reload -> api, shared -> routing -> providers -> config,
//! with telemetry, listen, proto and codec below them all). Read from the source files themselves:
//! `use crate::...` and `use super::...` trees and `crate::`/`super::` paths in code, each
//! resolved to the longest module file that exists. Test-only modules (`#[cfg(test)] mod x;`
//! and a file's closing `mod tests { .. }`) may import what they like.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module's path from the crate root: `["routing", "health"]`; the root is `[]`.
type Module = Vec<String>;

/// Each module of the tree at `src`, with the modules it imports.
fn graph(src: &Path) -> BTreeMap<Module, BTreeSet<Module>> {
    let mut files = BTreeMap::new();
    collect(src, src, &mut files);
    let test_only = test_only_modules(&files);
    let modules: BTreeSet<Module> = files
        .keys()
        .filter(|m| !test_only.iter().any(|t| m.starts_with(t)))
        .cloned()
        .collect();
    let mut edges = BTreeMap::new();
    for module in &modules {
        let code = strip(&files[module].0);
        let mut deps = BTreeSet::new();
        for path in paths(&code) {
            let mut base: Module;
            let mut rest: &[String] = &path;
            match path.first().map(String::as_str) {
                Some("crate") => {
                    base = Vec::new();
                    rest = &path[1..];
                }
                // `super` is the module's parent, whether its file is `a/b.rs` or `a/b/mod.rs`.
                Some("super") => {
                    base = module.clone();
                    while rest.first().map(String::as_str) == Some("super") {
                        base.pop();
                        rest = &rest[1..];
                    }
                }
                Some("self") => {
                    base = module.clone();
                    rest = &path[1..];
                }
                _ => continue,
            }
            base.extend(rest.iter().cloned());
            if let Some(target) = resolve(&modules, base)
                && &target != module
                && !module.starts_with(&target)
            {
                deps.insert(target);
            }
        }
        edges.insert(module.clone(), deps);
    }
    edges
}

/// Every `.rs` file under `dir`, by module, with whether it is a directory's module (`mod.rs`,
/// `lib.rs`).
fn collect(root: &Path, dir: &Path, out: &mut BTreeMap<Module, (String, bool)>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            collect(root, &path, out);
            continue;
        }
        if path.extension().and_then(|e| e.to_str()) != Some("rs") {
            continue;
        }
        let rel = path.strip_prefix(root).unwrap();
        let mut module: Module = rel
            .with_extension("")
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        let last = module.last().cloned().unwrap_or_default();
        if last == "main" && module.len() == 1 {
            continue; // the binary, which uses the library by its name
        }
        let dir_module = last == "mod" || (last == "lib" && module.len() == 1);
        if dir_module {
            module.pop();
        }
        out.insert(
            module,
            (std::fs::read_to_string(&path).unwrap(), dir_module),
        );
    }
}

/// Modules declared `#[cfg(test)] mod name;`.
fn test_only_modules(files: &BTreeMap<Module, (String, bool)>) -> Vec<Module> {
    let mut out = Vec::new();
    for (module, (text, _)) in files {
        let mut rest = text.as_str();
        while let Some(at) = rest.find("#[cfg(test)]") {
            rest = &rest[at + "#[cfg(test)]".len()..];
            let mut tail = rest.trim_start();
            // Other attributes may stand between.
            while tail.starts_with("#[") {
                tail = tail[tail.find(']').map_or(tail.len(), |i| i + 1)..].trim_start();
            }
            let tail = tail.strip_prefix("pub(crate) ").unwrap_or(tail);
            if let Some(decl) = tail.strip_prefix("mod ") {
                let name: String = decl
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if decl[name.len()..].trim_start().starts_with(';') {
                    let mut m = module.clone();
                    m.push(name);
                    out.push(m);
                }
            }
        }
    }
    out
}

/// The code of a file without comments, string literals, and its closing test module.
fn strip(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests {") {
        Some(at) => &text[..at],
        None => text,
    };
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
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
                    if escaped {
                        escaped = false;
                    } else if c == '\\' {
                        escaped = true;
                    } else if c == '"' {
                        break;
                    }
                }
                out.push_str("\"\"");
            }
            _ => out.push(c),
        }
    }
    out
}

/// Every path a file names that starts at `crate`, `super` or `self`: use trees expanded, and
/// paths in code.
fn paths(code: &str) -> Vec<Vec<String>> {
    let tokens = tokenize(code);
    let mut out = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        if tokens[i] == "use" {
            let mut j = i + 1;
            use_tree(&tokens, &mut j, Vec::new(), &mut out);
            i = j;
            continue;
        }
        if matches!(tokens[i].as_str(), "crate" | "super")
            && tokens.get(i + 1).map(String::as_str) == Some("::")
        {
            let mut path = vec![tokens[i].clone()];
            let mut j = i + 1;
            while tokens.get(j).map(String::as_str) == Some("::") {
                match tokens.get(j + 1) {
                    Some(t) if is_ident(t) => {
                        path.push(t.clone());
                        j += 2;
                    }
                    _ => break,
                }
            }
            out.push(path);
            i = j;
            continue;
        }
        i += 1;
    }
    out
}

fn is_ident(t: &str) -> bool {
    t.chars().all(|c| c.is_alphanumeric() || c == '_') && !t.is_empty()
}

fn tokenize(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = code.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_alphanumeric() || c == '_' {
            let mut word = String::new();
            while let Some(&c) = chars.peek() {
                if c.is_alphanumeric() || c == '_' {
                    word.push(c);
                    chars.next();
                } else {
                    break;
                }
            }
            out.push(word);
        } else if c == ':' {
            chars.next();
            if chars.peek() == Some(&':') {
                chars.next();
                out.push("::".into());
            } else {
                out.push(":".into());
            }
        } else if c.is_whitespace() {
            chars.next();
        } else {
            out.push(c.to_string());
            chars.next();
        }
    }
    out
}

/// Expands one use tree starting at `tokens[*i]`, under `prefix`, into `out`.
fn use_tree(tokens: &[String], i: &mut usize, prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
    let mut path = prefix;
    loop {
        match tokens.get(*i).map(String::as_str) {
            Some("{") => {
                *i += 1;
                loop {
                    use_tree(tokens, i, path.clone(), out);
                    match tokens.get(*i).map(String::as_str) {
                        Some(",") => {
                            *i += 1;
                            if tokens.get(*i).map(String::as_str) == Some("}") {
                                *i += 1;
                                return;
                            }
                        }
                        Some("}") => {
                            *i += 1;
                            return;
                        }
                        _ => return,
                    }
                }
            }
            Some("*") => {
                *i += 1;
                out.push(path);
                return;
            }
            Some(t) if is_ident(t) => {
                if t != "self" || path.is_empty() {
                    path.push(t.to_string());
                }
                *i += 1;
                match tokens.get(*i).map(String::as_str) {
                    Some("::") => *i += 1,
                    Some("as") => {
                        *i += 2;
                        out.push(path);
                        return;
                    }
                    _ => {
                        out.push(path);
                        return;
                    }
                }
            }
            _ => {
                out.push(path);
                return;
            }
        }
    }
}

/// The longest module that `path` names or lies in, if any.
fn resolve(modules: &BTreeSet<Module>, mut path: Module) -> Option<Module> {
    while !path.is_empty() {
        if modules.contains(&path) {
            return Some(path);
        }
        path.pop();
    }
    None
}

/// Groups of modules that import each other, round however long a loop (Tarjan's strongly
/// connected components of more than one module).
fn cycles(edges: &BTreeMap<Module, BTreeSet<Module>>) -> Vec<Vec<Module>> {
    struct Walk<'a> {
        edges: &'a BTreeMap<Module, BTreeSet<Module>>,
        index: BTreeMap<&'a Module, usize>,
        low: BTreeMap<&'a Module, usize>,
        stack: Vec<&'a Module>,
        on_stack: BTreeSet<&'a Module>,
        next: usize,
        found: Vec<Vec<Module>>,
    }
    impl<'a> Walk<'a> {
        fn visit(&mut self, v: &'a Module) {
            self.index.insert(v, self.next);
            self.low.insert(v, self.next);
            self.next += 1;
            self.stack.push(v);
            self.on_stack.insert(v);
            let edges = self.edges;
            for w in edges.get(v).into_iter().flatten() {
                if !edges.contains_key(w) {
                    continue;
                }
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let low = self.low[v].min(self.low[w]);
                    self.low.insert(v, low);
                } else if self.on_stack.contains(w) {
                    let low = self.low[v].min(self.index[w]);
                    self.low.insert(v, low);
                }
            }
            if self.low[v] == self.index[v] {
                let mut group = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(w);
                    group.push(w.clone());
                    if w == v {
                        break;
                    }
                }
                if group.len() > 1 {
                    group.sort();
                    self.found.push(group);
                }
            }
        }
    }
    let mut walk = Walk {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        next: 0,
        found: Vec::new(),
    };
    for v in edges.keys() {
        if !walk.index.contains_key(v) {
            walk.visit(v);
        }
    }
    walk.found
}

/// The layer of a top-level module: each may import only its own and lower ones.
fn layer(top: &str) -> Option<u32> {
    Some(match top {
        "telemetry" | "proto" | "codec" | "listen" => 0,
        "config" => 1,
        "providers" => 2,
        "routing" => 3,
        "api" | "shared" => 4,
        "reload" => 5,
        "server" => 6,
        _ => return None,
    })
}

/// Imports that reach a higher layer, as `from -> to`.
fn upward(edges: &BTreeMap<Module, BTreeSet<Module>>) -> Vec<String> {
    let mut out = Vec::new();
    for (from, deps) in edges {
        let Some(at) = from.first().and_then(|t| layer(t)) else {
            continue;
        };
        for to in deps {
            if let Some(other) = to.first().and_then(|t| layer(t))
                && other > at
            {
                out.push(format!("{} -> {}", from.join("::"), to.join("::")));
            }
        }
    }
    out
}

fn show(groups: &[Vec<Module>]) -> String {
    groups
        .iter()
        .map(|g| {
            g.iter()
                .map(|m| m.join("::"))
                .collect::<Vec<_>>()
                .join(" <-> ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn no_two_modules_import_each_other_and_no_layer_reaches_up() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let edges = graph(&src);
    assert!(
        edges.len() > 40,
        "the scan found only {} modules",
        edges.len()
    );
    // The scan sees what it should: routing's walk imports its policy and the config.
    let chain = &edges[&vec!["routing".to_string(), "chain".to_string()]];
    assert!(chain.contains(&vec!["routing".to_string(), "policy".to_string()]));
    assert!(chain.contains(&vec!["config".to_string()]));
    let found = cycles(&edges);
    assert!(found.is_empty(), "import cycles:\n{}", show(&found));
    let up = upward(&edges);
    assert!(
        up.is_empty(),
        "imports that reach up a layer:\n{}",
        up.join("\n")
    );
}

/// A tree in a temporary folder, removed when dropped.
struct Tree(PathBuf);

impl Tree {
    fn new(name: &str, files: &[(&str, &str)]) -> Tree {
        let dir =
            std::env::temp_dir().join(format!("llmrouter-layers-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for (path, text) in files {
            let p = dir.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        Tree(dir)
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn a_deliberate_cycle_and_an_upward_import_are_caught() {
    let tree = Tree::new(
        "cycle",
        &[
            ("lib.rs", "pub mod routing;\npub mod api;\n"),
            (
                "routing/mod.rs",
                "mod a;\nmod b;\nmod c;\n#[cfg(test)]\nmod tests;\n",
            ),
            // a -> b through a use tree, b -> c through a path in code, c -> a through super.
            ("routing/a.rs", "use super::{b::Thing, c};\n"),
            (
                "routing/b.rs",
                "pub struct Thing;\nfn f() { crate::routing::c::g(); }\n",
            ),
            (
                "routing/c.rs",
                "// use super::api; is a comment\nuse super::a as alias;\n",
            ),
            // A test module may import anything.
            ("routing/tests.rs", "use crate::api::Handler;\n"),
            (
                "api/mod.rs",
                "pub struct Handler;\nuse crate::routing::b::Thing;\n",
            ),
        ],
    );
    let edges = graph(&tree.0);
    let found = cycles(&edges);
    assert_eq!(
        show(&found),
        "routing::a <-> routing::b <-> routing::c",
        "{edges:#?}"
    );
    assert!(upward(&edges).is_empty(), "api may import routing");

    // routing reaching up into api is caught; so is the cycle it closes.
    let tree = Tree::new(
        "upward",
        &[
            ("lib.rs", "pub mod routing;\npub mod api;\n"),
            (
                "routing/mod.rs",
                "pub fn f() { let _ = crate::api::status(); }\n",
            ),
            ("api/mod.rs", "use crate::routing;\npub fn status() {}\n"),
        ],
    );
    let edges = graph(&tree.0);
    assert_eq!(upward(&edges), ["routing -> api"]);
    assert_eq!(show(&cycles(&edges)), "api <-> routing");
}
