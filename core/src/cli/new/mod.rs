//! `plugboard plugin new NAME --lang LANG [--hook HOOK]`: writes a standalone plugin project
//! from the templates in `templates/`, embedded in the binary. A language is one entry of
//! [`LANGS`]: its files per hook and the commands that build and test the result.

use std::path::{Path, PathBuf};

/// Longest plugin name (it becomes a file and crate name and `plugin:<name>`).
pub const MAX_NAME: usize = 64;

/// One file of a project: its path in the project and its text, both with `{{name}}`
/// (the plugin's name), `{{crate}}` (the name with `_` for `-`) and `{{sdk}}` (the SDK's
/// directory as a TOML string) replaced.
pub struct File {
    pub path: &'static str,
    pub text: &'static str,
}

/// What a language's project is.
pub struct Lang {
    /// The `--lang` value.
    pub name: &'static str,
    /// Files every project has.
    pub common: &'static [File],
    /// The files of a project for each `--hook`: select, key, health.
    pub hooks: [&'static [File]; 3],
    /// What to run next, printed after the files are written (same replacements, and
    /// `{{dir}}`, the project's directory).
    pub next: &'static str,
    /// Whether the project refers to the SDK's directory.
    pub needs_sdk: bool,
}

/// The `--hook` values, in the order of [`Lang::hooks`].
pub const HOOKS: [&str; 3] = ["select", "key", "health"];

macro_rules! file {
    ($path:literal, $src:expr) => {
        File {
            path: $path,
            text: include_str!(concat!("templates/", $src)),
        }
    };
}

/// A language's files per hook: `templates/<lang>/<hook>.<ext>`, written as `path`, and
/// `templates/<lang>/<hook>.cases.toml`, written as `CASES.toml`.
macro_rules! per_hook {
    ($path:literal, $lang:literal, $ext:literal) => {
        [
            &[
                file!($path, concat!($lang, "/select.", $ext)),
                file!("CASES.toml", concat!($lang, "/select.cases.toml")),
            ],
            &[
                file!($path, concat!($lang, "/key.", $ext)),
                file!("CASES.toml", concat!($lang, "/key.cases.toml")),
            ],
            &[
                file!($path, concat!($lang, "/health.", $ext)),
                file!("CASES.toml", concat!($lang, "/health.cases.toml")),
            ],
        ]
    };
}

/// Every language `plugin new` writes. Another language is one more entry here and its
/// files in `templates/<lang>/`.
pub const LANGS: &[Lang] = &[
    Lang {
        name: "rust",
        common: &[
            file!("Cargo.toml", "rust/Cargo.toml"),
            file!(".gitignore", "rust/gitignore"),
        ],
        hooks: per_hook!("src/lib.rs", "rust", "rs"),
        next: "cd {{dir}}\n\
               cargo test\n\
               cargo build --target wasm32-unknown-unknown --release\n\
               plugboard plugin test target/wasm32-unknown-unknown/release/{{crate}}.wasm CASES.toml\n",
        needs_sdk: true,
    },
    Lang {
        name: "lua",
        common: &[],
        hooks: per_hook!("{{name}}.lua", "lua", "lua"),
        next: "cd {{dir}}\n\
               plugboard plugin check {{name}}.lua --request 'GET /admin/x'\n\
               plugboard plugin test {{name}}.lua CASES.toml\n",
        needs_sdk: false,
    },
    Lang {
        name: "c",
        common: &[File {
            path: "plugboard.h",
            text: include_str!("../../../../sdk/c/plugboard.h"),
        }],
        hooks: per_hook!("{{name}}.c", "c", "c"),
        next: "cd {{dir}}\n\
               clang --target=wasm32 -nostdlib -O2 -Wl,--no-entry -Wl,--export-dynamic -o {{name}}.wasm {{name}}.c\n\
               plugboard plugin test {{name}}.wasm CASES.toml\n",
        needs_sdk: false,
    },
];

/// What `plugin new` was asked for.
pub struct Request<'a> {
    pub name: &'a str,
    pub lang: &'a str,
    pub hook: &'a str,
    /// The project's directory; default `./NAME`.
    pub dir: Option<&'a Path>,
    /// The SDK's directory; default this build's `sdk/`.
    pub sdk: Option<&'a Path>,
}

/// Writes the project; returns its directory and the next steps to print.
pub fn create(r: &Request) -> Result<(PathBuf, String), String> {
    let valid = r.name.len() <= MAX_NAME
        && r.name.starts_with(|c: char| c.is_ascii_lowercase())
        && r.name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !valid {
        return Err(format!(
            "plugin name {:?}: lower-case letters, digits and '-', starting with a letter, at most {MAX_NAME}",
            r.name
        ));
    }
    let names = || LANGS.iter().map(|l| l.name).collect::<Vec<_>>().join(", ");
    let lang = LANGS
        .iter()
        .find(|l| l.name == r.lang)
        .ok_or_else(|| format!("--lang {}: not one of {}", r.lang, names()))?;
    let hook = HOOKS
        .iter()
        .position(|h| *h == r.hook)
        .ok_or_else(|| format!("--hook {}: not one of {}", r.hook, HOOKS.join(", ")))?;
    let dir = r
        .dir
        .map_or_else(|| PathBuf::from(r.name), Path::to_path_buf);
    if dir.read_dir().is_ok_and(|mut d| d.next().is_some()) {
        return Err(format!("{} exists and is not empty", dir.display()));
    }
    let sdk = match lang.needs_sdk {
        true => sdk_dir(r.sdk)?,
        false => String::new(),
    };
    let fill = |t: &str| {
        t.replace("{{name}}", r.name)
            .replace("{{crate}}", &r.name.replace('-', "_"))
            .replace("{{sdk}}", &sdk)
            .replace("{{dir}}", &dir.display().to_string())
    };
    for f in lang.common.iter().chain(lang.hooks[hook].iter()) {
        let path = dir.join(fill(f.path));
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        }
        std::fs::write(&path, fill(f.text))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok((dir.clone(), fill(lang.next)))
}

/// The SDK's directory, absolute, as a TOML string: `--sdk`, else the `sdk/` of the
/// repository this binary was built from.
fn sdk_dir(given: Option<&Path>) -> Result<String, String> {
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk");
    let dir = given.unwrap_or(&built);
    let abs = dir
        .canonicalize()
        .ok()
        .filter(|d| d.join("Cargo.toml").is_file());
    let abs = abs.ok_or_else(|| {
        format!(
            "the SDK is not at {}: give its directory with --sdk /path/to/plugboard/sdk",
            dir.display()
        )
    })?;
    Ok(toml::Value::String(abs.display().to_string()).to_string())
}
