//! Helpers shared by the HTTP handlers: Google error envelopes, query parameters, field masks,
//! page tokens.

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};

use crate::rng::hash_bytes;

/// A Google API error.
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    pub status: u16,
    pub reason: String,
    pub message: String,
    pub domain: &'static str,
    pub headers: Vec<(&'static str, String)>,
    /// Raw body (no envelope), e.g. an HTML 502 page.
    pub raw_body: Option<String>,
    /// OAuth token-endpoint style body (`{"error","error_description"}`).
    pub oauth: bool,
}

impl ApiError {
    pub(crate) fn new(status: u16, reason: &str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            reason: reason.to_string(),
            message: message.into(),
            domain: "global",
            headers: Vec::new(),
            raw_body: None,
            oauth: false,
        }
    }

    pub(crate) fn oauth(status: u16, error: &str, description: impl Into<String>) -> Self {
        ApiError {
            oauth: true,
            ..ApiError::new(status, error, description)
        }
    }

    pub(crate) fn domain(mut self, d: &'static str) -> Self {
        self.domain = d;
        self
    }

    pub(crate) fn header(mut self, name: &'static str, v: String) -> Self {
        self.headers.push((name, v));
        self
    }

    pub(crate) fn not_found() -> Self {
        ApiError::new(404, "notFound", "Requested entity was not found.")
    }

    pub(crate) fn bad(reason: &str, msg: impl Into<String>) -> Self {
        ApiError::new(400, reason, msg)
    }

    pub(crate) fn unauthenticated() -> Self {
        ApiError::new(
            401,
            "authError",
            "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project.",
        )
        .header(
            "www-authenticate",
            "Bearer realm=\"https://accounts.google.com/\", error=\"invalid_token\"".into(),
        )
    }

    pub(crate) fn body_json(&self) -> Value {
        if self.oauth {
            return serde_json::json!({"error": self.reason, "error_description": self.message});
        }
        let item_msg = match self.reason.as_str() {
            "insufficientPermissions" => "Insufficient Permission".to_string(),
            "authError" => "Invalid Credentials".to_string(),
            "required" => "Login Required.".to_string(),
            _ => self.message.clone(),
        };
        let mut item =
            serde_json::json!({"message": item_msg, "domain": self.domain, "reason": self.reason});
        if self.reason == "authError" || self.reason == "required" {
            item["location"] = "Authorization".into();
            item["locationType"] = "header".into();
        }
        serde_json::json!({"error": {
            "code": self.status,
            "message": self.message,
            "errors": [item],
            "status": status_name(self.status),
        }})
    }
}

pub(crate) fn status_name(code: u16) -> &'static str {
    match code {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        409 => "ABORTED",
        429 => "RESOURCE_EXHAUSTED",
        500 => "INTERNAL",
        501 => "NOT_IMPLEMENTED",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        _ => "UNKNOWN",
    }
}

pub(crate) fn default_reason(code: u16) -> &'static str {
    match code {
        400 => "badRequest",
        401 => "authError",
        403 => "forbidden",
        404 => "notFound",
        429 => "rateLimitExceeded",
        _ => "backendError",
    }
}

pub(crate) fn default_message(code: u16) -> &'static str {
    match code {
        400 => "Bad Request",
        401 => "Invalid Credentials",
        403 => "Forbidden",
        404 => "Requested entity was not found.",
        429 => "Resource has been exhausted (e.g. check quota).",
        500 => "Internal error encountered.",
        503 => "The service is currently unavailable.",
        _ => "Backend Error",
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let (body, ct) = match &self.raw_body {
            Some(b) => (b.clone().into_bytes(), "text/html; charset=UTF-8"),
            None => (
                self.body_json().to_string().into_bytes(),
                "application/json; charset=UTF-8",
            ),
        };
        let mut resp = Response::new(Body::from(body));
        *resp.status_mut() = status;
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
        for (k, v) in &self.headers {
            if let Ok(v) = HeaderValue::from_str(v) {
                resp.headers_mut().insert(*k, v);
            }
        }
        resp
    }
}

