//! The CASES.toml format of `plugboard plugin test`: inputs and the decisions expected for
//! them, checked at load with `FILE:LINE:COL` errors as the configuration is. Backend numbers
//! are the plugin's own (from 1 in Lua, from 0 in WASM), given as `first`.

use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use super::decide::{KeyAnswer, Select};
use super::sample::Sample;
use crate::balance::agent::AdminState;
use crate::config::{line_col, ConfigError, ConfigErrors};

/// Most cases in one file.
pub const MAX_CASES: usize = 1000;
/// Largest CASES file, bytes.
pub const MAX_FILE: u64 = 1024 * 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    settings: Option<toml::Table>,
    backends: Option<Spanned<toml::Value>>,
    #[serde(default)]
    case: Vec<Spanned<RawCase>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCase {
    name: Spanned<String>,
    request: Option<Spanned<String>>,
    headers: Option<Vec<Spanned<String>>>,
    client: Option<Spanned<String>>,
    payload_hex: Option<Spanned<String>>,
    backends: Option<Spanned<toml::Value>>,
    down: Option<Vec<Spanned<i64>>>,
    check: Option<Spanned<i64>>,
    select: Option<Spanned<toml::Value>>,
    key: Option<Spanned<toml::Value>>,
    health: Option<Spanned<toml::Value>>,
}

/// An expected answer, or a fault (which the service's `on_plugin_error` turns into the
/// fallback's answer or a rejection).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Want<T> {
    Answer(T),
    Fault,
}

/// The parts of a health answer a case names; the others are not compared.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HealthWant {
    pub up: Option<bool>,
    pub load: Option<u8>,
    pub weight_percent: Option<u32>,
    pub maxconn: Option<u32>,
    pub admin: Option<AdminState>,
    pub agent_up: Option<bool>,
}

/// One row of the table.
pub struct Case {
    pub name: String,
    /// `FILE:LINE:COL` of the case's `name`.
    pub at: String,
    pub sample: Sample,
    /// The backend a health check checks (0-based).
    pub check: usize,
    pub select: Option<Want<Select>>,
    pub key: Option<Want<KeyAnswer>>,
    pub health: Option<Want<HealthWant>>,
}

/// A parsed CASES file.
pub struct Cases {
    /// The plugin's settings, as JSON.
    pub settings: String,
    pub cases: Vec<Case>,
}

/// Reads and checks `path`; every error with its position.
pub fn load(path: &Path, first: usize) -> Result<Cases, ConfigErrors> {
    let whole = |m: String| ConfigErrors(vec![ConfigError::whole_file(path, m)]);
    let size = std::fs::metadata(path)
        .map_err(|e| whole(format!("cannot read: {e}")))?
        .len();
    if size > MAX_FILE {
        return Err(whole(format!("larger than {MAX_FILE} bytes")));
    }
    let src = std::fs::read_to_string(path).map_err(|e| whole(format!("cannot read: {e}")))?;
    parse(path, &src, first)
}

struct Errors<'a> {
    file: &'a Path,
    src: &'a str,
    list: Vec<ConfigError>,
}

impl Errors<'_> {
    fn at(&self, span: &Range<usize>) -> (PathBuf, usize, usize) {
        let (line, col) = line_col(self.src, span.start);
        (self.file.to_path_buf(), line, col)
    }

    fn push(&mut self, span: Range<usize>, message: impl Into<String>) {
        let (file, line, col) = self.at(&span);
        self.list.push(ConfigError {
            file,
            line,
            col,
            message: message.into(),
        });
    }
}

