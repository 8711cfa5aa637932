//! The documents a newcomer reads hold: `docs/configuration.md`'s complete example parses
//! and sets every key the page documents, and `docs/` refers to nothing outside the
//! repository.

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{ROOT}/{path}")).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Dotted paths of every key in `t`, tables included.
fn paths(prefix: &str, t: &toml::Table, out: &mut Vec<String>) {
    for (k, v) in t {
        let p = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        if let Some(inner) = v.as_table() {
            paths(&p, inner, out);
        }
        out.push(p);
    }
}

#[test]
fn the_configuration_example_is_complete_and_valid() {
    let doc = read("docs/configuration.md");
    let example = doc
        .split("## Example")
        .nth(1)
        .and_then(|s| s.split("```toml\n").nth(1))
        .and_then(|s| s.split("\n```").next())
        .expect("a ```toml block under ## Example");
    if let Err(errs) = portcullis::config::Config::from_toml(example) {
        panic!("the example does not load: {errs:?}");
    }
    let table: toml::Table = example.parse().unwrap();
    let mut set = Vec::new();
    paths("", &table, &mut set);
    // A backend is a process worker or a pinned service, never both: the example's backend
    // tables together cover `backends.<name>`.
    let set: Vec<String> = set
        .into_iter()
        .map(
            |p| match p.strip_prefix("backends.").and_then(|r| r.split_once('.')) {
                Some((_, key)) => format!("backends.orders.{key}"),
                None => p,
            },
        )
        .collect();
    let documented: Vec<String> = doc
        .lines()
        .filter_map(|l| l.strip_prefix("| `")?.split('`').next())
        .filter(|k| {
            k.chars()
                .all(|c| c.is_ascii_lowercase() || "._<>".contains(c))
        })
        .map(|k| k.replace("<name>", "orders"))
        .collect();
    assert!(documented.len() > 50, "{documented:?}");
    let missing: Vec<&String> = documented.iter().filter(|k| !set.contains(k)).collect();
    assert!(
        missing.is_empty(),
        "documented but not in the example: {missing:?}"
    );
}

#[test]
fn the_docs_refer_to_nothing_outside_the_repository() {
    for doc in [
        "README.md",
        "docs/ARCHITECTURE.md",
        "docs/auth.md",
        "docs/configuration.md",
        "docs/design.md",
        "docs/link-protocol.md",
    ] {
        let text = read(doc);
        for outside in ["../shared", "DESIGN.md", "DESIGN §"] {
            assert!(!text.contains(outside), "{doc} refers to {outside}");
        }
    }
}
