//! What OpenAI and Ollama chat share: turning messages (and tool definitions) into prompt
//! tokens with the model's chat template, and reading tool calls back out of the output.
//!
//! Tool calls use the Hermes/Qwen convention: the model answers
//! `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`. Templates that lay out `tools`
//! themselves get them; for others the definitions go into the system message. When a call is
//! required, the output is constrained to the call's JSON schema instead.

use crate::error::ApiError;
use serde_json::{json, Value};
use squish_engine::{Engine, OutputFormat};

/// One message as templates expect it: string content, optional tool calls.
pub fn normalize_message(m: &Value) -> Result<Value, ApiError> {
    let role = m.get("role").and_then(Value::as_str).ok_or_else(|| {
        ApiError::bad_request("Each message needs a string `role` (system, user, assistant or tool)", Some("messages"))
    })?;
    if !matches!(role, "system" | "developer" | "user" | "assistant" | "tool") {
        return Err(ApiError::bad_request(format!("Unknown message role `{role}`"), Some("messages")));
    }
    let content = match m.get("content") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for p in parts {
                match (p.get("type").and_then(Value::as_str), p.get("text").and_then(Value::as_str)) {
                    (Some("text"), Some(t)) => text.push_str(t),
                    (kind, _) => {
                        return Err(ApiError::bad_request(
                            format!("Message content parts of type {:?} are not supported; send text", kind.unwrap_or("?")),
                            Some("messages"),
                        ))
                    }
                }
            }
            text
        }
        Some(_) => return Err(ApiError::bad_request("Message `content` must be a string or a list of parts", Some("messages"))),
    };
    let role = if role == "developer" { "system" } else { role };
    let mut out = json!({"role": role, "content": content});
    if let Some(calls) = m.get("tool_calls").filter(|c| !c.is_null()) {
        // Templates expect arguments as objects; OpenAI sends them as JSON strings.
        let calls: Vec<Value> = calls
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                let f = c.get("function").unwrap_or(c);
                let args = f.get("arguments").cloned().unwrap_or(json!({}));
                let args = match &args {
                    Value::String(s) => serde_json::from_str(s).unwrap_or(args),
                    _ => args,
                };
                json!({"id": c.get("id"), "type": "function", "function": {"name": f.get("name"), "arguments": args}})
            })
            .collect();
        out["tool_calls"] = Value::Array(calls);
    }
    for key in ["tool_call_id", "name"] {
        if let Some(v) = m.get(key) {
            out[key] = v.clone();
        }
    }
    Ok(out)
}

/// How tools take part in one request.
pub enum ToolMode {
    None,
    /// The model may answer with text or calls.
    Auto(Vec<Value>),
    /// The model must call one of these (one, when a function was named).
    Required(Vec<Value>),
}

impl ToolMode {
    /// From OpenAI's `tools` and `tool_choice`.
    pub fn from_request(tools: Option<&Value>, choice: Option<&Value>) -> Result<Self, ApiError> {
        let tools: Vec<Value> = match tools {
            None | Some(Value::Null) => return Ok(Self::None),
            Some(Value::Array(t)) => t.iter().map(|t| t.get("function").cloned().unwrap_or_else(|| t.clone())).collect(),
            Some(_) => return Err(ApiError::bad_request("`tools` must be a list", Some("tools"))),
        };
        for t in &tools {
            if t.get("name").and_then(Value::as_str).is_none() {
                return Err(ApiError::bad_request("Each tool needs `function.name`", Some("tools")));
            }
        }
        if tools.is_empty() {
            return Ok(Self::None);
        }
        match choice {
            None | Some(Value::Null) => Ok(Self::Auto(tools)),
            Some(Value::String(s)) if s == "auto" => Ok(Self::Auto(tools)),
            Some(Value::String(s)) if s == "none" => Ok(Self::None),
            Some(Value::String(s)) if s == "required" => Ok(Self::Required(tools)),
            Some(c) => {
                let name = c.pointer("/function/name").and_then(Value::as_str).ok_or_else(|| {
                    ApiError::bad_request("`tool_choice` must be none, auto, required or {\"type\": \"function\", \"function\": {\"name\": ...}}", Some("tool_choice"))
                })?;
                let one: Vec<Value> = tools.into_iter().filter(|t| t["name"] == name).collect();
                if one.is_empty() {
                    return Err(ApiError::bad_request(format!("`tool_choice` names `{name}`, which is not in `tools`"), Some("tool_choice")));
                }
                Ok(Self::Required(one))
            }
        }
    }

    pub fn tools(&self) -> Option<&[Value]> {
        match self {
            Self::None => None,
            Self::Auto(t) | Self::Required(t) => Some(t),
        }
    }

