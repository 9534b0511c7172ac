//! The model store against a local HTTP server on 127.0.0.1 that stands in for the Hugging Face
//! Hub: downloads, resumed downloads, corrupted downloads, verify, and `add` validation.
//! Every test works in its own temporary directory with its own catalog; nothing touches the
//! real home directory.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread;

use deskhand::model::compat::CompatError;
use deskhand::model::family::FamilyId;
use deskhand::model::gguf::fixture::GgufWriter;
use deskhand::model::store::{
    self, AddRequest, FileAction, FileStatus, Sha256Origin, Source, Store, StoreConfig, StoreError,
};
use sha2::{Digest, Sha256};

// ---------------------------------------------------------------------------------------------
// A tiny HTTP/1.1 server: GET only, honours "Range: bytes=N-", can cut a transfer short, can
// ignore Range, and records every request it sees.
// ---------------------------------------------------------------------------------------------

#[derive(Clone)]
struct Served {
    bytes: Vec<u8>,
    /// Send the full Content-Length but close the connection after this many body bytes, once.
    cut_once_after: Option<usize>,
    /// Answer Range requests with the whole file (200), like a server without range support.
    ignore_range: bool,
}

#[derive(Debug, Clone)]
struct Seen {
    path: String,
    range: Option<String>,
}

#[derive(Clone)]
struct Hub {
    base: String,
    files: Arc<Mutex<HashMap<String, Served>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Hub {
    fn start() -> Hub {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let hub = Hub {
            base,
            files: Arc::default(),
            seen: Arc::default(),
        };
        let server = hub.clone();
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let server = server.clone();
                thread::spawn(move || server.serve(stream));
            }
        });
        hub
    }

    fn put(&self, path: &str, served: Served) {
        self.files
            .lock()
            .expect("lock")
            .insert(path.to_string(), served);
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }

    fn serve(&self, mut stream: TcpStream) {
        let mut reader = BufReader::new(stream.try_clone().expect("clone stream"));
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).is_err() {
            return;
        }
        let path = request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or("/")
            .to_string();
        let mut range = None;
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("range")
            {
                range = Some(value.trim().to_string());
            }
        }
        self.seen.lock().expect("lock").push(Seen {
            path: path.clone(),
            range: range.clone(),
        });

        let served = {
            let mut files = self.files.lock().expect("lock");
            let Some(entry) = files.get_mut(&path) else {
                let _ = stream.write_all(
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
                return;
            };
            let served = entry.clone();
            entry.cut_once_after = None;
            served
        };
        let len = served.bytes.len();
        let start = range
            .as_deref()
            .filter(|_| !served.ignore_range)
            .and_then(|r| r.strip_prefix("bytes="))
            .and_then(|r| r.strip_suffix('-'))
            .and_then(|n| n.parse::<usize>().ok());
        let (head, body) = match start {
            Some(s) if s >= len => (
                format!(
                    "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{len}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                ),
                &served.bytes[..0],
            ),
            Some(s) => (
                format!(
                    "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {s}-{}/{len}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    len - 1,
                    len - s
                ),
                &served.bytes[s..],
            ),
            None => (
                format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"),
                &served.bytes[..],
            ),
        };
        if stream.write_all(head.as_bytes()).is_err() {
            return;
        }
        let body = match served.cut_once_after {
            Some(n) => &body[..n.min(body.len())],
            None => body,
        };
        let _ = stream.write_all(body);
        let _ = stream.flush();
        let _ = stream.shutdown(Shutdown::Both);
    }
}

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

const REPO: &str = "test-org/Tiny-VL-GGUF";
const MODEL_FILE: &str = "Tiny-VL-Q4_K_M.gguf";
const MMPROJ_FILE: &str = "mmproj-Tiny-VL-f16.gguf";

/// A qwen2vl text model, about 300 KB, so a transfer can be cut in the middle.
fn model_bytes(embedding_length: u32) -> Vec<u8> {
    GgufWriter::text_model("qwen2vl", embedding_length)
        .str("general.basename", "Tiny-VL")
        .tensor("blk.0.ffn_up.weight", &[u64::from(embedding_length), 1200])
        .build()
}