/// Parses a CASES file's text.
pub fn parse(path: &Path, src: &str, first: usize) -> Result<Cases, ConfigErrors> {
    let mut e = Errors {
        file: path,
        src,
        list: Vec::new(),
    };
    let raw: RawFile = match toml::from_str(src) {
        Ok(r) => r,
        Err(err) => {
            e.push(err.span().unwrap_or(0..0), err.message());
            return Err(ConfigErrors(e.list));
        }
    };
    let settings = match &raw.settings {
        Some(t) => serde_json::to_string(t).unwrap_or_else(|_| "{}".into()),
        None => "{}".into(),
    };
    let default_backends = raw.backends.as_ref().and_then(|b| backends(&mut e, b));
    if raw.case.is_empty() {
        e.push(0..0, "no [[case]]: a CASES file needs at least one");
    }
    if raw.case.len() > MAX_CASES {
        e.push(
            raw.case[MAX_CASES].span(),
            format!("more than {MAX_CASES} cases"),
        );
    }
    let mut cases = Vec::new();
    for c in raw.case.iter().take(MAX_CASES) {
        if let Some(case) = one(&mut e, c, default_backends.as_ref(), first) {
            cases.push(case);
        }
    }
    if !e.list.is_empty() {
        return Err(ConfigErrors(e.list));
    }
    Ok(Cases { settings, cases })
}

fn one(
    e: &mut Errors,
    c: &Spanned<RawCase>,
    default_backends: Option<&Vec<std::net::SocketAddr>>,
    first: usize,
) -> Option<Case> {
    let r = c.get_ref();
    let before = e.list.len();
    // A case's request carries only the headers it names (and Host).
    let mut sample = Sample::new();
    let _ = sample.set_headers::<&str>(&[]);
    let apply = |e: &mut Errors, span: Range<usize>, res: Result<(), String>| {
        if let Err(m) = res {
            e.push(span, m);
        }
    };
    if let (Some(rq), Some(p)) = (&r.request, &r.payload_hex) {
        e.push(
            p.span(),
            format!(
                "a case has either request (http) or payload_hex (tcp), not both (request on line {})",
                line_col(e.src, rq.span().start).0
            ),
        );
    }
    if let Some(rq) = &r.request {
        apply(e, rq.span(), sample.set_request(rq.get_ref()));
    }
    // Before the headers, so that headers on a tcp case are an error.
    if let Some(p) = &r.payload_hex {
        apply(e, p.span(), sample.set_payload_hex(p.get_ref()));
    }
    if let Some(hs) = &r.headers {
        let list: Vec<&str> = hs.iter().map(|h| h.get_ref().as_str()).collect();
        let span = hs.first().map_or(c.span(), |h| h.span());
        apply(e, span, sample.set_headers(&list));
    }
    if let Some(cl) = &r.client {
        apply(e, cl.span(), sample.set_client(cl.get_ref()));
    }
    let list = match &r.backends {
        Some(b) => backends(e, b),
        None => default_backends.cloned(),
    };
    if let Some(list) = list {
        sample.backends = list;
    }
    let n = sample.backends.len();
    let number = |e: &mut Errors, v: &Spanned<i64>| -> Option<usize> {
        let i = *v.get_ref();
        let ok = i >= first as i64 && ((i - first as i64) as usize) < n;
        if !ok {
            e.push(
                v.span(),
                format!(
                    "backend {i} does not exist: this case has {n} backends, numbered from {first}"
                ),
            );
        }
        ok.then(|| (i - first as i64) as usize)
    };
    for d in r.down.iter().flatten() {
        if let Some(i) = number(e, d) {
            sample.down.push(i);
        }
    }
    let check = r.check.as_ref().and_then(|v| number(e, v)).unwrap_or(0);
    let mut backend = |e: &mut Errors, v: &toml::Value, span: Range<usize>| {
        let i = v.as_integer()?;
        number(e, &Spanned::new(span, i))
    };
    let select = r.select.as_ref().and_then(|v| match v.get_ref() {
        toml::Value::String(s) if s == "no opinion" => Some(Want::Answer(Select::NoOpinion)),
        toml::Value::String(s) if s == "fault" => Some(Want::Fault),
        toml::Value::Integer(_) => {
            backend(e, v.get_ref(), v.span()).map(|i| Want::Answer(Select::Backend(i)))
        }
        _ => {
            e.push(v.span(), SELECT_FORMS);
            None
        }
    });
    let key = r.key.as_ref().and_then(|v| key_want(e, v, &mut backend));
    let health = r.health.as_ref().and_then(|v| health_want(e, v));
    if select.is_none() && key.is_none() && health.is_none() && e.list.len() == before {
        e.push(
            r.name.span(),
            "this case expects nothing: give select, key or health",
        );
    }
    if e.list.len() != before {
        return None;
    }
    let (file, line, col) = e.at(&r.name.span());
    Some(Case {
        name: r.name.get_ref().clone(),
        at: format!("{}:{line}:{col}", file.display()),
        sample,
        check,
        select,
        key,
        health,
    })
}

