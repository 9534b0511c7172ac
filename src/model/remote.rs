//! `deskhand run --engine URL`: the think stage on a model server people already run
//! (llama-server, vLLM, LM Studio), through the OpenAI-compatible `/v1/chat/completions`, for
//! workstations without a GPU that share one server.
//!
//! The conversation is the family's own messages (`Family::messages`), screenshots as base64
//! PNG `image_url` parts; the server applies its chat template. Where the server can, the reply
//! is held to the family's grammar (llama-server's `grammar`, vLLM's structured outputs); it is
//! parsed with the same family parser as a local model's, so a reply that does not parse is a
//! model failure, as it is locally.
//!
//! Screenshots leave the machine here, so `deskhand run` lets this engine reach loopback only,
//! unless a policy file lists the host (`PolicyEngine::engine_host`).

use std::collections::HashMap;
use std::io::Cursor;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

use super::conversation::{Piece, Role};
use super::family::{Family, FamilyId};
use super::{Backend, ModelError, Prompt, Reply, Timings, UnusableReply};

/// How the server is held to the family's reply syntax.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Constraint {
    /// llama-server: the family's GBNF in the request's `grammar` field.
    Grammar,
    /// vLLM: the same GBNF as `structured_outputs: {grammar}`.
    Vllm,
    /// Nothing: the reply is only parsed (LM Studio and other servers).
    None,
}

/// Where the engine is and how patient to be with it.
#[derive(Debug, Clone)]
pub struct RemoteConfig {
    /// The API's base, e.g. `http://127.0.0.1:8080/v1`.
    pub url: String,
    /// The model's name on the server.
    pub model: String,
    pub family: FamilyId,
    pub constraint: Constraint,
    pub connect_timeout: Duration,
    /// For a whole answer, connection included.
    pub timeout: Duration,
    /// Further tries after a connection error or a 5xx answer.
    pub retries: u32,
    pub max_tokens: u32,
    /// Send the screenshots; off for a server whose model has no vision, as a local model
    /// without a projector runs on the conversation's text alone.
    pub images: bool,
}

impl RemoteConfig {
    pub fn new(url: &str, model: &str, family: FamilyId) -> RemoteConfig {
        RemoteConfig {
            url: url.trim_end_matches('/').to_owned(),
            model: model.to_owned(),
            family,
            constraint: Constraint::Grammar,
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(300),
            retries: 3,
            max_tokens: 1024,
            images: true,
        }
    }
}

/// A model behind an OpenAI-compatible server.
pub struct RemoteEngine {
    config: RemoteConfig,
    client: reqwest::blocking::Client,
    endpoint: String,
    /// The screenshots of the last request as data URLs, by frame: each request carries every
    /// screenshot of the conversation, and most were in the one before.
    encoded: HashMap<u64, String>,
}

impl RemoteEngine {
    pub fn new(config: RemoteConfig) -> Result<RemoteEngine, ModelError> {
        let client = reqwest::blocking::Client::builder()
            .connect_timeout(config.connect_timeout)
            .timeout(config.timeout)
            .build()
            .map_err(|e| ModelError::Remote(format!("cannot make an HTTP client: {e}")))?;
        Ok(RemoteEngine {
            endpoint: format!("{}/chat/completions", config.url),
            config,
            client,
            encoded: HashMap::new(),
        })
    }