fn mmproj_bytes(width: u32) -> Vec<u8> {
    GgufWriter::mlp_mmproj(width).build()
}

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn served(bytes: &[u8]) -> Served {
    Served {
        bytes: bytes.to_vec(),
        cut_once_after: None,
        ignore_range: false,
    }
}

fn url_path(file: &str) -> String {
    format!("/{REPO}/resolve/main/{file}")
}

struct Setup {
    _dir: tempfile::TempDir,
    root: PathBuf,
    hub: Hub,
    model: Vec<u8>,
    mmproj: Vec<u8>,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().to_path_buf();
        let hub = Hub::start();
        let model = model_bytes(64);
        let mmproj = mmproj_bytes(64);
        hub.put(&url_path(MODEL_FILE), served(&model));
        hub.put(&url_path(MMPROJ_FILE), served(&mmproj));
        Setup {
            _dir: dir,
            root,
            hub,
            model,
            mmproj,
        }
    }

    /// Write a catalog with one model "tiny-vl"; `pinned` decides whether it has sha256s.
    fn store(&self, pinned: bool) -> Store {
        self.store_pinning(&self.model, &self.mmproj, pinned)
    }

    /// A catalog that pins these bytes (whatever the server serves).
    fn store_pinning(&self, model: &[u8], mmproj: &[u8], pinned: bool) -> Store {
        let pin = |bytes: &[u8]| {
            if pinned {
                format!("size = {}\nsha256 = \"{}\"\n", bytes.len(), sha256(bytes))
            } else {
                String::new()
            }
        };
        let catalog = format!(
            "schema_version = 1\n\n[[model]]\nname = \"tiny-vl\"\nfamily = \"qwen25-vl\"\n\
             repo = \"{REPO}\"\nrevision = \"main\"\ncoordinates = \"absolute-resized\"\n\
             image_min_tokens = 16\nimage_max_tokens = 64\nram_gb = 0.1\n\n\
             [model.gguf]\nfile = \"{MODEL_FILE}\"\n{}\n[model.mmproj]\nfile = \"{MMPROJ_FILE}\"\n{}",
            pin(model),
            pin(mmproj)
        );
        let catalog_path = self.root.join("catalog.toml");
        std::fs::write(&catalog_path, catalog).expect("write catalog");
        Store::open(StoreConfig {
            catalog: Some(catalog_path),
            endpoint: self.hub.base.clone(),
            ..StoreConfig::new(self.root.join("models"))
        })
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn dest(&self, file: &str) -> PathBuf {
        self.root.join("models").join("tiny-vl").join(file)
    }
}

fn file_requests(hub: &Hub, file: &str) -> Vec<Seen> {
    hub.seen()
        .into_iter()
        .filter(|s| s.path == url_path(file))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// pull
// ---------------------------------------------------------------------------------------------

#[test]
fn a_good_model_installs_and_verifies() {
    let s = Setup::new();
    let store = s.store(true);
    assert!(store.installed().expect("registry").is_empty());

    let outcome = store.pull("tiny-vl").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        outcome.files,
        vec![
            (MODEL_FILE.to_string(), FileAction::Downloaded),
            (MMPROJ_FILE.to_string(), FileAction::Downloaded),
        ]
    );
    assert!(outcome.unverified.is_empty());
    assert_eq!(std::fs::read(s.dest(MODEL_FILE)).expect("model"), s.model);
    assert_eq!(
        std::fs::read(s.dest(MMPROJ_FILE)).expect("mmproj"),
        s.mmproj
    );
    assert!(!store::partial_path(&s.dest(MODEL_FILE)).exists());

    let installed = store.installed().expect("registry");
    assert_eq!(installed.len(), 1);
    let m = &installed[0];
    assert_eq!(m.name, "tiny-vl");
    assert_eq!(m.family, FamilyId::Qwen25Vl);
    assert_eq!(m.source, Source::Pulled);
    assert_eq!(m.sha256_origin, Sha256Origin::Catalog);
    assert_eq!(m.model_sha256, sha256(&s.model));
    assert_eq!(m.mmproj_size, s.mmproj.len() as u64);
    let registry = std::fs::read_to_string(store.registry_path()).expect("installed.toml");
    assert!(registry.contains("source = \"pulled\""), "{registry}");

    let checks = store.verify().expect("verify");
    assert_eq!(checks.len(), 2);
    assert!(
        checks.iter().all(|c| c.status == FileStatus::Ok),
        "{checks:?}"
    );

    let rows = store.list().expect("list");
    assert!(
        rows.iter()
            .any(|r| r.name == "tiny-vl" && r.installed.is_some() && r.files_present)
    );

    // A second pull finds both files in place and downloads nothing.
    let before = s.hub.seen().len();
    let again = store.pull("tiny-vl").expect("pull again");
    assert!(
        again
            .files
            .iter()
            .all(|(_, a)| *a == FileAction::AlreadyPresent)
    );
    assert_eq!(s.hub.seen().len(), before);
}