/// `N` or `["IP:PORT", ...]`.
fn backends(e: &mut Errors, v: &Spanned<toml::Value>) -> Option<Vec<std::net::SocketAddr>> {
    let mut s = Sample::new();
    let text = match v.get_ref() {
        toml::Value::Integer(n) => n.to_string(),
        toml::Value::Array(a) if a.iter().all(|x| x.is_str()) => a
            .iter()
            .filter_map(|x| x.as_str())
            .collect::<Vec<_>>()
            .join(","),
        _ => {
            e.push(
                v.span(),
                "backends: expected a number or a list of \"IP:PORT\"",
            );
            return None;
        }
    };
    match s.set_backends(&text) {
        Ok(()) => Some(s.backends),
        Err(m) => {
            e.push(v.span(), m);
            None
        }
    }
}

const SELECT_FORMS: &str = "select: expected a backend number, \"no opinion\" or \"fault\"";

const KEY_FORMS: &str = "key: expected a key string, \"none\", \"need more\", \"fault\", { backend = N } or { key = \"...\" }";

fn key_want(
    e: &mut Errors,
    v: &Spanned<toml::Value>,
    backend: &mut impl FnMut(&mut Errors, &toml::Value, Range<usize>) -> Option<usize>,
) -> Option<Want<KeyAnswer>> {
    let w = match v.get_ref() {
        toml::Value::String(s) => match s.as_str() {
            "none" => KeyAnswer::None,
            "need more" => KeyAnswer::NeedMore,
            "fault" => return Some(Want::Fault),
            k => KeyAnswer::Key(k.as_bytes().to_vec()),
        },
        toml::Value::Table(t) if t.len() == 1 => match (t.get("backend"), t.get("key")) {
            (Some(b), _) if b.is_integer() => KeyAnswer::Backend(backend(e, b, v.span())?),
            (_, Some(toml::Value::String(k))) => KeyAnswer::Key(k.as_bytes().to_vec()),
            _ => {
                e.push(v.span(), KEY_FORMS);
                return None;
            }
        },
        _ => {
            e.push(v.span(), KEY_FORMS);
            return None;
        }
    };
    Some(Want::Answer(w))
}

const HEALTH_FORMS: &str = "health: expected \"up\", \"down\", \"fault\" or a table of up, load, weight_percent, maxconn, admin, agent_up";