    pub fn family(&self) -> &'static dyn Family {
        self.config.family.family()
    }

    /// The request for `prompt`: the family's messages, screenshots inline as PNG (each
    /// encoded once while it stays in the conversation).
    pub fn body(&mut self, prompt: &Prompt<'_>) -> Result<Value, ModelError> {
        let family = self.family();
        let mut encoded = HashMap::new();
        let messages = family.messages(&prompt.system, &prompt.task, &prompt.turns());
        let mut out = Vec::new();
        for message in &messages {
            let mut parts: Vec<Value> = Vec::new();
            let mut text = String::new();
            for piece in &message.parts {
                match piece {
                    Piece::Markup(t) | Piece::Content(t) => text.push_str(t),
                    Piece::Image { .. } if !self.config.images => {}
                    Piece::Image { turn } => {
                        if !text.is_empty() {
                            parts.push(json!({"type": "text", "text": std::mem::take(&mut text)}));
                        }
                        let frame = prompt.frame_of(*turn).ok_or_else(|| {
                            ModelError::Remote(format!("the conversation has no screenshot {turn}"))
                        })?;
                        let id = super::frame_id(frame);
                        let url = match encoded.get(&id).or_else(|| self.encoded.get(&id)) {
                            Some(url) => String::clone(url),
                            None => png_data_url(&frame.image)?,
                        };
                        encoded.insert(id, url.clone());
                        parts.push(json!({
                            "type": "image_url",
                            "image_url": {"url": url},
                        }));
                    }
                }
            }
            let content = if parts.is_empty() {
                Value::String(text)
            } else {
                if !text.is_empty() {
                    parts.push(json!({"type": "text", "text": text}));
                }
                Value::Array(parts)
            };
            let role = match message.role {
                Role::System => "system",
                Role::User => "user",
                Role::Assistant => "assistant",
            };
            out.push(json!({"role": role, "content": content}));
        }
        let mut body = json!({
            "model": self.config.model,
            "messages": out,
            "max_tokens": self.config.max_tokens,
            "temperature": 0.0,
            "stream": false,
        });
        match self.config.constraint {
            Constraint::Grammar => body["grammar"] = Value::String(family.grammar()),
            Constraint::Vllm => body["structured_outputs"] = json!({"grammar": family.grammar()}),
            Constraint::None => {}
        }
        self.encoded = encoded;
        Ok(body)
    }

    /// Posts `body`, trying again after connection errors and 5xx answers with a growing
    /// pause; every other failure is said at once, naming the server and what it answered.
    fn post(&self, payload: Vec<u8>) -> Result<Value, ModelError> {
        let endpoint = &self.endpoint;
        let mut last = String::new();
        for attempt in 0..=self.config.retries {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(250 << (attempt - 1).min(4)));
            }
            let sent = self
                .client
                .post(endpoint)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(payload.clone())
                .send();
            let answer = match sent {
                Ok(answer) => answer,
                Err(e) if e.is_timeout() => {
                    return Err(ModelError::Remote(format!(
                        "{endpoint} did not answer within {} s (--engine-timeout)",
                        self.config.timeout.as_secs()
                    )));
                }
                Err(e) => {
                    last = format!("cannot reach {endpoint}: {}", error_chain(&e));
                    continue;
                }
            };
            let status = answer.status();
            let text: String = match answer.text() {
                Ok(text) => text,
                Err(e) if e.is_timeout() => {
                    return Err(ModelError::Remote(format!(
                        "{endpoint} did not finish its answer within {} s (--engine-timeout)",
                        self.config.timeout.as_secs()
                    )));
                }
                Err(e) => {
                    last = format!("{endpoint} broke off its answer: {}", error_chain(&e));
                    continue;
                }
            };
            // llama-server answers 500 to screenshots it has no projector for: asking again
            // cannot help, so that one is said at once.
            let hint = no_vision_hint(&text);
            if status.is_server_error() && hint.is_none() {
                last = format!("{endpoint} answered {status}: {}", snippet(&text));
                continue;
            }
            if !status.is_success() {
                let hint = hint.unwrap_or_default();
                return Err(ModelError::Remote(format!(
                    "{endpoint} answered {status}: {}{hint}",
                    snippet(&text)
                )));
            }
            return serde_json::from_str(&text).map_err(|e| {
                ModelError::Remote(format!(
                    "{endpoint} answered with something that is not JSON ({e}): {}",
                    snippet(&text)
                ))
            });
        }
        Err(ModelError::Remote(format!(
            "{last} (after {} tries)",
            self.config.retries + 1
        )))
    }
}

impl Backend for RemoteEngine {
    fn reply(&mut self, prompt: &Prompt<'_>) -> Result<Reply, ModelError> {
        let started = Instant::now();
        let body = self.body(prompt)?;
        let payload = serde_json::to_vec(&body)
            .map_err(|e| ModelError::Remote(format!("cannot write the request: {e}")))?;
        let encoded = started.elapsed();
        let answer = self.post(payload)?;
        let text = answer["choices"][0]["message"]["content"]
            .as_str()
            .ok_or_else(|| {
                ModelError::Remote(format!(
                    "{}'s answer has no choices[0].message.content: {}",
                    self.endpoint,
                    snippet(&answer.to_string())
                ))
            })?
            .to_owned();
        let timings = timings_of(&answer, encoded, started.elapsed());
        let unusable = |error: ModelError, text: String, timings: Timings| {
            ModelError::Unusable(Box::new(UnusableReply {
                raw: text,
                timings,
                error,
            }))
        };
        let parsed = match self.family().parse(&text) {
            Ok(parsed) => parsed,
            Err(e) => return Err(unusable(e.into(), text, timings)),
        };
        let action = match parsed.action.to_action(&prompt.frame.map) {
            Ok(action) => action,
            Err(e) => return Err(unusable(e.into(), text, timings)),
        };
        Ok(Reply {
            raw: text,
            thought: parsed.thought,
            action,
            intent: parsed.intent,
            timings,
        })
    }
}

