//! The layout rules of the source tree that the compiler does not check: request state belongs
//! to `http/`, and nothing under `src/http/` reaches into `startup` (only `main` and the tests
//! do).

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn nothing_under_src_http_imports_startup() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/http");
    let mut files = Vec::new();
    rust_files(&dir, &mut files);
    assert!(files.len() > 5, "src/http holds {files:?}");
    let mut offenders = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for (n, line) in text.lines().enumerate() {
            // `super::super::startup` from a file of `http/` is the same module.
            if line.contains("crate::startup") || line.contains("super::startup") {
                offenders.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "src/http/ must not import startup (request state lives in http/state.rs):\n{}",
        offenders.join("\n")
    );
}
