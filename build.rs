//! Embeds the browser console (`frontend/dist`, the output of `npm run build`) into the binary, so that
//! `smartscheduler serve` serves the console it was built with from any working directory.
//!
//! Writes `$OUT_DIR/console.rs`: a sorted table of (path inside dist, bytes via `include_bytes!`). When
//! `frontend/dist` does not exist (a fresh clone before `make frontend`), the table is empty, the build says
//! so with a warning, and `serve` answers `/` with how to get the console; the API works either way.

use std::path::{Path, PathBuf};

fn main() {
    let root = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let dist = root.join("frontend").join("dist");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("console.rs");

    // sqlx::migrate! embeds migrations/ at compile time, but on stable Rust it cannot tell cargo to watch
    // the directory: without this line a new migration is left out of an incremental build.
    println!("cargo::rerun-if-changed={}", root.join("migrations").display());

    let mut files = Vec::new();
    if dist.join("index.html").is_file() {
        // A directory is scanned whole by cargo: any file added, changed or removed there rebuilds.
        println!("cargo::rerun-if-changed={}", dist.display());
        collect(&dist, &dist, &mut files);
        files.sort();
    } else {
        // Watching a path that does not exist would rerun this script (and rebuild the crate) on every
        // build. The frontend directory exists, and building dist/ inside it adds files cargo sees there.
        println!("cargo::rerun-if-changed={}", root.join("frontend").display());
        println!(
            "cargo::warning=frontend/dist not found: this build embeds no browser console (the API works). \
             Build the console first (make frontend), or serve one with --static-dir."
        );
    }

    let mut code = String::from(
        "/// The files of `frontend/dist` at build time: (path inside dist, contents), sorted by path.\n\
         pub static FILES: &[(&str, &[u8])] = &[\n",
    );
    for (relative, absolute) in &files {
        code.push_str(&format!("    ({relative:?}, include_bytes!({:?})),\n", absolute.display().to_string()));
    }
    code.push_str("];\n");
    std::fs::write(&out, code).expect("write console.rs");
}

/// Every regular file under `dir`, as (path relative to `base` with `/` separators, absolute path).
fn collect(base: &Path, dir: &Path, files: &mut Vec<(String, PathBuf)>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("read a directory entry").path();
        if path.is_dir() {
            collect(base, &path, files);
        } else if path.is_file() {
            let relative = path.strip_prefix(base).expect("under dist").components();
            let relative: Vec<String> = relative.map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
            files.push((relative.join("/"), path));
        }
    }
}
