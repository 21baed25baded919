//! The plugin author's commands through the real binary: `plugin new` (its Rust project builds
//! outside the repository and passes its own tests; its Lua project passes its cases),
//! `plugin check` with a sample input, `plugin test` (passes, catches a wrong expectation,
//! refuses a bad CASES file at its position), and README's plugin guide run step by step from
//! a directory outside the repository.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::BIN;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap()
}

/// A temporary directory outside the repository.
fn outside() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    assert!(
        !dir.path().starts_with(repo()),
        "the copy must be outside the repository"
    );
    dir
}

fn plugboard(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs `cargo ARGS` in `dir`, offline (the SDK's dependencies are in cargo's cache once the
/// workspace has built), with `target` as the target directory, or the project's own.
fn cargo(dir: &Path, args: &[&str], target: Option<&Path>) -> Output {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.args(args)
        .current_dir(dir)
        .env("CARGO_NET_OFFLINE", "true")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET_DIR");
    if let Some(t) = target {
        c.env("CARGO_TARGET_DIR", t);
    }
    c.output().unwrap()
}

/// `plugin test PLUGIN CASES.toml` in `project` passes every case.
fn passes_its_cases(project: &Path, plugin: &str, hook: &str) {
    let out = plugboard(project, &["plugin", "test", plugin, "CASES.toml"]);
    let t = text(&out);
    assert!(out.status.success(), "{hook}: {t}");
    assert!(
        t.contains(" passed, 0 failed") && !t.contains("FAIL"),
        "{hook}: {t}"
    );
}

const HOOKS: [&str; 3] = ["select", "key", "health"];

#[test]
fn plugin_new_lua_passes_its_own_cases() {
    let dir = outside();
    for hook in HOOKS {
        let name = format!("lua-{hook}");
        let out = plugboard(
            dir.path(),
            &["plugin", "new", &name, "--lang", "lua", "--hook", hook],
        );
        assert!(out.status.success(), "{}", text(&out));
        let project = dir.path().join(&name);
        passes_its_cases(&project, &format!("{name}.lua"), hook);
    }
    // A second project of the same name is refused: nothing is overwritten.
    let again = plugboard(dir.path(), &["plugin", "new", "lua-key", "--lang", "lua"]);
    assert_eq!(again.status.code(), Some(2), "{}", text(&again));
    assert!(text(&again).contains("exists and is not empty"));
    let bad = plugboard(dir.path(), &["plugin", "new", "x", "--lang", "cobol"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        text(&bad).contains("--lang cobol: not one of rust, lua, c"),
        "{}",
        text(&bad)
    );
}

#[test]
fn plugin_new_rust_builds_outside_the_repository_and_passes_its_own_tests() {
    common::assert_wasm_target();
    let dir = outside();
    // Shared between runs and hooks: the SDK and its dependencies build once.
    let target = std::env::temp_dir().join("plugboard-template-test-target");
    for hook in HOOKS {
        let name = format!("rust-{hook}");
        let out = plugboard(
            dir.path(),
            &["plugin", "new", &name, "--lang", "rust", "--hook", hook],
        );
        assert!(out.status.success(), "{}", text(&out));
        let project = dir.path().join(&name);
        let manifest = std::fs::read_to_string(project.join("Cargo.toml")).unwrap();
        assert!(
            manifest.contains(&format!("path = \"{}\"", repo().join("sdk").display())),
            "{manifest}"
        );
        let test = cargo(&project, &["test"], Some(&target));
        let t = text(&test);
        assert!(test.status.success(), "{hook}: cargo test: {t}");
        let unit = t
            .lines()
            .filter(|l| l.starts_with("test tests::") && l.ends_with("... ok"))
            .count();
        assert!(
            unit >= 1,
            "{hook}: the project's unit test did not run: {t}"
        );
        let build = cargo(
            &project,
            &["build", "--target", "wasm32-unknown-unknown", "--release"],
            Some(&target),
        );
        assert!(build.status.success(), "{hook}: {}", text(&build));
        let wasm = target.join(format!(
            "wasm32-unknown-unknown/release/{}.wasm",
            name.replace('-', "_")
        ));
        passes_its_cases(&project, wasm.to_str().unwrap(), hook);
    }
}

#[test]
fn plugin_test_catches_a_wrong_expectation() {
    let dir = outside();
    let out = plugboard(dir.path(), &["plugin", "new", "rr", "--lang", "lua"]);
    assert!(out.status.success(), "{}", text(&out));
    let project = dir.path().join("rr");
    let cases = std::fs::read_to_string(project.join("CASES.toml")).unwrap();
    // The fourth case expects backend 3; expect 2 instead.
    let wrong = cases.replacen("select = 3", "select = 2", 1);
    assert_ne!(wrong, cases);
    std::fs::write(project.join("WRONG.toml"), wrong).unwrap();
    let out = plugboard(&project, &["plugin", "test", "rr.lua", "WRONG.toml"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.contains("FAIL  round robin: the next one (WRONG.toml:23:8)"),
        "{t}"
    );
    assert!(
        t.contains("select-server: expected backend 2 (127.0.0.1:9002)\n")
            && t.contains("got      backend 3 (127.0.0.1:9003)\n"),
        "{t}"
    );
    assert!(t.contains("6 cases: 5 passed, 1 failed"), "{t}");
    // A plugin without the hook a case expects fails that case too.
    std::fs::write(
        project.join("key-only.lua"),
        "function persistence_key(req) return nil end",
    )
    .unwrap();
    let out = plugboard(&project, &["plugin", "test", "key-only.lua", "CASES.toml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("the plugin does not implement this hook"));
}

#[test]
fn a_bad_cases_file_is_refused_at_its_position() {
    let dir = outside();
    std::fs::write(
        dir.path().join("p.lua"),
        "function select_server(req, backends) return 1 end",
    )
    .unwrap();
    let run = |cases: &str| {
        std::fs::write(dir.path().join("CASES.toml"), cases).unwrap();
        plugboard(dir.path(), &["plugin", "test", "p.lua", "CASES.toml"])
    };
    let out = run(concat!(
        "backends = 2\n",
        "[[case]]\n",
        "name = \"a\"\n",
        "request = \"GET\"\n",
        "select = 3\n",
        "[[case]]\n",
        "name = \"b\"\n",
        "key = { backend = \"x\" }\n",
        "[[case]]\n",
        "name = \"c\"\n",
        "payload_hex = \"0g\"\n",
        "health = \"sideways\"\n",
        "[[case]]\n",
        "name = \"d\"\n",
    ));
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    for want in [
        "CASES.toml:4:11: request \"GET\": expected METHOD and TARGET",
        "CASES.toml:5:10: backend 3 does not exist: this case has 2 backends, numbered from 1",
        "CASES.toml:8:7: key: expected",
        "CASES.toml:11:15: payload \"0g\": not hexadecimal",
        "CASES.toml:12:10: health: expected",
        "CASES.toml:14:8: this case expects nothing",
    ] {
        assert!(t.contains(want), "{want:?} not in:\n{t}");
    }
    let out = run("[[case]]\nname = \"a\"\nselect = 1\nbogus = true\n");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).contains("CASES.toml:4:1: unknown field `bogus`"),
        "{}",
        text(&out)
    );
}

#[test]
fn plugin_check_runs_the_hooks_on_the_given_input() {
    let dir = outside();
    std::fs::write(
        dir.path().join("admin.lua"),
        concat!(
            "function select_server(req, backends)\n",
            "  if string.sub(req.path or '', 1, 6) == '/admin' then return #backends end\n",
            "  return 1\n",
            "end\n",
            "function persistence_key(req)\n",
            "  if req.payload then return string.format('%d bytes', #req.payload) end\n",
            "  return req.client_ip .. ' ' .. (req:header('X-User') or '-')\n",
            "end\n",
        ),
    )
    .unwrap();
    let check = |args: &[&str]| {
        let mut all = vec!["plugin", "check", "admin.lua"];
        all.extend_from_slice(args);
        let out = plugboard(dir.path(), &all);
        assert!(out.status.success(), "{}", text(&out));
        text(&out)
    };
    let admin = check(&[
        "--request",
        "GET /admin/x",
        "--header",
        "X-User: a",
        "--client",
        "10.0.0.5:5555",
        "--backends",
        "10.0.0.1:80,10.0.0.2:80",
    ]);
    for want in [
        "sample request: GET /admin/x\n  host: example.test\n  x-user: a\n",
        "sample client: 10.0.0.5:5555\n",
        "sample backends: 1 10.0.0.1:80, 2 10.0.0.2:80 (numbered from 1)\n",
        "select-server: backend 2 (10.0.0.2:80)\n",
        "persistence-key: key \"10.0.0.5 a\"\n",
    ] {
        assert!(admin.contains(want), "{want:?} not in:\n{admin}");
    }
    let other = check(&["--request", "GET /index.html", "--backends", "2"]);
    assert!(
        other.contains("select-server: backend 1 (127.0.0.1:9001)\n"),
        "{other}"
    );
    let tcp = check(&["--payload-hex", "030000"]);
    assert!(
        tcp.contains("sample tcp payload: 3 bytes: 030000\n")
            && tcp.contains("persistence-key: key \"3 bytes\"\n"),
        "{tcp}"
    );
    for (args, why) in [
        (["--request", "/admin"], "expected METHOD and TARGET"),
        (["--payload-hex", "aé0"], "not hexadecimal"),
        (["--payload-hex", "030"], "an even number of hex digits"),
        (["--backends", "0"], "1 to 64 are needed"),
        (["--client", "10.0.0.5"], "expected IP:PORT"),
        (["--header", "X-User"], "expected \"Name: value\""),
    ] {
        let mut all = vec!["plugin", "check", "admin.lua"];
        all.extend_from_slice(&args);
        let bad = plugboard(dir.path(), &all);
        assert_eq!(bad.status.code(), Some(2), "{args:?}: {}", text(&bad));
        assert!(text(&bad).contains(why), "{args:?}: {}", text(&bad));
    }
}

/// A README section: its fenced blocks, as (language, text), in order.
fn guide(heading: &str) -> Vec<(String, String)> {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let mut lines = readme
        .lines()
        .skip_while(|l| !l.starts_with(heading))
        .skip(1)
        .take_while(|l| !l.starts_with("## ") && !l.starts_with("### "));
    let mut blocks = Vec::new();
    while let Some(l) = lines.next() {
        if let Some(lang) = l.strip_prefix("```") {
            let body: Vec<&str> = lines.by_ref().take_while(|l| *l != "```").collect();
            blocks.push((lang.to_string(), body.join("\n") + "\n"));
        }
    }
    assert!(!blocks.is_empty(), "README has no section {heading:?}");
    blocks
}

/// Runs every `sh` block of a README section in order, as one script, in an empty
/// directory outside the repository with `plugboard` on the PATH; checks that every `text`
/// block is in what it printed. Returns the directory and the section's blocks.
fn follow(heading: &str) -> (tempfile::TempDir, Vec<(String, String)>) {
    let blocks = guide(heading);
    let script: String = blocks
        .iter()
        .filter(|(lang, _)| lang == "sh")
        .map(|(_, b)| b.as_str())
        .collect();
    let dir = outside();
    let bin_dir = Path::new(BIN).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(dir.path())
        .env("PATH", path)
        .env("CARGO_NET_OFFLINE", "true")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET_DIR")
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "the guide's commands failed:\n{script}\n---\n{}",
        text(&out)
    );
    for (_, t) in blocks.iter().filter(|(lang, _)| lang == "text") {
        assert!(
            printed.contains(t.as_str()),
            "the guide shows:\n{t}\nbut the commands printed:\n{printed}"
        );
    }
    (dir, blocks)
}

fn block<'a>(blocks: &'a [(String, String)], lang: &str) -> &'a str {
    &blocks
        .iter()
        .find(|(l, _)| l == lang)
        .unwrap_or_else(|| panic!("no {lang} block"))
        .1
}

#[test]
fn guide_lua() {
    let (dir, blocks) = follow("### Your first plugin in Lua");
    let project = dir.path().join("my-sched");
    let file = std::fs::read_to_string(project.join("my-sched.lua")).unwrap();
    assert_eq!(block(&blocks, "lua"), file, "README's Lua block");
    let cases = std::fs::read_to_string(project.join("CASES.toml")).unwrap();
    assert_eq!(block(&blocks, "toml"), cases, "README's CASES block");
}

#[test]
fn guide_rust() {
    common::assert_wasm_target();
    let (dir, blocks) = follow("### Your first plugin in Rust (WASM)");
    let lib = std::fs::read_to_string(dir.path().join("my-sched/src/lib.rs")).unwrap();
    let shown = block(&blocks, "rust");
    assert!(
        lib.starts_with(shown),
        "README's Rust block is not the start of the generated src/lib.rs:\n{lib}"
    );
}

#[test]
fn guide_c() {
    if !clang_wasm() {
        return;
    }
    let (dir, blocks) = follow("### Your first plugin in C (WASM)");
    let file = std::fs::read_to_string(dir.path().join("my-sched/my-sched.c")).unwrap();
    assert_eq!(block(&blocks, "c"), file, "README's C block");
}

/// Whether clang and wasm-ld are here (`scripts/build-plugins` installs them); fails the test
/// unless their absence is an allowed skip.
fn clang_wasm() -> bool {
    let found = |tool: &str| Command::new(tool).arg("--version").output().is_ok();
    (found("clang") && found("wasm-ld"))
        || common::missing_dependency("clang", "clang and wasm-ld (lld) are not installed")
}

#[test]
fn plugin_new_c_builds_with_clang_and_passes_its_own_cases() {
    if !clang_wasm() {
        return;
    }
    let dir = outside();
    for hook in HOOKS {
        let name = format!("c-{hook}");
        let out = plugboard(
            dir.path(),
            &["plugin", "new", &name, "--lang", "c", "--hook", hook],
        );
        assert!(out.status.success(), "{}", text(&out));
        // The build line `plugin new` prints is the one that is run.
        let printed = text(&out);
        let build = printed
            .lines()
            .find(|l| l.starts_with("clang "))
            .unwrap_or_else(|| panic!("no build line in:\n{printed}"));
        let project = dir.path().join(&name);
        let out = Command::new("sh")
            .args(["-c", build])
            .current_dir(&project)
            .output()
            .unwrap();
        assert!(out.status.success(), "{hook}: {build}: {}", text(&out));
        passes_its_cases(&project, &format!("{name}.wasm"), hook);
    }
}

/// The CASES.toml reference in README is a valid file, and passes on a plugin that answers
/// what it expects.
#[test]
fn readme_cases_reference_is_valid() {
    let blocks = guide("### Trying and testing a plugin");
    let dir = outside();
    std::fs::write(dir.path().join("CASES.toml"), block(&blocks, "toml")).unwrap();
    std::fs::write(
        dir.path().join("all.lua"),
        concat!(
            "function select_server(req, backends) return 1 end\n",
            "function persistence_key(req) return req:header(config.header) end\n",
            "function health_check(backend) return true, 40 end\n",
        ),
    )
    .unwrap();
    let out = plugboard(dir.path(), &["plugin", "test", "all.lua", "CASES.toml"]);
    assert!(out.status.success(), "{}", text(&out));
}
