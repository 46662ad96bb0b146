//! The architecture check of `cargo xtask lint`: no source file over `MAX_FILE_LINES` (test
//! modules in their own `tests.rs` excepted), and the `tracer` crate's top-level modules layered:
//! each refers only to modules below it in `LAYERS`. (The function limit is clippy's
//! `too_many_lines`, with clippy.toml's threshold.)
//!
//! References are found with `syn`: every `crate::<module>` path (in `use` trees, including
//! groups spanning lines, in types and expressions, and in macro arguments), every `super::` path
//! that climbs out of the file's own top-level module, and `tracer::<module>` in main.rs. Items
//! and modules under `#[cfg(test)]`, and files named tests.rs, are not checked; lib.rs, the
//! crate root that declares the modules, is not either.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use syn::{
    Attribute, ImplItem, Item, Meta, UseTree,
    punctuated::Punctuated,
    visit::{self, Visit},
};

/// The top-level modules of the `tracer` crate, top to bottom: a module may refer only to the
/// ones after it. `main` is the binary (main.rs).
pub const LAYERS: &[&str] = &[
    "main",
    "cmd",
    "cli",
    "doctor",
    "validate",
    "trace",
    "report",
    "lab",
    "measure",
    "flow",
    "ruletrace",
    "node",
    "probes",
    "vm",
    "kernel",
    "links",
    "netlink",
    "netns",
    "process",
];

/// No source file longer than this (lines), except test modules in a file named tests.rs.
pub const MAX_FILE_LINES: usize = 700;

/// The source directories whose files are held to `MAX_FILE_LINES`.
const SOURCE_DIRS: [&str; 4] = [
    "tracer/src",
    "tracer-common/src",
    "tracer-ebpf/src",
    "xtask/src",
];

/// The crate whose modules are layered, and its source directory.
const LAYERED: (&str, &str) = ("tracer", "tracer/src");

/// Runs both checks on the workspace at `root`, printing every offender; fails if there is one.
pub fn run(root: &Path) -> anyhow::Result<()> {
    let mut problems = Vec::new();
    for dir in SOURCE_DIRS {
        let files = read_sources(root, dir)?;
        problems.extend(oversized(&files));
    }
    let (krate, dir) = LAYERED;
    problems.extend(layering(krate, &read_sources(root, dir)?, LAYERS));
    for p in &problems {
        println!("arch: {p}");
    }
    if !problems.is_empty() {
        bail!("architecture check: {} problems", problems.len());
    }
    println!(
        "arch: files <= {MAX_FILE_LINES} lines, {krate} modules layered as {}",
        LAYERS.join(" > ")
    );
    Ok(())
}

/// One source file: its path from the workspace root, and its text.
pub struct Source {
    /// From the workspace root, with `/`: `tracer/src/node/mod.rs`.
    pub path: String,
    /// Its text.
    pub text: String,
}

/// Every `.rs` file under `root/dir`, sorted by path.
fn read_sources(root: &Path, dir: &str) -> anyhow::Result<Vec<Source>> {
    let mut paths = Vec::new();
    let mut todo = vec![root.join(dir)];
    while let Some(d) = todo.pop() {
        let entries =
            std::fs::read_dir(&d).with_context(|| format!("failed to list {}", d.display()))?;
        for e in entries {
            let p = e
                .with_context(|| format!("failed to list {}", d.display()))?
                .path();
            if p.is_dir() {
                todo.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                paths.push(p);
            }
        }
    }
    paths.sort();
    paths
        .into_iter()
        .map(|p: PathBuf| {
            let text = std::fs::read_to_string(&p)
                .with_context(|| format!("failed to read {}", p.display()))?;
            let rel = p.strip_prefix(root).unwrap_or(&p);
            Ok(Source {
                path: rel.to_string_lossy().replace('\\', "/"),
                text,
            })
        })
        .collect()
}

fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// Files over `MAX_FILE_LINES`, except tests.rs: `path: N lines (more than 700)`.
pub fn oversized(files: &[Source]) -> Vec<String> {
    files
        .iter()
        .filter(|f| file_name(&f.path) != "tests.rs")
        .filter_map(|f| {
            let n = f.text.lines().count();
            (n > MAX_FILE_LINES)
                .then(|| format!("{}: {n} lines (more than {MAX_FILE_LINES})", f.path))
        })
        .collect()
}

