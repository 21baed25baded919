//! The `[admin]` table: the admin API's listener, its token and the state file.

use std::path::Path;
use std::sync::Arc;

use super::raw;
use super::report::Reporter;
use super::types::AdminConfig;

/// Shortest token accepted from `token_file`.
const MIN_TOKEN: usize = 16;

pub(super) fn validate(
    r: &mut Reporter,
    a: Option<&toml::Spanned<raw::Admin>>,
    base: &Path,
) -> Option<AdminConfig> {
    let span = a?.span();
    let a = a?.get_ref();
    let Some(listen) = &a.listen else {
        r.err(
            span,
            "admin: `listen` is required (the API is off without [admin])",
        );
        return None;
    };
    let addr = r.address(listen, "admin.listen");
    let token = a.token_file.as_ref().and_then(|f| {
        let path = base.join(f.get_ref());
        match std::fs::read_to_string(&path) {
            Ok(t) if t.trim().len() >= MIN_TOKEN && !t.trim().contains(char::is_whitespace) => {
                Some(Arc::from(t.trim()))
            }
            Ok(_) => {
                r.err(
                    f.span(),
                    format!(
                        "admin.token_file: {} must hold one token of at least {MIN_TOKEN} \
                         characters without spaces, e.g. `head -c 24 /dev/urandom | base64 > FILE`",
                        path.display()
                    ),
                );
                None
            }
            Err(e) => {
                r.err(
                    f.span(),
                    format!("admin.token_file: cannot read {}: {e}", path.display()),
                );
                None
            }
        }
    });
    let addr = addr?;
    if a.token_file.is_none() && !addr.ip().is_loopback() {
        r.err(
            listen.span(),
            format!(
                "admin.listen: {addr} is not a loopback address, so a token_file is required \
                 (anyone who reaches the API could drain the backends)"
            ),
        );
    }
    Some(AdminConfig {
        listen: addr,
        token,
        state_file: a.state_file.as_ref().map(|f| base.join(f.get_ref())),
    })
}
