//! The architecture, tested: every dependency edge in the workspace's `Cargo.toml` files must
//! be one that `ARCHITECTURE.md`'s dependency table allows, and no crate may name a package
//! the table forbids it. Lives in the bottom crate because that one builds in seconds (no
//! C++), so the check runs with a plain `cargo test` as early as anything can.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// From the runner's `CARGO_MANIFEST_DIR` (cargo and nextest set it when they run a test), so
/// that a test binary reused from a checkout at another path (the same target directory shared
/// by two clones) reads this checkout; the compile-time value otherwise.
fn workspace_root() -> PathBuf {
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest_dir.parent().expect("model/ sits in the workspace root").to_path_buf()
}

/// One row of the table: what a crate may depend on among Corral's crates, and the packages
/// it must never name directly.
#[derive(Debug, Default)]
struct Rule {
    allowed: BTreeSet<String>,
    forbidden: BTreeSet<String>,
}

fn names(cell: &str) -> BTreeSet<String> {
    cell.split(',')
        .map(|n| n.trim().trim_matches('`').to_string())
        .filter(|n| !n.is_empty() && n != "—" && n != "-")
        .collect()
}

/// Parses the table under `## Dependency rules`: `| crate | may depend on | never depends on |`.
fn rules(architecture: &str) -> BTreeMap<String, Rule> {
    let section = architecture.split("## Dependency rules").nth(1).expect("ARCHITECTURE.md has '## Dependency rules'");
    let mut rules = BTreeMap::new();
    for line in section.lines().skip_while(|l| !l.starts_with('|')).take_while(|l| l.starts_with('|')) {
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        let [krate, allowed, forbidden] = cells[..] else { panic!("a dependency row has three cells: {line}") };
        let krate = krate.trim_matches('`');
        if !krate.starts_with("corral-") {
            continue; // the header and the separator
        }
        rules.insert(krate.to_string(), Rule { allowed: names(allowed), forbidden: names(forbidden) });
    }
    rules
}

/// The package's name and every dependency it declares (normal, dev and build).
fn manifest(path: &Path) -> (String, BTreeSet<String>) {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let doc: toml::Table = text.parse().unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let name = doc
        .get("package")
        .and_then(|p| p.get("name"))
        .and_then(|n| n.as_str())
        .unwrap_or_else(|| panic!("{} has no package name", path.display()))
        .to_string();
    let mut deps = BTreeSet::new();
    for section in ["dependencies", "dev-dependencies", "build-dependencies"] {
        if let Some(table) = doc.get(section).and_then(|t| t.as_table()) {
            for (key, value) in table {
                // `rand09 = { package = "rand", ... }` names the package `rand`.
                let package = value.get("package").and_then(|p| p.as_str()).unwrap_or(key);
                deps.insert(package.to_string());
            }
        }
    }
    (name, deps)
}

fn member_manifests(root: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(root)
        .expect("workspace root is readable")
        .filter_map(Result::ok)
        .map(|e| e.path().join("Cargo.toml"))
        .filter(|p| p.is_file())
        .collect();
    found.sort();
    found
}

#[test]
fn every_dependency_edge_is_in_the_architecture_table() {
    let root = workspace_root();
    let architecture = std::fs::read_to_string(root.join("ARCHITECTURE.md")).expect("ARCHITECTURE.md exists");
    let rules = rules(&architecture);
    assert!(rules.len() >= 7, "the table lists every crate: {:?}", rules.keys());
    let manifests = member_manifests(&root);
    assert!(manifests.len() >= 7, "found the crates' manifests: {manifests:?}");
    let mut wrong = Vec::new();
    for path in manifests {
        let (name, deps) = manifest(&path);
        let Some(rule) = rules.get(&name) else {
            wrong.push(format!("{name} ({}) has no row in ARCHITECTURE.md's dependency table", path.display()));
            continue;
        };
        for dep in &deps {
            if dep.starts_with("corral-") && !rule.allowed.contains(dep) {
                wrong.push(format!("{name} depends on {dep}, which the table does not allow"));
            }
            if rule.forbidden.contains(dep) {
                wrong.push(format!("{name} depends on {dep}, which the table forbids"));
            }
        }
    }
    assert!(wrong.is_empty(), "dependency edges against ARCHITECTURE.md:\n{}", wrong.join("\n"));
}

/// The check above can fail: a table without the edge refuses it.
#[test]
fn an_edge_missing_from_the_table_is_refused() {
    let table = "## Dependency rules\n| crate | may depend on | never |\n|---|---|---|\n| `corral-api` | `corral-model` | `rocksdb`, `tonic` |\n";
    let rules = rules(table);
    let api = rules.get("corral-api").expect("row parsed");
    assert!(api.allowed.contains("corral-model"));
    assert!(!api.allowed.contains("corral-storage"));
    assert!(api.forbidden.contains("rocksdb") && api.forbidden.contains("tonic"));
}