/// Where a file sits in the crate: its top-level module (`main` for main.rs) and its module path
/// below the crate root (`node/facts.rs` -> [node, facts]; `node/mod.rs` -> [node]). None for
/// lib.rs.
fn module_of(rel: &str) -> Option<(String, Vec<String>)> {
    let rel = rel.strip_suffix(".rs")?;
    let mut parts: Vec<String> = rel.split('/').map(str::to_owned).collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    match parts.first().map(String::as_str) {
        None | Some("lib") => None,
        Some(top) => Some((top.to_owned(), parts.clone())),
    }
}

/// The layering violations of crate `krate` (its files under `<krate>/src/`, as read from the
/// workspace root), against `layers` (top to bottom). Each as
/// `<path>: <module> -> <module> (above it)`, or `module X is not in the layering table`.
pub fn layering(krate: &str, files: &[Source], layers: &[&str]) -> Vec<String> {
    let prefix = format!("{krate}/src/");
    let rank = |m: &str| layers.iter().position(|l| *l == m);
    let mut out = Vec::new();
    let mut modules: Vec<String> = files
        .iter()
        .filter_map(|f| module_of(f.path.strip_prefix(&prefix)?))
        .map(|(top, _)| top)
        .collect();
    modules.sort();
    modules.dedup();
    for m in modules.iter().filter(|m| rank(m).is_none()) {
        out.push(format!("module {m} is not in the layering table"));
    }
    for f in files {
        let Some(rel) = f.path.strip_prefix(&prefix) else {
            continue;
        };
        if file_name(rel) == "tests.rs" {
            continue;
        }
        let Some((top, path)) = module_of(rel) else {
            continue;
        };
        let Some(from) = rank(&top) else { continue };
        let refs = match references(&f.text, krate, top == "main", &path) {
            Ok(r) => r,
            Err(e) => {
                out.push(format!("{}: does not parse: {e}", f.path));
                continue;
            }
        };
        for to in refs {
            if to == top || !modules.contains(&to) {
                continue;
            }
            if rank(&to).is_some_and(|r| r < from) {
                out.push(format!("{}: {top} -> {to} (above it)", f.path));
            }
        }
    }
    out
}

/// The top-level modules `text` refers to, each once, in order of first reference. `path` is the
/// file's module path; in the binary (`bin`), `<krate>::<module>` paths count instead of `crate::`.
fn references(text: &str, krate: &str, bin: bool, path: &[String]) -> syn::Result<Vec<String>> {
    let file = syn::parse_file(text)?;
    let mut v = Refs {
        root: if bin {
            krate.to_owned()
        } else {
            "crate".to_owned()
        },
        path: if bin { Vec::new() } else { path.to_vec() },
        found: Vec::new(),
    };
    v.visit_file(&file);
    Ok(v.found)
}

/// Collects the top-level modules a file's non-test code refers to.
struct Refs {
    /// `crate`, or the crate's name in the binary.
    root: String,
    /// The module path of the code being visited (the file's, plus inline modules).
    path: Vec<String>,
    found: Vec<String>,
}

impl Refs {
    /// A path's segments: the top-level module it reaches, if outside the current one's.
    fn segments(&mut self, segs: &[String]) {
        let top = if segs.first() == Some(&self.root) {
            segs.get(1)
        } else {
            let ups = segs.iter().take_while(|s| *s == "super").count();
            // Climbing to the crate root, the next segment is a top-level module.
            (ups > 0 && ups >= self.path.len())
                .then(|| segs.get(ups))
                .flatten()
        };
        if let Some(m) = top
            && !self.found.contains(m)
        {
            self.found.push(m.clone());
        }
    }

