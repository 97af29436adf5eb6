//! The house's layering, checked: every top-level module of the library sits
//! in one layer, and imports only modules listed before it (in a lower layer,
//! or earlier in its own). The import graph therefore has no cycle, and a
//! change that adds an upward import fails here with the file that made it.
//!
//! Imports are read from the source as text: `crate::<module>` paths and
//! `use crate::{a, b::c}` groups, outside comments and outside each file's
//! `#[cfg(test)] mod tests` block. docs/architecture.md ("Layers") explains
//! the table.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Lowest layer first; inside a layer, a module may import those before it.
const LAYERS: &[(&str, &[&str])] = &[
    // Plain data and leaves: the wire format, the clock, the rings' record
    // format, published counters, the configuration as data.
    (
        "leaves",
        &["wire", "clock", "handoff", "telemetry", "config"],
    ),
    // Policy over plain data: adaptive batching (DAPB), which the shards
    // apply when they close Kafka batches and the output core tunes.
    ("policy", &["dapb"]),
    // Pure logic, no I/O: control (Dam, PID, prediction), model inference,
    // the shard pipeline.
    ("logic", &["control", "model", "shard"]),
    // Adapters to the kernel, the network, Kafka and the machine.
    (
        "adapters",
        &["privilege", "ingest", "sink", "kafka", "xdp", "cores"],
    ),
    // The wiring point and the control plane's HTTP side.
    ("runtime", &["admin", "runtime"]),
    // Tools above the runtime: reports, the live view, traffic generation,
    // the simulator, model training, the bench harness.
    (
        "tools",
        &["report", "top", "scenario", "gen", "sim", "train", "bench"],
    ),
];

/// Every `.rs` file under `dir`.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The code of a file without comments and without its `#[cfg(test)] mod
/// tests { … }` block (braces counted; test code may use any layer).
fn code(text: &str) -> String {
    let text: String = text
        .lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let Some(i) = text.find("#[cfg(test)]\nmod tests") else {
        return text;
    };
    let open = i + text[i..].find('{').unwrap_or(text.len() - i);
    let mut depth = 0;
    for (k, ch) in text[open..].char_indices() {
        match ch {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return format!("{}{}", &text[..i], &text[open + k + 1..]);
                }
            }
            _ => {}
        }
    }
    text[..i].to_string()
}

/// Modules of this crate a file's code names.
fn imports(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // `use crate::{a, b::{c, d}, e}`: the names at depth 0.
            let mut depth = 0;
            let mut start = 0;
            for (k, ch) in group.char_indices() {
                match ch {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        out.insert(ident(group[start..k].trim()));
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        out.insert(ident(group[start..k].trim()));
                        start = k + 1;
                    }
                    _ => {}
                }
            }
        } else {
            out.insert(ident(rest));
        }
    }
    out.retain(|m| !m.is_empty() && m != "self");
    out
}

#[test]
fn every_module_imports_only_the_layers_below_it() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let rank: BTreeMap<&str, (usize, &str)> = LAYERS
        .iter()
        .flat_map(|(layer, mods)| mods.iter().map(move |m| (*m, *layer)))
        .enumerate()
        .map(|(i, (m, layer))| (m, (i, layer)))
        .collect();
    let mut files = Vec::new();
    sources(&root, &mut files);
    files.sort();
    let mut problems = Vec::new();
    let mut seen = BTreeSet::new();
    for f in &files {
        let rel = f.strip_prefix(&root).unwrap();
        let first = rel.components().next().unwrap().as_os_str();
        let module = first.to_str().unwrap().trim_end_matches(".rs");
        // The crate root and the binary's CLI sit above every layer.
        if module == "lib" || module == "main" || module == "cli" {
            continue;
        }
        seen.insert(module.to_string());
        let Some(&(mine, my_layer)) = rank.get(module) else {
            problems.push(format!(
                "src/{}: module `{module}` is in no layer: add it to LAYERS in tests/layers.rs",
                rel.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(f).unwrap();
        for dep in imports(&code(&text)) {
            if dep == module {
                continue;
            }
            match rank.get(dep.as_str()) {
                Some(&(theirs, _)) if theirs < mine => {}
                Some(&(_, their_layer)) => problems.push(format!(
                    "src/{}: `{module}` ({my_layer}) imports `{dep}` ({their_layer}), which is not below it",
                    rel.display()
                )),
                None => problems.push(format!(
                    "src/{}: imports `crate::{dep}`, which is in no layer",
                    rel.display()
                )),
            }
        }
    }
    for m in rank.keys() {
        if !seen.contains(*m) {
            problems.push(format!("LAYERS lists `{m}`, which src/ does not have"));
        }
    }
    assert!(
        problems.is_empty(),
        "layering broken:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_import_reader_sees_paths_and_groups_and_skips_comments_and_tests() {
    let src = "use crate::wire::{self, X};\nuse crate::{config, shard::{a, b}, clock};\n\
               fn f() { crate::kafka::run(); } // crate::admin in a comment\n\
               #[cfg(test)]\nmod tests { fn g() { use crate::bench; } }\nuse crate::sim;\n";
    let got: Vec<String> = imports(&code(src)).into_iter().collect();
    assert_eq!(got, ["clock", "config", "kafka", "shard", "sim", "wire"]);
}