/// What the answer says it cost: the token counts of `usage`, and llama-server's own
/// `timings` where it sends them (`prompt_n` tokens evaluated, `cache_n` kept from its cache);
/// without them the wall time after the request was built counts as decoding. `encoded` is
/// the time the request took to build, `elapsed` the whole reply's.
fn timings_of(answer: &Value, encoded: Duration, elapsed: Duration) -> Timings {
    let count = |v: &Value| {
        v.as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(0)
    };
    let total_ms = elapsed.as_secs_f64() * 1e3;
    let request_encode_ms = encoded.as_secs_f64() * 1e3;
    let answered_ms = (total_ms - request_encode_ms).max(0.0);
    let server = &answer["timings"];
    let evaluated = server["prompt_n"].as_u64().map_or_else(
        || count(&answer["usage"]["prompt_tokens"]),
        |_| count(&server["prompt_n"]),
    );
    let (prefill_ms, decode_ms, http_overhead_ms) = match (
        server["prompt_ms"].as_f64(),
        server["predicted_ms"].as_f64(),
    ) {
        (Some(prompt), Some(predicted)) => (
            prompt,
            predicted,
            (answered_ms - prompt - predicted).max(0.0),
        ),
        _ => (0.0, answered_ms, 0.0),
    };
    Timings {
        prefill_tokens: evaluated,
        new_tokens: evaluated,
        reused_tokens: count(&server["cache_n"]),
        prefill_ms,
        decode_tokens: count(&answer["usage"]["completion_tokens"]),
        decode_ms,
        request_encode_ms,
        http_overhead_ms,
        total_ms,
        ..Timings::default()
    }
}

fn png_data_url(image: &image::RgbImage) -> Result<String, ModelError> {
    let mut png = Vec::new();
    image
        .write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|e| ModelError::Remote(format!("cannot encode the screenshot: {e}")))?;
    Ok(format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(png)
    ))
}

/// What to do when the server's answer says its model takes no images (llama-server's words
/// when it was started without a projector).
fn no_vision_hint(text: &str) -> Option<&'static str> {
    text.contains("image input is not supported").then_some(
        " (the server's model takes no images: start it with its projector, \
         llama-server --mmproj FILE, or pass --engine-text-only)",
    )
}

/// The start of a server's text, on one line, for an error message.
fn snippet(text: &str) -> String {
    let one_line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(200)
        .collect();
    if text.chars().count() > 200 {
        format!("{one_line}…")
    } else {
        one_line
    }
}