    /// Every path a `use` tree imports, as segments.
    fn use_tree(&mut self, prefix: &mut Vec<String>, tree: &UseTree) {
        match tree {
            UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.use_tree(prefix, &p.tree);
                prefix.pop();
            }
            UseTree::Name(n) => {
                prefix.push(n.ident.to_string());
                self.segments(&prefix.clone());
                prefix.pop();
            }
            UseTree::Rename(r) => {
                prefix.push(r.ident.to_string());
                self.segments(&prefix.clone());
                prefix.pop();
            }
            UseTree::Glob(_) => {
                prefix.push("*".to_owned());
                self.segments(&prefix.clone());
                prefix.pop();
            }
            UseTree::Group(g) => {
                for t in &g.items {
                    self.use_tree(prefix, t);
                }
            }
        }
    }

    /// `root :: module` in a macro's tokens (which syn leaves unparsed).
    fn tokens(&mut self, tokens: proc_macro2::TokenStream) {
        use proc_macro2::TokenTree;
        let tts: Vec<TokenTree> = tokens.into_iter().collect();
        for (i, tt) in tts.iter().enumerate() {
            match tt {
                TokenTree::Group(g) => self.tokens(g.stream()),
                TokenTree::Ident(id) if *id == self.root => {
                    if let [
                        TokenTree::Punct(a),
                        TokenTree::Punct(b),
                        TokenTree::Ident(m),
                        ..,
                    ] = &tts[i + 1..]
                        && a.as_char() == ':'
                        && b.as_char() == ':'
                    {
                        self.segments(&[self.root.clone(), m.to_string()]);
                    }
                }
                _ => {}
            }
        }
    }
}

/// Whether `attrs` hold a `cfg` that is only true under test (`test`, `all(.., test, ..)`,
/// `any(..)` of such).
fn test_only(attrs: &[Attribute]) -> bool {
    fn test_pred(m: &Meta) -> bool {
        match m {
            Meta::Path(p) => p.is_ident("test"),
            Meta::List(l) => {
                let Ok(args) =
                    l.parse_args_with(Punctuated::<Meta, syn::Token![,]>::parse_terminated)
                else {
                    return false;
                };
                if l.path.is_ident("all") {
                    args.iter().any(test_pred)
                } else if l.path.is_ident("any") {
                    !args.is_empty() && args.iter().all(test_pred)
                } else {
                    false
                }
            }
            Meta::NameValue(_) => false,
        }
    }
    attrs
        .iter()
        .filter(|a| a.path().is_ident("cfg"))
        .any(|a| a.parse_args::<Meta>().is_ok_and(|m| test_pred(&m)))
}

fn item_attrs(i: &Item) -> &[Attribute] {
    match i {
        Item::Const(x) => &x.attrs,
        Item::Enum(x) => &x.attrs,
        Item::ExternCrate(x) => &x.attrs,
        Item::Fn(x) => &x.attrs,
        Item::ForeignMod(x) => &x.attrs,
        Item::Impl(x) => &x.attrs,
        Item::Macro(x) => &x.attrs,
        Item::Mod(x) => &x.attrs,
        Item::Static(x) => &x.attrs,
        Item::Struct(x) => &x.attrs,
        Item::Trait(x) => &x.attrs,
        Item::TraitAlias(x) => &x.attrs,
        Item::Type(x) => &x.attrs,
        Item::Union(x) => &x.attrs,
        Item::Use(x) => &x.attrs,
        _ => &[],
    }
}

impl<'ast> Visit<'ast> for Refs {
    fn visit_item(&mut self, i: &'ast Item) {
        if test_only(item_attrs(i)) {
            return;
        }
        if let Item::Mod(m) = i
            && m.content.is_some()
        {
            self.path.push(m.ident.to_string());
            visit::visit_item(self, i);
            self.path.pop();
            return;
        }
        visit::visit_item(self, i);
    }

    fn visit_impl_item(&mut self, i: &'ast ImplItem) {
        let attrs: &[Attribute] = match i {
            ImplItem::Const(x) => &x.attrs,
            ImplItem::Fn(x) => &x.attrs,
            ImplItem::Type(x) => &x.attrs,
            ImplItem::Macro(x) => &x.attrs,
            _ => &[],
        };
        if !test_only(attrs) {
            visit::visit_impl_item(self, i);
        }
    }

    fn visit_item_use(&mut self, i: &'ast syn::ItemUse) {
        self.use_tree(&mut Vec::new(), &i.tree);
    }

    fn visit_path(&mut self, p: &'ast syn::Path) {
        let segs: Vec<String> = p.segments.iter().map(|s| s.ident.to_string()).collect();
        self.segments(&segs);
        visit::visit_path(self, p);
    }

