//! A request's query parameters, read strictly: each one known, given once, and its
//! value checked, or the request is refused as `invalid_parameter` naming it.

use axum::extract::{rejection::QueryRejection, Query};
use chrono::{DateTime, Utc};

use super::error::ApiError;

/// A request's query parameters: each one known and given once.
pub(super) struct Params(Vec<(String, String)>);

impl Params {
    pub(super) fn new(
        query: Result<Query<Vec<(String, String)>>, QueryRejection>,
        known: &[&'static str],
    ) -> Result<Params, ApiError> {
        let Query(pairs) = query.map_err(|e| ApiError::InvalidParameter { name: "query", message: e.body_text() })?;
        for (i, (name, _)) in pairs.iter().enumerate() {
            let Some(name) = known.iter().find(|known| *known == name) else {
                let message = format!("unknown parameter {name:?}, expected one of {}", known.join(", "));
                return Err(ApiError::InvalidParameter { name: "query", message });
            };
            if pairs[..i].iter().any(|(earlier, _)| earlier == name) {
                return Err(ApiError::InvalidParameter { name, message: "is given more than once".into() });
            }
        }
        Ok(Params(pairs))
    }

    /// The parameter `name` read by `read`, whose error names it as `invalid_parameter`.
    pub(super) fn parse<T>(
        &self,
        name: &'static str,
        read: impl Fn(&str) -> Result<T, String>,
    ) -> Result<Option<T>, ApiError> {
        self.parse_with(name, read, |message| ApiError::InvalidParameter { name, message })
    }

    pub(super) fn parse_with<T>(
        &self,
        name: &str,
        read: impl Fn(&str) -> Result<T, String>,
        refuse: impl Fn(String) -> ApiError,
    ) -> Result<Option<T>, ApiError> {
        let value = self.0.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
        value.map(read).transpose().map_err(refuse)
    }
}

pub(super) fn parse_time(text: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("{text:?} is not an RFC 3339 time ({e}), for example 2026-11-20T09:00:00Z"))
}

/// A page size from 1 to `max`.
pub(super) fn parse_limit(text: &str, max: i64) -> Result<i64, String> {
    match text.parse::<i64>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(format!("{text:?} is not a number from 1 to {max}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_and_times_are_read_strictly() {
        assert_eq!(parse_limit("1000", 1000), Ok(1000));
        assert!(parse_limit("0", 1000).is_err() && parse_limit("1001", 1000).is_err() && parse_limit("x", 9).is_err());
        assert!(parse_time("2026-11-20T09:00:00Z").is_ok());
        assert!(parse_time("yesterday").unwrap_err().contains("RFC 3339"));
    }
}