#[test]
fn an_interrupted_download_resumes_with_a_range_request() {
    let s = Setup::new();
    let cut = s.model.len() / 3;
    s.hub.put(
        &url_path(MODEL_FILE),
        Served {
            cut_once_after: Some(cut),
            ..served(&s.model)
        },
    );
    let store = s.store(true);

    let err = store.pull("tiny-vl").expect_err("the transfer was cut");
    assert!(matches!(err, StoreError::Interrupted { .. }), "{err}");
    assert!(!err.is_bad_input());
    let message = err.to_string();
    assert!(message.contains("run the same command again"), "{message}");
    let partial = store::partial_path(&s.dest(MODEL_FILE));
    let kept = std::fs::metadata(&partial)
        .expect("the partial file is kept")
        .len();
    assert!(
        kept > 0 && kept <= cut as u64,
        "kept {kept} of a {cut}-byte cut"
    );
    assert_eq!(
        std::fs::read(&partial).expect("partial"),
        s.model[..kept as usize]
    );
    assert!(!s.dest(MODEL_FILE).exists());
    assert!(store.installed().expect("registry").is_empty());

    let outcome = store.pull("tiny-vl").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        outcome.files[0],
        (MODEL_FILE.to_string(), FileAction::Resumed { from: kept })
    );
    let requests = file_requests(&s.hub, MODEL_FILE);
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert_eq!(requests[0].range, None);
    assert_eq!(
        requests[1].range.as_deref(),
        Some(format!("bytes={kept}-").as_str())
    );

    assert_eq!(std::fs::read(s.dest(MODEL_FILE)).expect("model"), s.model);
    assert!(!partial.exists());
    assert_eq!(store.installed().expect("registry").len(), 1);
    assert!(
        store
            .verify()
            .expect("verify")
            .iter()
            .all(|c| c.status == FileStatus::Ok)
    );
}

#[test]
fn a_server_that_ignores_range_makes_the_download_start_over() {
    let s = Setup::new();
    s.hub.put(
        &url_path(MODEL_FILE),
        Served {
            ignore_range: true,
            ..served(&s.model)
        },
    );
    let store = s.store(true);
    // A stale partial file whose bytes are not even the file's.
    let partial = store::partial_path(&s.dest(MODEL_FILE));
    std::fs::create_dir_all(partial.parent().expect("dir")).expect("mkdir");
    std::fs::write(&partial, vec![0xAB; 5000]).expect("write partial");

    let outcome = store.pull("tiny-vl").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        outcome.files[0],
        (MODEL_FILE.to_string(), FileAction::Downloaded)
    );
    let requests = file_requests(&s.hub, MODEL_FILE);
    assert_eq!(requests[0].range.as_deref(), Some("bytes=5000-"));
    assert_eq!(std::fs::read(s.dest(MODEL_FILE)).expect("model"), s.model);
}