fn health_want(e: &mut Errors, v: &Spanned<toml::Value>) -> Option<Want<HealthWant>> {
    let mut w = HealthWant::default();
    match v.get_ref() {
        toml::Value::String(s) if s == "up" || s == "down" => w.up = Some(s == "up"),
        toml::Value::String(s) if s == "fault" => return Some(Want::Fault),
        toml::Value::Table(t) if !t.is_empty() => {
            for (k, x) in t {
                let ok = match (k.as_str(), x) {
                    ("up", toml::Value::Boolean(b)) => w.up.replace(*b).is_none(),
                    ("agent_up", toml::Value::Boolean(b)) => w.agent_up.replace(*b).is_none(),
                    ("load", toml::Value::Integer(l)) if (0..=100).contains(l) => {
                        w.load.replace(*l as u8).is_none()
                    }
                    ("weight_percent", toml::Value::Integer(p)) if (0..=1000).contains(p) => {
                        w.weight_percent.replace(*p as u32).is_none()
                    }
                    ("maxconn", toml::Value::Integer(m)) if (0..=u32::MAX as i64).contains(m) => {
                        w.maxconn.replace(*m as u32).is_none()
                    }
                    ("admin", toml::Value::String(a)) => match AdminState::from_name(a) {
                        Some(a) => w.admin.replace(a).is_none(),
                        None => false,
                    },
                    _ => false,
                };
                if !ok {
                    e.push(
                        v.span(),
                        format!("health: bad {k:?} (up, agent_up: true/false; load 0-100; weight_percent 0-1000; maxconn; admin \"ready\"|\"drain\"|\"maint\")"),
                    );
                    return None;
                }
            }
        }
        _ => {
            e.push(v.span(), HEALTH_FORMS);
            return None;
        }
    }
    Some(Want::Answer(w))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse1(case: &str, first: usize) -> Case {
        let src = format!("backends = 2\n[[case]]\nname = \"c\"\n{case}\n");
        let mut c = parse(Path::new("C.toml"), &src, first)
            .unwrap_or_else(|e| panic!("{e}"))
            .cases;
        c.remove(0)
    }

    /// The errors of a file whose backends are numbered from 1.
    fn error(src: &str) -> String {
        parse(Path::new("C.toml"), src, 1)
            .err()
            .unwrap()
            .to_string()
    }

    #[test]
    fn key_words_and_their_literal_spelling() {
        let key = |k: &str| parse1(&format!("key = {k}"), 1).key.unwrap();
        assert_eq!(
            key("\"alice\""),
            Want::Answer(KeyAnswer::Key(b"alice".to_vec()))
        );
        assert_eq!(key("\"none\""), Want::Answer(KeyAnswer::None));
        assert_eq!(key("\"need more\""), Want::Answer(KeyAnswer::NeedMore));
        assert_eq!(key("\"fault\""), Want::Fault);
        assert_eq!(
            key("{ key = \"none\" }"),
            Want::Answer(KeyAnswer::Key(b"none".to_vec()))
        );
        assert_eq!(key("{ backend = 2 }"), Want::Answer(KeyAnswer::Backend(1)));
    }

    #[test]
    fn backend_numbers_follow_the_plugin_language() {
        let lua = parse1("select = 2\ndown = [1]\ncheck = 2\nhealth = \"up\"", 1);
        assert_eq!(lua.select, Some(Want::Answer(Select::Backend(1))));
        assert_eq!((lua.sample.down.as_slice(), lua.check), (&[0][..], 1));
        let wasm = parse1("select = 0", 0);
        assert_eq!(wasm.select, Some(Want::Answer(Select::Backend(0))));
        let e = error("[[case]]\nname = \"c\"\nselect = 0\n");
        assert!(
            e.starts_with("C.toml:3:10: backend 0 does not exist"),
            "{e}"
        );
    }

    #[test]
    fn a_tcp_case_has_no_headers() {
        let tcp = parse1("payload_hex = \"0300\"\nkey = \"none\"", 1);
        assert_eq!(tcp.sample.payload, [3, 0]);
        assert!(tcp.sample.http.is_none());
        let e = error(
            "[[case]]\nname = \"c\"\npayload_hex = \"03\"\nheaders = [\"X: y\"]\nkey = \"none\"\n",
        );
        assert!(
            e.starts_with("C.toml:4:12: a header needs an http request"),
            "{e}"
        );
    }

    #[test]
    fn a_health_table_names_what_it_compares() {
        let h = parse1("health = { up = true, admin = \"drain\", load = 40 }", 1);
        let want = HealthWant {
            up: Some(true),
            load: Some(40),
            admin: Some(AdminState::Drain),
            ..HealthWant::default()
        };
        assert_eq!(h.health, Some(Want::Answer(want)));
        let e = error("[[case]]\nname = \"c\"\nhealth = { load = 101 }\n");
        assert!(e.starts_with("C.toml:3:10: health: bad \"load\""), "{e}");
    }
}