/// A JSON success response.
pub(crate) fn json_response(v: &Value) -> Response {
    let mut resp = Response::new(Body::from(serde_json::to_vec(v).unwrap_or_default()));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=UTF-8"),
    );
    resp
}

/// Decoded query parameters (repeated keys kept).
#[derive(Debug, Default)]
pub(crate) struct Params(pub Vec<(String, String)>);

impl Params {
    pub(crate) fn parse(q: Option<&str>) -> Params {
        Params(
            q.map(|q| {
                url::form_urlencoded::parse(q.as_bytes())
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect()
            })
            .unwrap_or_default(),
        )
    }

    pub(crate) fn get(&self, k: &str) -> Option<&str> {
        self.0.iter().find(|(a, _)| a == k).map(|(_, v)| v.as_str())
    }

    pub(crate) fn all(&self, k: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(a, _)| a == k)
            .flat_map(|(_, v)| v.split(',').map(str::to_string).collect::<Vec<_>>())
            .filter(|s| !s.is_empty())
            .collect()
    }

    pub(crate) fn bool(&self, k: &str) -> Result<bool, ApiError> {
        match self.get(k) {
            None => Ok(false),
            Some(v) if v.eq_ignore_ascii_case("true") || v == "1" => Ok(true),
            Some(v) if v.eq_ignore_ascii_case("false") || v == "0" || v.is_empty() => Ok(false),
            Some(v) => Err(ApiError::bad(
                "invalidParameter",
                format!("Invalid value '{v}' for {k}"),
            )),
        }
    }

    /// `maxResults` with a default; Gmail clamps above `max`.
    pub(crate) fn max_results(&self, default: usize, max: usize) -> Result<usize, ApiError> {
        match self.get("maxResults") {
            None => Ok(default),
            Some(v) => match v.parse::<i64>() {
                Ok(n) if n <= 0 => Ok(default),
                Ok(n) => Ok((n as usize).min(max)),
                Err(_) => Err(ApiError::bad(
                    "invalidArgument",
                    format!("Invalid value at 'max_results' ({v})"),
                )),
            },
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Field masks

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Mask(Vec<(String, Option<Mask>)>);

/// Parses `a,b(c,d),e/f`.
pub(crate) fn parse_mask(s: &str) -> Result<Mask, ApiError> {
    let chars: Vec<char> = s.chars().filter(|c| !c.is_whitespace()).collect();
    let mut pos = 0;
    let m = parse_mask_list(&chars, &mut pos)?;
    if pos != chars.len() {
        return Err(ApiError::bad(
            "invalidParameter",
            format!("Invalid field selection {s}"),
        ));
    }
    Ok(m)
}

fn parse_mask_list(c: &[char], pos: &mut usize) -> Result<Mask, ApiError> {
    let mut items = Vec::new();
    loop {
        let mut name = String::new();
        while *pos < c.len() && !",()/".contains(c[*pos]) {
            name.push(c[*pos]);
            *pos += 1;
        }
        if name.is_empty() {
            return Err(ApiError::bad("invalidParameter", "Invalid field selection"));
        }
        let sub = if *pos < c.len() && c[*pos] == '(' {
            *pos += 1;
            let m = parse_mask_list(c, pos)?;
            if *pos >= c.len() || c[*pos] != ')' {
                return Err(ApiError::bad("invalidParameter", "Invalid field selection"));
            }
            *pos += 1;
            Some(m)
        } else if *pos < c.len() && c[*pos] == '/' {
            *pos += 1;
            let mut inner = parse_mask_list_one(c, pos)?;
            Some(Mask(vec![inner.0.remove(0)]))
        } else {
            None
        };
        items.push((name, sub));
        if *pos < c.len() && c[*pos] == ',' {
            *pos += 1;
            continue;
        }
        break;
    }
    Ok(Mask(items))
}

fn parse_mask_list_one(c: &[char], pos: &mut usize) -> Result<Mask, ApiError> {
    let mut name = String::new();
    while *pos < c.len() && !",()/".contains(c[*pos]) {
        name.push(c[*pos]);
        *pos += 1;
    }
    if name.is_empty() {
        return Err(ApiError::bad("invalidParameter", "Invalid field selection"));
    }
    let sub = if *pos < c.len() && c[*pos] == '/' {
        *pos += 1;
        Some(parse_mask_list_one(c, pos)?)
    } else if *pos < c.len() && c[*pos] == '(' {
        *pos += 1;
        let m = parse_mask_list(c, pos)?;
        if *pos >= c.len() || c[*pos] != ')' {
            return Err(ApiError::bad("invalidParameter", "Invalid field selection"));
        }
        *pos += 1;
        Some(m)
    } else {
        None
    };
    Ok(Mask(vec![(name, sub)]))
}

/// Applies a mask: objects keep only the listed keys, arrays are filtered element-wise.
pub(crate) fn apply_mask(v: Value, m: &Mask) -> Value {
    match v {
        Value::Array(items) => Value::Array(items.into_iter().map(|x| apply_mask(x, m)).collect()),
        Value::Object(mut obj) => {
            if m.0.iter().any(|(n, _)| n == "*") {
                return Value::Object(obj);
            }
            let mut out = Map::new();
            for (name, sub) in &m.0 {
                if let Some(x) = obj.remove(name) {
                    let x = match sub {
                        Some(s) => apply_mask(x, s),
                        None => x,
                    };
                    out.insert(name.clone(), x);
                }
            }
            Value::Object(out)
        }
        other => other,
    }
}

// ---------------------------------------------------------------------------------------------
// Page tokens

pub(crate) fn make_page_token(secret: u64, kind: u8, a: i64, b: u64, qh: u64) -> String {
    let payload = format!("{kind}.{a}.{b}.{qh:x}");
    let sig = hash_bytes(secret, payload.as_bytes());
    URL_SAFE_NO_PAD.encode(format!("{payload}.{sig:x}"))
}

pub(crate) fn read_page_token(
    secret: u64,
    kind: u8,
    qh: u64,
    token: &str,
) -> Result<(i64, u64), ApiError> {
    let bad = || ApiError::bad("invalidArgument", "Invalid pageToken");
    let raw = URL_SAFE_NO_PAD
        .decode(token.trim_end_matches('='))
        .map_err(|_| bad())?;
    let s = String::from_utf8(raw).map_err(|_| bad())?;
    let (payload, sig) = s.rsplit_once('.').ok_or_else(bad)?;
    if format!("{:x}", hash_bytes(secret, payload.as_bytes())) != sig {
        return Err(bad());
    }
    let parts: Vec<&str> = payload.split('.').collect();
    if parts.len() != 4 || parts[0] != kind.to_string() || parts[3] != format!("{qh:x}") {
        return Err(bad());
    }
    let a = parts[1].parse().map_err(|_| bad())?;
    let b = parts[2].parse().map_err(|_| bad())?;
    Ok((a, b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks() {
        let v = serde_json::json!({"nextPageToken": "x", "messages": [{"id": "1", "threadId": "2"}], "resultSizeEstimate": 3});
        let m = parse_mask("nextPageToken,messages(id)").expect("mask");
        assert_eq!(
            apply_mask(v.clone(), &m),
            serde_json::json!({"nextPageToken": "x", "messages": [{"id": "1"}]})
        );
        let m = parse_mask("messages/threadId").expect("mask");
        assert_eq!(
            apply_mask(v, &m),
            serde_json::json!({"messages": [{"threadId": "2"}]})
        );
        assert!(parse_mask("a(b").is_err());
    }

    #[test]
    fn page_tokens_are_signed() {
        let t = make_page_token(9, 1, 123, 456, 7);
        assert_eq!(read_page_token(9, 1, 7, &t).expect("valid"), (123, 456));
        assert!(read_page_token(9, 1, 8, &t).is_err());
        assert!(read_page_token(10, 1, 7, &t).is_err());
        assert!(read_page_token(9, 1, 7, "garbage").is_err());
    }
}