#[test]
fn a_complete_partial_file_is_finished_without_downloading_it_again() {
    let s = Setup::new();
    let store = s.store(true);
    let partial = store::partial_path(&s.dest(MODEL_FILE));
    std::fs::create_dir_all(partial.parent().expect("dir")).expect("mkdir");
    std::fs::write(&partial, &s.model).expect("write partial");

    let outcome = store.pull("tiny-vl").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        outcome.files[0],
        (
            MODEL_FILE.to_string(),
            FileAction::Resumed {
                from: s.model.len() as u64
            }
        )
    );
    assert_eq!(std::fs::read(s.dest(MODEL_FILE)).expect("model"), s.model);
}

#[test]
fn a_corrupted_file_is_rejected_and_nothing_is_installed() {
    let s = Setup::new();
    let mut wrong = s.model.clone();
    let middle = wrong.len() / 2;
    wrong[middle] ^= 0xFF;
    s.hub.put(&url_path(MODEL_FILE), served(&wrong));
    let store = s.store(true);

    let err = store.pull("tiny-vl").expect_err("sha256 mismatch");
    let message = err.to_string();
    match &err {
        StoreError::Sha256Mismatch {
            file,
            expected,
            actual,
            ..
        } => {
            assert_eq!(file, MODEL_FILE);
            assert_eq!(expected, &sha256(&s.model));
            assert_eq!(actual, &sha256(&wrong));
        }
        other => panic!("{other}"),
    }
    assert!(message.contains(MODEL_FILE), "{message}");
    assert!(message.contains(&sha256(&s.model)), "{message}");
    assert!(message.contains(&sha256(&wrong)), "{message}");
    assert!(
        message.contains("deskhand models pull tiny-vl"),
        "{message}"
    );

    assert!(!s.dest(MODEL_FILE).exists(), "no file in place");
    assert!(
        !store::partial_path(&s.dest(MODEL_FILE)).exists(),
        "the bad download is deleted"
    );
    assert!(store.installed().expect("registry").is_empty());
    assert!(!store.registry_path().exists());
}

#[test]
fn a_wrong_size_is_rejected() {
    let s = Setup::new();
    let mut longer = s.model.clone();
    longer.extend_from_slice(&[0; 100]);
    s.hub.put(&url_path(MODEL_FILE), served(&longer));
    let store = s.store(true);
    let err = store.pull("tiny-vl").expect_err("size mismatch");
    assert!(matches!(err, StoreError::SizeMismatch { .. }), "{err}");
    assert!(!s.dest(MODEL_FILE).exists());
    assert!(!store::partial_path(&s.dest(MODEL_FILE)).exists());
    assert!(store.installed().expect("registry").is_empty());
}

#[test]
fn an_unpinned_file_is_pulled_unverified_and_its_sha256_recorded() {
    let s = Setup::new();
    let store = s.store(false);
    let outcome = store.pull("tiny-vl").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        outcome.unverified,
        vec![MODEL_FILE.to_string(), MMPROJ_FILE.to_string()]
    );
    assert_eq!(outcome.model.sha256_origin, Sha256Origin::Computed);
    assert_eq!(outcome.model.model_sha256, sha256(&s.model));
    assert_eq!(outcome.model.mmproj_sha256, sha256(&s.mmproj));
    assert!(
        store
            .verify()
            .expect("verify")
            .iter()
            .all(|c| c.status == FileStatus::Ok)
    );

    // The recorded sha256 now protects the file: a changed file on disk is downloaded again.
    let mut f = std::fs::read(s.dest(MODEL_FILE)).expect("model");
    f[10] ^= 1;
    std::fs::write(s.dest(MODEL_FILE), &f).expect("write");
    let again = store.pull("tiny-vl").expect("pull again");
    assert_eq!(again.files[0].1, FileAction::Downloaded);
    assert_eq!(again.files[1].1, FileAction::AlreadyPresent);
    assert_eq!(std::fs::read(s.dest(MODEL_FILE)).expect("model"), s.model);
}