    fn visit_macro(&mut self, m: &'ast syn::Macro) {
        self.tokens(m.tokens.clone());
        visit::visit_macro(self, m);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(path: &str, text: &str) -> Source {
        Source {
            path: path.to_owned(),
            text: text.to_owned(),
        }
    }

    const LAYERS: &[&str] = &["main", "trace", "report", "flow", "netns"];

    fn check(files: &[Source]) -> Vec<String> {
        layering("tracer", files, LAYERS)
    }

    #[test]
    fn a_reference_upwards_is_a_violation() {
        let files = [
            src("tracer/src/trace.rs", "use crate::report::Summary;"),
            src(
                "tracer/src/report/mod.rs",
                "pub struct Summary;\nfn f() -> crate::trace::Plan { todo!() }",
            ),
            src("tracer/src/flow/mod.rs", ""),
            src("tracer/src/netns.rs", ""),
        ];
        assert_eq!(
            check(&files),
            ["tracer/src/report/mod.rs: report -> trace (above it)"]
        );
    }

    #[test]
    fn downward_references_pass() {
        let files = [
            src(
                "tracer/src/main.rs",
                "fn main() { tracer::trace::run(); tracer::netns::x(); }",
            ),
            src(
                "tracer/src/trace.rs",
                "use crate::{flow::Record, report::Summary};\nfn f() { crate::netns::enter(); }",
            ),
            src(
                "tracer/src/report/mod.rs",
                "use crate::flow;\nmod document;",
            ),
            src(
                "tracer/src/report/document.rs",
                "use super::Summary; use crate::report::x; fn f() { super::super::flow::g() }",
            ),
            src("tracer/src/flow/mod.rs", "use crate::netns as n;"),
            src("tracer/src/netns.rs", "use std::fs;"),
            src("tracer/src/lib.rs", "pub mod trace; use crate::main;"),
        ];
        assert_eq!(check(&files), Vec::<String>::new());
    }

    #[test]
    fn a_use_group_over_several_lines_is_read_whole() {
        let files = [
            src(
                "tracer/src/flow/correlate.rs",
                "use crate::{\n    netns::enter,\n    report::{\n        Summary,\n        trace::Line,\n    },\n};",
            ),
            src("tracer/src/report/mod.rs", ""),
            src("tracer/src/netns.rs", ""),
            src("tracer/src/flow/mod.rs", ""),
        ];
        assert_eq!(
            check(&files),
            ["tracer/src/flow/correlate.rs: flow -> report (above it)"]
        );
    }

    #[test]
    fn test_code_is_ignored_and_macros_are_not() {
        let text = r#"
            #[cfg(test)]
            mod tests { use crate::trace::x; }
            #[cfg(all(test, feature = "y"))]
            fn helper() { crate::trace::y(); }
            #[cfg(not(test))]
            fn real() { println!("{}", crate::report::z()); }
        "#;
        let files = [
            src("tracer/src/flow/mod.rs", text),
            src("tracer/src/flow/tests.rs", "use crate::trace::x;"),
            src("tracer/src/trace.rs", ""),
            src("tracer/src/report.rs", ""),
        ];
        assert_eq!(
            check(&files),
            ["tracer/src/flow/mod.rs: flow -> report (above it)"]
        );
    }

    #[test]
    fn a_module_outside_the_table_is_reported() {
        let files = [
            src("tracer/src/trace.rs", "use crate::extra::x;"),
            src("tracer/src/extra/mod.rs", "use crate::trace::y;"),
        ];
        assert_eq!(check(&files), ["module extra is not in the layering table"]);
    }

    #[test]
    fn files_over_the_limit_except_tests() {
        let long = "x\n".repeat(MAX_FILE_LINES + 1);
        let files = [
            src("xtask/src/a.rs", &long),
            src("xtask/src/b/tests.rs", &long),
            src("xtask/src/c.rs", &"x\n".repeat(MAX_FILE_LINES)),
        ];
        assert_eq!(
            oversized(&files),
            [format!(
                "xtask/src/a.rs: {} lines (more than {MAX_FILE_LINES})",
                MAX_FILE_LINES + 1
            )]
        );
    }
}