/// An error with its causes, which say what went wrong (refused, reset, DNS).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::PastTurn;
    use crate::screen::{Frame, FrameMap, MonitorInfo};

    fn frame() -> Frame {
        let monitor = MonitorInfo::single("screen", 64, 32);
        Frame {
            image: image::RgbImage::new(64, 32),
            map: FrameMap::new(&monitor, 64, 32),
        }
    }

    #[test]
    fn the_request_carries_the_familys_messages_its_grammar_and_the_screenshot() {
        let frame = frame();
        let prompt = Prompt::first(
            "You operate a desktop.".into(),
            "Open the menu.".into(),
            &frame,
        );
        for (family, constraint) in [
            (FamilyId::Gemma3, Constraint::Grammar),
            (FamilyId::Qwen25Vl, Constraint::Vllm),
            (FamilyId::UiTars, Constraint::None),
        ] {
            let mut config = RemoteConfig::new("http://127.0.0.1:9/v1/", "m", family);
            config.constraint = constraint;
            let mut engine = RemoteEngine::new(config).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(engine.endpoint, "http://127.0.0.1:9/v1/chat/completions");
            let body = engine.body(&prompt).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(body["model"], "m");
            let text = body.to_string();
            assert!(text.contains("Open the menu."), "{text}");
            assert!(text.contains("data:image/png;base64,"), "{text}");
            let grammar = family.family().grammar();
            match constraint {
                Constraint::Grammar => assert_eq!(body["grammar"], Value::String(grammar)),
                Constraint::Vllm => {
                    assert_eq!(
                        body["structured_outputs"]["grammar"],
                        Value::String(grammar)
                    );
                }
                Constraint::None => {
                    assert!(
                        body.get("grammar").is_none() && body.get("structured_outputs").is_none()
                    );
                }
            }
            let images = text.matches("image_url").count();
            assert_eq!(images, 2, "one image part (its type and its field): {text}");
        }
    }

    #[test]
    fn a_screenshot_is_encoded_once_while_it_stays_in_the_conversation() {
        let (first, second) = (frame(), {
            let mut f = frame();
            f.image.put_pixel(0, 0, image::Rgb([255, 0, 0]));
            f
        });
        let mut engine = RemoteEngine::new(RemoteConfig::new(
            "http://127.0.0.1:9/v1",
            "m",
            FamilyId::Gemma3,
        ))
        .unwrap_or_else(|e| panic!("{e}"));
        let step1 = Prompt::first("System.".into(), "Task.".into(), &first);
        let body1 = engine.body(&step1).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(engine.encoded.len(), 1);
        let mut step2 = Prompt::first("System.".into(), "Task.".into(), &second);
        step2.past.push(PastTurn {
            note: String::new(),
            frame: Some(&first),
            reply: "{}".into(),
        });
        let body2 = engine.body(&step2).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(engine.encoded.len(), 2);
        let urls = |body: &Value| -> Vec<String> {
            let text = body.to_string();
            text.split("data:image/png;base64,")
                .skip(1)
                .map(|rest| rest.split('"').next().unwrap_or_default().to_owned())
                .collect()
        };
        let (urls1, urls2) = (urls(&body1), urls(&body2));
        assert_eq!(urls2.len(), 2);
        assert_eq!(
            urls2[0], urls1[0],
            "the first screenshot, as it was sent before"
        );
        assert_ne!(urls2[1], urls1[0]);
        // A screenshot that left the conversation leaves the cache too.
        let step3 = Prompt::first("System.".into(), "Task.".into(), &second);
        engine.body(&step3).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(engine.encoded.len(), 1);
    }

    #[test]
    fn a_text_only_engine_is_sent_the_conversation_without_screenshots() {
        let frame = frame();
        let prompt = Prompt::first("System.".into(), "Open the menu.".into(), &frame);
        let mut config = RemoteConfig::new("http://127.0.0.1:9/v1", "m", FamilyId::Gemma3);
        config.images = false;
        let mut engine = RemoteEngine::new(config).unwrap_or_else(|e| panic!("{e}"));
        let body = engine.body(&prompt).unwrap_or_else(|e| panic!("{e}"));
        let text = body.to_string();
        assert!(!text.contains("image_url"), "{text}");
        assert!(text.contains("Open the menu."), "{text}");
        for message in body["messages"].as_array().into_iter().flatten() {
            assert!(message["content"].is_string(), "plain text: {message}");
        }
    }

    #[test]
    fn the_servers_own_timings_are_kept_and_the_rest_is_overhead() {
        let answer = json!({
            "usage": {"prompt_tokens": 300, "completion_tokens": 12},
            "timings": {"prompt_ms": 800.0, "predicted_ms": 150.0, "prompt_n": 40, "cache_n": 260},
        });
        let t = timings_of(
            &answer,
            Duration::from_millis(20),
            Duration::from_millis(1000),
        );
        assert_eq!(
            (
                t.prefill_tokens,
                t.new_tokens,
                t.reused_tokens,
                t.decode_tokens
            ),
            (40, 40, 260, 12)
        );
        assert_eq!(
            (t.prefill_ms, t.decode_ms, t.total_ms),
            (800.0, 150.0, 1000.0)
        );
        assert!((t.request_encode_ms - 20.0).abs() < 1e-9, "{t:?}");
        assert!((t.http_overhead_ms - 30.0).abs() < 1e-9, "{t:?}");
        // A server without llama-server's timings (vLLM): all of the answer counts as
        // decoding, and its overhead is not known.
        let bare = timings_of(
            &json!({"usage": {"prompt_tokens": 300}}),
            Duration::from_millis(10),
            Duration::from_millis(500),
        );
        assert_eq!((bare.prefill_tokens, bare.reused_tokens), (300, 0));
        assert_eq!(
            (bare.prefill_ms, bare.decode_ms, bare.http_overhead_ms),
            (0.0, 490.0, 0.0)
        );
    }
}