#[test]
fn verify_notices_changed_and_missing_files() {
    let s = Setup::new();
    let store = s.store(true);
    store.pull("tiny-vl").unwrap_or_else(|e| panic!("{e}"));

    let mut bytes = std::fs::read(s.dest(MODEL_FILE)).expect("model");
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    std::fs::write(s.dest(MODEL_FILE), &bytes).expect("write");
    let checks = store.verify().expect("verify");
    let model = checks
        .iter()
        .find(|c| c.role == "model")
        .expect("model check");
    match &model.status {
        FileStatus::Changed { expected, actual } => {
            assert_eq!(expected, &sha256(&s.model));
            assert_eq!(actual, &sha256(&bytes));
        }
        other => panic!("{other:?}"),
    }
    let mmproj = checks
        .iter()
        .find(|c| c.role == "mmproj")
        .expect("mmproj check");
    assert_eq!(mmproj.status, FileStatus::Ok);

    std::fs::remove_file(s.dest(MMPROJ_FILE)).expect("remove");
    let checks = store.verify().expect("verify");
    let mmproj = checks
        .iter()
        .find(|c| c.role == "mmproj")
        .expect("mmproj check");
    assert_eq!(mmproj.status, FileStatus::Missing);
    let rows = store.list().expect("list");
    assert!(rows.iter().any(|r| r.name == "tiny-vl" && !r.files_present));
}

#[test]
fn an_incompatible_pair_from_the_catalog_is_not_installed() {
    let s = Setup::new();
    // The catalog's mmproj projects to 32 values; the model's embedding_length is 64.
    let narrow = mmproj_bytes(32);
    s.hub.put(&url_path(MMPROJ_FILE), served(&narrow));
    let store = s.store_pinning(&s.model, &narrow, true);
    let err = store.pull("tiny-vl").expect_err("widths differ");
    assert!(
        matches!(err, StoreError::Compat(CompatError::WidthMismatch(_))),
        "{err}"
    );
    assert!(store.installed().expect("registry").is_empty());
}

#[test]
fn unknown_names_and_missing_files_are_bad_input() {
    let s = Setup::new();
    let store = s.store(true);
    let err = store.pull("no-such-model").expect_err("unknown");
    assert!(err.is_bad_input());
    assert!(err.to_string().contains("tiny-vl"), "{err}");

    s.hub
        .files
        .lock()
        .expect("lock")
        .remove(&url_path(MMPROJ_FILE));
    let err = store.pull("tiny-vl").expect_err("404");
    assert!(
        matches!(err, StoreError::HttpStatus { status: 404, .. }),
        "{err}"
    );
    assert!(!err.is_bad_input());
}

// ---------------------------------------------------------------------------------------------
// add
// ---------------------------------------------------------------------------------------------

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("write fixture");
    path
}

#[test]
fn add_registers_valid_files_and_guesses_the_family() {
    let s = Setup::new();
    let store = s.store(true);
    let lm = s.root.join("lmstudio");
    std::fs::create_dir_all(&lm).expect("mkdir");
    let model = write(&lm, "Qwen2.5-VL-7B-Instruct-Q4_K_M.gguf", &s.model);
    let mmproj = write(&lm, "mmproj-model-f16.gguf", &s.mmproj);

    let added = store
        .add(&AddRequest {
            model: model.clone(),
            mmproj: Some(mmproj.clone()),
            ..AddRequest::default()
        })
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(added.name, "qwen2.5-vl-7b-instruct-q4_k_m");
    assert_eq!(added.family, FamilyId::Qwen25Vl);
    assert_eq!(added.source, Source::Added);
    assert_eq!(added.sha256_origin, Sha256Origin::Computed);
    assert_eq!(added.model_sha256, sha256(&s.model));
    assert!(added.model_path.is_absolute());
    assert!(
        store
            .verify()
            .expect("verify")
            .iter()
            .all(|c| c.status == FileStatus::Ok)
    );
    let rows = store.list().expect("list");
    assert!(rows.iter().any(|r| r.name == added.name && !r.in_catalog));

    // UI-TARS is a qwen2vl model whose name says so.
    let tars = write(
        &lm,
        "model.gguf",
        &GgufWriter::text_model("qwen2vl", 64)
            .str("general.basename", "UI-TARS-1.5")
            .build(),
    );
    let added = store
        .add(&AddRequest {
            model: tars,
            mmproj: Some(mmproj.clone()),
            name: Some("my-tars".into()),
            family: None,
        })
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(added.family, FamilyId::UiTars);
    assert_eq!(store.installed().expect("registry").len(), 2);

    // --family wins over the guess; re-adding a name replaces its entry.
    let added = store
        .add(&AddRequest {
            model: model.clone(),
            mmproj: Some(mmproj),
            name: Some("my-tars".into()),
            family: Some(FamilyId::Qwen3Vl),
        })
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(added.family, FamilyId::Qwen3Vl);
    assert_eq!(store.installed().expect("registry").len(), 2);
}

