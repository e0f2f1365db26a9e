//! The documents stand alone: every relative link in the README and `docs/` (and the other
//! READMEs) reaches a file of the repository, and a `#section` one of its headings; none
//! points outside the repository.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn documents() -> Vec<PathBuf> {
    let mut out = vec![root().join("README.md"), root().join("bench/README.md")];
    for dir in ["docs", "examples/cognigy", "examples/config", "deploy"] {
        if let Ok(entries) = std::fs::read_dir(root().join(dir)) {
            out.extend(
                entries
                    .filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "md")),
            );
        }
    }
    out
}

/// GitHub's anchor of a heading: lower case, spaces to `-`, punctuation but `-` and `_` gone.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

fn anchors(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| l.starts_with('#'))
        .map(|l| slug(l.trim_start_matches('#').replace('`', "").as_str()))
        .collect()
}

/// The `](target)` links of a markdown text.
fn links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("](") {
        rest = &rest[at + 2..];
        if let Some(end) = rest.find(')') {
            out.push(rest[..end].to_string());
        }
    }
    out
}

#[test]
fn every_relative_link_reaches_a_file_and_section_of_the_repository() {
    let mut broken = Vec::new();
    let docs = documents();
    assert!(docs.len() >= 10, "found only {docs:?}");
    for doc in &docs {
        let text = std::fs::read_to_string(doc).unwrap();
        let shown = doc
            .strip_prefix(root())
            .unwrap_or(doc)
            .display()
            .to_string();
        for bad in ["../shared", "SPEC §", "SPEC.md"] {
            if text.contains(bad) {
                broken.push(format!(
                    "{shown}: mentions {bad}, which is not in the repository"
                ));
            }
        }
        for link in links(&text) {
            if link.starts_with("http://")
                || link.starts_with("https://")
                || link.starts_with("mailto:")
            {
                continue;
            }
            let (path, anchor) = match link.split_once('#') {
                Some((p, a)) => (p, Some(a)),
                None => (link.as_str(), None),
            };
            let target: PathBuf = if path.is_empty() {
                doc.clone()
            } else {
                doc.parent().unwrap_or(Path::new(".")).join(path)
            };
            let Ok(target) = target.canonicalize() else {
                broken.push(format!("{shown}: `{link}` reaches no file"));
                continue;
            };
            if !target.starts_with(root().canonicalize().unwrap()) {
                broken.push(format!("{shown}: `{link}` leaves the repository"));
                continue;
            }
            if let Some(anchor) = anchor {
                if target.is_file() {
                    let linked = std::fs::read_to_string(&target).unwrap_or_default();
                    if !anchors(&linked).iter().any(|a| a == anchor) {
                        broken.push(format!("{shown}: `{link}`: no such section"));
                    }
                }
            }
        }
    }
    assert!(broken.is_empty(), "{broken:#?}");
}
