//! `deskhand mcp --http ADDR`: MCP's streamable HTTP at `http://ADDR/mcp`, behind a bearer
//! token that deskhand keeps in a file only its user can read. Loopback only, unless the
//! person says `--listen`.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow};
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};

use super::{DeskhandMcp, Shared};
use crate::cli::{Failure, bad_input};

/// The token's length in random bytes (64 hex characters).
const TOKEN_BYTES: usize = 32;

pub async fn serve(
    shared: Arc<Shared>,
    addr: &str,
    listen: bool,
    token_file: Option<PathBuf>,
) -> Result<(), Failure> {
    let addr: SocketAddr = addr.parse().map_err(|e| {
        bad_input(anyhow!(
            "--http {addr}: not an address and port ({e}); for example --http 127.0.0.1:8765"
        ))
    })?;
    if !addr.ip().is_loopback() && !listen {
        return Err(bad_input(anyhow!(
            "--http {addr} would let other hosts drive this desktop; use a loopback address \
             (127.0.0.1), or add --listen if that is what you want"
        )));
    }
    let token_file = match token_file {
        Some(file) => file,
        None => default_token_file()?,
    };
    let token = ensure_token(&token_file)?;
    let mut config = StreamableHttpServerConfig::default();
    if !addr.ip().is_loopback() {
        // The Host header check guards loopback servers against DNS rebinding; one that
        // listens on purpose is reached by its own address.
        let mut hosts = config.allowed_hosts.clone();
        hosts.push(addr.ip().to_string());
        config = config.with_allowed_hosts(hosts);
    }
    let cancel = config.cancellation_token.clone();
    let session_shared = shared.clone();
    let service = StreamableHttpService::new(
        move || Ok(DeskhandMcp::new(session_shared.clone())),
        Arc::new(LocalSessionManager::default()),
        config,
    );
    let router = axum::Router::new()
        .nest_service("/mcp", service)
        .layer(from_fn_with_state(Arc::new(token), require_token));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let bound = listener.local_addr().context("the listening address")?;
    eprintln!(
        "deskhand mcp: serving MCP at http://{bound}/mcp; clients send the token in {} as \
         `Authorization: Bearer <token>`",
        token_file.display()
    );
    let abort = shared.abort.clone();
    let stop = cancel.clone();
    tokio::spawn(async move {
        while abort.reason().is_none() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        stop.cancel();
    });
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { cancel.cancelled_owned().await })
        .await
        .context("the HTTP server failed")?;
    Ok(())
}

/// Every request carries the token, or gets 401 and nothing else.
async fn require_token(State(token): State<Arc<String>>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if presented.is_some_and(|p| same_secret(p.trim().as_bytes(), token.as_bytes())) {
        return next.run(request).await;
    }
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        "deskhand mcp needs `Authorization: Bearer <token>`, the token in the file it printed at start\n",
    )
        .into_response()
}

/// Compares without stopping at the first difference, so timing does not tell how much of a
/// guess was right.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn default_token_file() -> Result<PathBuf, Failure> {
    directories::ProjectDirs::from("", "", "deskhand")
        .map(|d| d.config_dir().join("mcp-token"))
        .ok_or_else(|| {
            bad_input(anyhow!(
                "no home folder to keep the token in; pass --token-file FILE"
            ))
        })
}

/// The token in `path`, made (mode 0600, 64 random hex digits) when the file is missing. A
/// file another user owns, or that others may read or write, is refused.
pub fn ensure_token(path: &Path) -> Result<String, Failure> {
    match std::fs::metadata(path) {
        Ok(meta) => {
            // SAFETY: getuid has no preconditions and cannot fail.
            let me = unsafe { libc::getuid() };
            if meta.uid() != me {
                return Err(bad_input(anyhow!(
                    "{}: the token file belongs to another user (uid {}); use your own (--token-file)",
                    path.display(),
                    meta.uid()
                )));
            }
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(bad_input(anyhow!(
                    "{}: others may read the token file (mode {mode:o}); run `chmod 600 {}`, or \
                     delete it and deskhand makes a new one",
                    path.display(),
                    path.display()
                )));
            }
            let token = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?
                .trim()
                .to_owned();
            if token.len() < 32 {
                return Err(bad_input(anyhow!(
                    "{}: the token is {} characters, fewer than 32; delete the file and deskhand \
                     makes a new one",
                    path.display(),
                    token.len()
                )));
            }
            Ok(token)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
            }
            let mut random = [0u8; TOKEN_BYTES];
            std::fs::File::open("/dev/urandom")
                .and_then(|mut f| f.read_exact(&mut random))
                .context("cannot read /dev/urandom for a token")?;
            let token: String = random.iter().map(|b| format!("{b:02x}")).collect();
            // create_new: never write a token into a file someone else put there meanwhile.
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .with_context(|| format!("cannot create {}", path.display()))?;
            file.write_all(format!("{token}\n").as_bytes())
                .and_then(|()| file.sync_all())
                .with_context(|| format!("cannot write {}", path.display()))?;
            eprintln!(
                "deskhand mcp: made a new token in {} (mode 0600)",
                path.display()
            );
            Ok(token)
        }
        Err(e) => Err(anyhow!("cannot read {}: {e}", path.display()).into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_token_is_private_and_found_again() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
        let path = dir.path().join("sub/mcp-token");
        let made = ensure_token(&path).map_err(|f| f.error.to_string());
        let made = made.unwrap_or_default();
        assert_eq!(made.len(), 2 * TOKEN_BYTES);
        let mode = std::fs::metadata(&path).map(|m| m.permissions().mode() & 0o777);
        assert_eq!(mode.ok(), Some(0o600));
        let again = ensure_token(&path).map_err(|f| f.error.to_string());
        assert_eq!(again.ok(), Some(made));
    }

    #[test]
    fn a_token_others_can_read_is_refused() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
        let path = dir.path().join("mcp-token");
        std::fs::write(&path, "a".repeat(64)).unwrap_or_else(|e| panic!("write: {e}"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))
            .unwrap_or_else(|e| panic!("chmod: {e}"));
        let refused = ensure_token(&path).map_err(|f| f.error.to_string());
        assert!(
            refused.as_ref().is_err_and(|e| e.contains("chmod 600")),
            "{refused:?}"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .unwrap_or_else(|e| panic!("chmod: {e}"));
        std::fs::write(&path, "short").unwrap_or_else(|e| panic!("write: {e}"));
        assert!(ensure_token(&path).is_err());
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"abcd"));
    }
}