#[test]
fn add_explains_what_is_wrong_with_the_files() {
    let s = Setup::new();
    let store = s.store(true);
    let d = s.root.join("files");
    std::fs::create_dir_all(&d).expect("mkdir");
    let model = write(&d, "model.gguf", &s.model);
    let mmproj = write(&d, "mmproj-model-f16.gguf", &s.mmproj);
    let add = |model: &Path, mmproj: Option<&Path>| {
        store
            .add(&AddRequest {
                model: model.to_path_buf(),
                mmproj: mmproj.map(Path::to_path_buf),
                ..AddRequest::default()
            })
            .expect_err("must be refused")
    };

    // The file is missing.
    let missing = d.join("nope.gguf");
    let err = add(&missing, Some(&mmproj));
    assert!(
        matches!(
            err,
            StoreError::Compat(CompatError::FileMissing { role: "model", .. })
        ),
        "{err}"
    );
    assert!(err.to_string().contains("nope.gguf"), "{err}");
    let err = add(&model, Some(&d.join("no-mmproj.gguf")));
    assert!(
        matches!(
            err,
            StoreError::Compat(CompatError::FileMissing { role: "mmproj", .. })
        ),
        "{err}"
    );

    // Not a GGUF.
    let html = write(&d, "page.gguf", b"<!doctype html><html>404</html>");
    let err = add(&html, Some(&mmproj));
    let msg = err.to_string();
    assert!(
        matches!(err, StoreError::Compat(CompatError::BadGguf { .. })),
        "{msg}"
    );
    assert!(
        msg.contains("page.gguf") && msg.contains("not a GGUF file"),
        "{msg}"
    );

    // A truncated model (an interrupted copy).
    let truncated = write(&d, "truncated.gguf", &s.model[..s.model.len() - 1000]);
    let err = add(&truncated, Some(&mmproj));
    assert!(err.to_string().contains("truncated"), "{err}");

    // No mmproj: no vision. The mmproj next to the model is suggested.
    let err = add(&model, None);
    let msg = err.to_string();
    assert!(
        matches!(err, StoreError::Compat(CompatError::NoVision { .. })),
        "{msg}"
    );
    assert!(
        msg.contains("--mmproj") && msg.contains("mmproj-model-f16.gguf"),
        "{msg}"
    );

    // The mmproj has no vision encoder.
    let audio = write(
        &d,
        "mmproj-audio.gguf",
        &GgufWriter::new()
            .str("general.architecture", "clip")
            .bool("clip.has_vision_encoder", false)
            .bool("clip.has_audio_encoder", true)
            .build(),
    );
    let err = add(&model, Some(&audio));
    assert!(
        matches!(err, StoreError::Compat(CompatError::NoVision { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("audio encoder only"), "{err}");

    // Model and mmproj swapped.
    let err = add(&mmproj, Some(&model));
    assert!(
        matches!(err, StoreError::Compat(CompatError::NotAModel { .. })),
        "{err}"
    );
    let other_model = write(&d, "other.gguf", &model_bytes(64));
    let err = add(&model, Some(&other_model));
    assert!(
        matches!(err, StoreError::Compat(CompatError::NotAnMmproj { .. })),
        "{err}"
    );

    // The mmproj does not fit: both widths are named.
    let wide = write(&d, "mmproj-wide.gguf", &mmproj_bytes(4096));
    let err = add(&model, Some(&wide));
    let msg = err.to_string();
    assert!(
        matches!(err, StoreError::Compat(CompatError::WidthMismatch(_))),
        "{msg}"
    );
    assert!(msg.contains("4096") && msg.contains("64"), "{msg}");

    // An architecture deskhand has no family for, and no --family.
    let llama = write(
        &d,
        "llama.gguf",
        &GgufWriter::text_model("llama", 64).build(),
    );
    let err = add(&llama, Some(&mmproj));
    assert!(matches!(err, StoreError::UnknownFamily { .. }), "{err}");
    assert!(err.to_string().contains("--family"), "{err}");

    // A catalog name is not available.
    let err = store
        .add(&AddRequest {
            model: model.clone(),
            mmproj: Some(mmproj.clone()),
            name: Some("tiny-vl".into()),
            family: None,
        })
        .expect_err("catalog name");
    assert!(err.to_string().contains("--name"), "{err}");

    for err in [
        add(&missing, Some(&mmproj)),
        add(&model, None),
        add(&model, Some(&wide)),
    ] {
        assert!(err.is_bad_input(), "{err}");
    }
    assert!(store.installed().expect("registry").is_empty());
}

/// Copies of one valid model and mmproj under `n` different file names.
fn model_files(s: &Setup, n: usize) -> Vec<(PathBuf, PathBuf)> {
    let d = s.root.join("many");
    std::fs::create_dir_all(&d).expect("mkdir");
    (0..n)
        .map(|i| {
            (
                write(&d, &format!("model-{i}.gguf"), &s.model),
                write(&d, &format!("mmproj-{i}.gguf"), &s.mmproj),
            )
        })
        .collect()
}

fn installed_names(store: &Store) -> Vec<String> {
    let mut names: Vec<String> = store
        .installed()
        .expect("registry")
        .into_iter()
        .map(|m| m.name)
        .collect();
    names.sort();
    names
}

#[test]
fn concurrent_adds_from_separate_stores_keep_every_entry() {
    let s = Setup::new();
    let files = model_files(&s, 8);
    // Each thread opens its own store, as each `deskhand models add` process would.
    let stores: Vec<Store> = (0..files.len()).map(|_| s.store(true)).collect();
    thread::scope(|scope| {
        for (i, (store, (model, mmproj))) in stores.iter().zip(&files).enumerate() {
            scope.spawn(move || {
                store
                    .add(&AddRequest {
                        model: model.clone(),
                        mmproj: Some(mmproj.clone()),
                        name: Some(format!("model-{i}")),
                        family: None,
                    })
                    .unwrap_or_else(|e| panic!("{e}"))
            });
        }
    });
    let expected: Vec<String> = (0..files.len()).map(|i| format!("model-{i}")).collect();
    assert_eq!(installed_names(&stores[0]), expected);
}

#[test]
fn concurrent_models_add_processes_keep_every_entry() {
    let s = Setup::new();
    let store = s.store(true);
    let files = model_files(&s, 6);
    let children: Vec<_> = files
        .iter()
        .enumerate()
        .map(|(i, (model, mmproj))| {
            std::process::Command::new(env!("CARGO_BIN_EXE_deskhand"))
                .args(["models", "add"])
                .arg(model)
                .arg("--mmproj")
                .arg(mmproj)
                .args(["--name", &format!("model-{i}")])
                .env("DESKHAND_MODELS_DIR", store.models_dir())
                .env("DESKHAND_CATALOG", s.root.join("catalog.toml"))
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("start deskhand models add")
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().expect("wait for deskhand");
        assert!(
            out.status.success(),
            "deskhand models add failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let expected: Vec<String> = (0..files.len()).map(|i| format!("model-{i}")).collect();
    assert_eq!(installed_names(&store), expected);
}

#[test]
fn a_damaged_registry_is_reported_with_its_line() {
    let s = Setup::new();
    let store = s.store(true);
    std::fs::create_dir_all(store.models_dir()).expect("mkdir");
    std::fs::write(
        store.registry_path(),
        "schema_version = 1\n\n[[model]]\nname = \"x\"\ncolour = \"blue\"\n",
    )
    .expect("write");
    let err = store.installed().expect_err("unknown field");
    let msg = err.to_string();
    assert!(msg.contains("installed.toml:"), "{msg}");
    assert!(msg.contains("colour"), "{msg}");
}