    /// For required calls: the output is exactly one call object.
    pub fn output_format(&self) -> Option<OutputFormat> {
        let Self::Required(tools) = self else { return None };
        let options: Vec<Value> = tools
            .iter()
            .map(|t| {
                json!({
                    "type": "object",
                    "properties": {
                        "name": {"const": t["name"]},
                        "arguments": strict(t.get("parameters").cloned().unwrap_or(json!({"type": "object"}))),
                    },
                    "required": ["name", "arguments"],
                    "additionalProperties": false,
                })
            })
            .collect();
        let schema = if options.len() == 1 { options[0].clone() } else { json!({"anyOf": options}) };
        Some(OutputFormat::JsonSchema(schema))
    }
}

/// Arguments hold only the declared parameters (as OpenAI's strict mode): else a small model
/// invents keys without end.
fn strict(mut params: Value) -> Value {
    if let Some(obj) = params.as_object_mut() {
        if obj.contains_key("properties") {
            obj.entry("additionalProperties").or_insert(json!(false));
        }
    }
    params
}

/// Renders `messages` with the chat template and tokenizes them.
pub fn prompt_tokens(engine: &Engine, messages: &[Value], tools: &ToolMode) -> Result<Vec<u32>, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::bad_request("`messages` must hold at least one message", Some("messages")));
    }
    let model = engine.model();
    let template = model.chat_template().ok_or_else(|| {
        ApiError::bad_request("This model has no chat template; use /v1/completions with a plain prompt", Some("messages"))
    })?;
    let mut messages: Vec<Value> = messages.iter().map(normalize_message).collect::<Result<_, _>>()?;
    let tools_value = tools.tools().map(|t| Value::Array(t.iter().map(|f| json!({"type": "function", "function": f})).collect()));
    let text = match (&tools_value, template.knows_tools()) {
        (Some(tv), true) => template.render_with_tools(&messages, Some(tv), true),
        (Some(_), false) => {
            let intro = tool_instructions(tools.tools().unwrap_or_default());
            match messages.first_mut() {
                Some(first) if first["role"] == "system" => {
                    let content = format!("{}\n\n{intro}", first["content"].as_str().unwrap_or(""));
                    first["content"] = Value::String(content);
                }
                _ => messages.insert(0, json!({"role": "system", "content": intro})),
            }
            template.render_with_tools(&messages, None, true)
        }
        (None, _) => template.render_with_tools(&messages, None, true),
    }
    .map_err(|e| ApiError::bad_request(format!("The chat template rejected these messages: {e}"), Some("messages")))?;
    model.tokenizer.encode(&text, false).map_err(|e| ApiError::internal(e.to_string()))
}

fn tool_instructions(tools: &[Value]) -> String {
    let mut s = String::from(
        "You may call functions to help answer. To call one, reply only with\n<tool_call>\n{\"name\": <function name>, \"arguments\": <arguments as a JSON object>}\n</tool_call>\nThe functions:\n<tools>\n",
    );
    for t in tools {
        s.push_str(&t.to_string());
        s.push('\n');
    }
    s.push_str("</tools>");
    s
}

/// A call the model made: name and arguments (a JSON object).
#[derive(Debug, Clone)]
pub struct ToolCall {
    pub name: String,
    pub arguments: Value,
}

/// Reads the calls in the output. Required calls are the bare JSON object; others are
/// `<tool_call>` blocks. Returns None when the text holds no well-formed call.
pub fn parse_tool_calls(text: &str, mode: &ToolMode) -> Option<Vec<ToolCall>> {
    let one = |s: &str| -> Option<ToolCall> {
        let v: Value = serde_json::from_str(s.trim()).ok()?;
        let name = v.get("name")?.as_str()?.to_string();
        let known = mode.tools()?.iter().any(|t| t["name"] == name.as_str());
        known.then(|| ToolCall { name, arguments: v.get("arguments").cloned().unwrap_or(json!({})) })
    };
    match mode {
        ToolMode::None => None,
        ToolMode::Required(_) => one(text).map(|c| vec![c]),
        ToolMode::Auto(_) => {
            let mut calls = Vec::new();
            let mut rest = text;
            while let Some(open) = rest.find("<tool_call>") {
                let body = &rest[open + "<tool_call>".len()..];
                let close = body.find("</tool_call>").unwrap_or(body.len());
                calls.push(one(&body[..close])?);
                rest = &body[close..];
            }
            (!calls.is_empty()).then_some(calls)
        }
    }
}

/// A fresh id for a tool call or a completion: time and a counter, unique per process.
pub fn new_id(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    format!("{prefix}-{:x}{:04x}", t, N.fetch_add(1, Ordering::Relaxed) & 0xffff)
}

/// A seed for requests that give none.
pub fn random_seed() -> u64 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    t ^ (std::process::id() as u64).rotate_left(32)
}
