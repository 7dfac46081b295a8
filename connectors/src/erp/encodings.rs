//! How Debezium writes a number or a time into a change event, and how to read it back
//! exactly: pure functions of a column's JSON value and, when the JSON converter sends
//! schemas, of that column's field schema.
//!
//! The shapes relied on, and where they were read:
//!
//! - Debezium's Oracle connector documentation (`debezium/debezium`,
//!   `documentation/modules/ROOT/pages/connectors/oracle.adoc`, "Numeric types" and
//!   "Temporal types"). With `decimal.handling.mode=precise`, the default, a `NUMBER`
//!   without precision is `io.debezium.data.VariableScaleDecimal`: a struct of `scale`
//!   (INT32) and `value` (BYTES, the unscaled value). `NUMBER(P, S > 0)`, and
//!   `NUMBER(P, S <= 0)` with `P - S >= 19`, is `org.apache.kafka.connect.data.Decimal`:
//!   BYTES, with the scale only in the schema. `NUMBER(P, S <= 0)` with `P - S < 19` is
//!   INT8 to INT64. `decimal.handling.mode=double` gives FLOAT64 and `string` a formatted
//!   string (`BigDecimal.toPlainString()`, in `SpecialValueDecimal`: `"-6"`, `"12.000"`).
//!   `DATE` and `TIMESTAMP(0-3)` are `io.debezium.time.Timestamp` (epoch milliseconds),
//!   `TIMESTAMP(4-6)` `io.debezium.time.MicroTimestamp` (microseconds), `TIMESTAMP(7-9)`
//!   `io.debezium.time.NanoTimestamp` (nanoseconds), all three without a time zone;
//!   `TIMESTAMP WITH [LOCAL] TIME ZONE` is `io.debezium.time.ZonedTimestamp`, an ISO-8601
//!   string with its offset. `time.precision.mode=connect` gives
//!   `org.apache.kafka.connect.data.Timestamp` (milliseconds), and for `DATE`
//!   `org.apache.kafka.connect.data.Date` (days); `isostring` gives
//!   `io.debezium.time.IsoTimestamp`, an ISO-8601 string in UTC.
//! - `VariableScaleDecimal.fromLogical` (`debezium-connector-common`): `value` is
//!   `BigDecimal.unscaledValue().toByteArray()`, big-endian two's complement, and `scale`
//!   is `BigDecimal.scale()`, which may be negative.
//! - Kafka's `JsonConverter` (`apache/kafka`, `connect/json`): BYTES are base64 (Jackson's
//!   default variant: the standard alphabet, padded); a `Decimal` is the base64 of its
//!   unscaled bytes (`decimal.format=BASE64`, the default) or a JSON number (`NUMERIC`). A
//!   field schema is `{"type", "optional", "name", "version", "parameters", "field"}`, with
//!   `type` one of `JsonSchema`'s names (`int8` to `int64`, `float` and `double` for FLOAT32
//!   and FLOAT64, `bytes`, `string`, `struct`) and the parameters strings:
//!   `{"scale": "2", "connect.decimal.precision": "12"}`.

use std::fmt;

use base64::{prelude::BASE64_STANDARD, Engine};
use chrono::{DateTime, Utc};
use serde_json::{Map, Number, Value};

const DECIMAL: &str = "org.apache.kafka.connect.data.Decimal";
const VARIABLE_SCALE_DECIMAL: &str = "io.debezium.data.VariableScaleDecimal";

/// Why a column's value is not the whole number or the time it should be. The message
/// follows the column's name: "QUANTITY is 12.5, not a whole number".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("is {0}, not a whole number")]
    Fractional(String),
    #[error("is {0}, out of the range of a 64-bit integer")]
    OutOfRange(String),
    #[error("is {0}, a double too large to be exact (above 2^53); use decimal.handling.mode=precise or string")]
    Inexact(String),
    #[error(
        "is a decimal's base64 bytes, whose scale only the schema has: enable the JSON converter's schemas \
         (value.converter.schemas.enable=true) or set decimal.handling.mode=string"
    )]
    ScaleUnknown,
    #[error("is a date without a time of day ({0}); use time.precision.mode=adaptive")]
    DateOnly(String),
    #[error("is not {expected}: {found}")]
    Invalid { expected: &'static str, found: String },
}

/// The field schema of `column` in the envelope schema's `after` struct, if the event has
/// one (the JSON converter with `schemas.enable=true`).
pub fn field_schema<'a>(envelope: &'a Value, column: &str) -> Option<&'a Value> {
    let fields = |schema: &'a Value| schema["fields"].as_array().into_iter().flatten();
    let after = fields(envelope).find(|f| f["field"] == "after")?;
    fields(after).find(|f| f["field"] == column)
}

/// The whole number in a column (a journal row's id or quantity), in any of Debezium's
/// encodings of a number. With a schema, the schema says which; without one, the value's
/// JSON type does, and a bare `Decimal` (a base64 string) is refused: its scale is only in
/// the schema, and guessing it would multiply quantities by a power of ten.
pub fn whole_number(value: &Value, schema: Option<&Value>) -> Result<i64, ValueError> {
    let number = decimal(value, number_encoding(schema)?)?;
    i64::try_from(number.whole()?).map_err(|_| ValueError::OutOfRange(short(&number.to_string())))
}

/// The time in a column (the journal row's change time), in any of Debezium's encodings of
/// a timestamp.
pub fn timestamp(value: &Value, schema: Option<&Value>) -> Result<DateTime<Utc>, ValueError> {
    let invalid = || ValueError::Invalid { expected: "a timestamp", found: short(&value.to_string()) };
    let encoding = time_encoding(schema)?;
    if let Value::String(text) = value {
        return match encoding {
            None | Some(TimeEncoding::Text) => {
                DateTime::parse_from_rfc3339(text).map(Into::into).map_err(|_| invalid())
            }
            Some(_) => Err(invalid()),
        };
    }
    let n = value.as_i64().ok_or_else(invalid)?;
    let unit = match encoding {
        Some(TimeEncoding::Text) => return Err(invalid()),
        Some(unit) => unit,
        None => unit_by_size(n).ok_or_else(|| ValueError::Invalid {
            expected: "an epoch time after 1973-03-03 (without a schema, its unit is told by its size)",
            found: n.to_string(),
        })?,
    };
    match unit {
        TimeEncoding::Millis => DateTime::from_timestamp_millis(n),
        TimeEncoding::Micros => DateTime::from_timestamp_micros(n),
        TimeEncoding::Nanos => Some(DateTime::from_timestamp_nanos(n)),
        TimeEncoding::Text => None,
    }
    .ok_or_else(invalid)
}

/// How a column's number is written, as its field schema says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NumberEncoding {
    /// INT8 to INT64, or FLOAT32 and FLOAT64 (`decimal.handling.mode=double`).
    Json,
    /// STRING (`decimal.handling.mode=string`).
    Text,
    /// `Decimal`: base64 of the unscaled value, or a JSON number (`decimal.format=NUMERIC`).
    Decimal {
        scale: i64,
    },
    VariableScale,
}

fn number_encoding(schema: Option<&Value>) -> Result<Option<NumberEncoding>, ValueError> {
    let Some(schema) = schema else { return Ok(None) };
    let unsupported = || ValueError::Invalid { expected: "a number in its schema", found: short(&schema.to_string()) };
    match (schema["name"].as_str(), schema["type"].as_str()) {
        (Some(DECIMAL), _) => {
            let scale = schema["parameters"]["scale"].as_str().and_then(|s| s.parse().ok()).ok_or_else(unsupported)?;
            Ok(Some(NumberEncoding::Decimal { scale }))
        }
        (Some(VARIABLE_SCALE_DECIMAL), _) => Ok(Some(NumberEncoding::VariableScale)),
        (_, Some("int8" | "int16" | "int32" | "int64" | "float" | "double")) => Ok(Some(NumberEncoding::Json)),
        (_, Some("string")) => Ok(Some(NumberEncoding::Text)),
        _ => Err(unsupported()),
    }
}

/// The exact value of a number column; `None` is no schema, so the value's JSON type says.
fn decimal(value: &Value, encoding: Option<NumberEncoding>) -> Result<Decimal, ValueError> {
    use NumberEncoding as E;
    let invalid = || ValueError::Invalid { expected: "a number", found: short(&value.to_string()) };
    match (encoding, value) {
        (None | Some(E::Json | E::Decimal { .. }), Value::Number(n)) => from_json_number(n),
        (Some(E::Decimal { scale }), Value::String(bytes)) => {
            Ok(Decimal { unscaled: unscaled_from_base64(bytes).ok_or_else(invalid)??, scale })
        }
        (None | Some(E::VariableScale), Value::Object(fields)) => variable_scale(fields).ok_or_else(invalid)?,
        (Some(E::Text), Value::String(text)) => from_text(text).ok_or_else(invalid)?,
        (None, Value::String(text)) => match from_text(text) {
            Some(number) => number,
            None if BASE64_STANDARD.decode(text).is_ok() => Err(ValueError::ScaleUnknown),
            None => Err(invalid()),
        },
        _ => Err(invalid()),
    }
}

/// A JSON number: an integer, or a double (`decimal.handling.mode=double`, or a `Decimal`
/// with `decimal.format=NUMERIC`, which serde_json reads as a double).
fn from_json_number(n: &Number) -> Result<Decimal, ValueError> {
    // Every double from 2^53 up is whole, but no longer every whole number is a double:
    // the ERP's value may have been rounded on the way.
    const EXACT_MAX: f64 = 9_007_199_254_740_992.0;
    if let Some(i) = n.as_i64() {
        return Ok(Decimal { unscaled: i.into(), scale: 0 });
    }
    if let Some(u) = n.as_u64() {
        return Ok(Decimal { unscaled: u.into(), scale: 0 });
    }
    let x = n.as_f64().unwrap_or(f64::NAN);
    if !x.is_finite() {
        return Err(ValueError::Invalid { expected: "a finite number", found: n.to_string() });
    }
    if x.fract() != 0.0 {
        return Err(ValueError::Fractional(short(&x.to_string())));
    }
    if x.abs() > EXACT_MAX {
        return Err(ValueError::Inexact(format!("{x:e}")));
    }
    // Whole and within 2^53, so the cast is exact.
    Ok(Decimal { unscaled: x as i128, scale: 0 })
}

/// A `VariableScaleDecimal`: `{"scale": 0, "value": "Dvjy"}` (981234). `None` when it is
/// not one.
fn variable_scale(fields: &Map<String, Value>) -> Option<Result<Decimal, ValueError>> {
    let scale = fields.get("scale")?.as_i64()?;
    let unscaled = unscaled_from_base64(fields.get("value")?.as_str()?)?;
    Some(unscaled.map(|unscaled| Decimal { unscaled, scale }))
}

/// Big-endian two's complement bytes in base64, as Java's `BigInteger.toByteArray()`
/// writes them. `None` when not base64 or empty (`BigInteger` refuses zero bytes); out of
/// range beyond i128, which holds Oracle's 38 digits.
fn unscaled_from_base64(text: &str) -> Option<Result<i128, ValueError>> {
    let bytes = BASE64_STANDARD.decode(text).ok()?;
    let (&first, rest) = bytes.split_first()?;
    // The first byte carries the sign; the others are unsigned digits in base 256. Leading
    // sign-extension bytes keep the sum at 0 or -1, so any number of them is harmless.
    let unscaled =
        rest.iter().try_fold(i128::from(first as i8), |sum, &b| sum.checked_mul(256)?.checked_add(i128::from(b)));
    Some(unscaled.ok_or_else(|| ValueError::OutOfRange(format!("an integer of {} bytes", bytes.len()))))
}

/// A formatted decimal (`decimal.handling.mode=string`): `-6`, `12.000`. `None` when it
/// is not one; the number otherwise, which may be fractional or too large.
fn from_text(text: &str) -> Option<Result<Decimal, ValueError>> {
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    let is_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if (whole.is_empty() && fraction.is_empty()) || !is_digits(whole) || !is_digits(fraction) {
        return None;
    }
    // Trailing zeros after the point change nothing, and any other digit there makes the
    // number fractional however long it is.
    if !fraction.trim_end_matches('0').is_empty() {
        return Some(Err(ValueError::Fractional(short(text))));
    }
    let magnitude = whole.bytes().try_fold(0i128, |sum, b| sum.checked_mul(10)?.checked_add(i128::from(b - b'0')));
    let Some(magnitude) = magnitude else { return Some(Err(ValueError::OutOfRange(short(text)))) };
    let unscaled = if text.starts_with('-') { -magnitude } else { magnitude };
    Some(Ok(Decimal { unscaled, scale: 0 }))
}

/// An exact decimal number: `unscaled × 10^-scale`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Decimal {
    unscaled: i128,
    scale: i64,
}

impl Decimal {
    /// The number if it is whole; never wraps, whatever the scale.
    fn whole(self) -> Result<i128, ValueError> {
        let Decimal { unscaled, scale } = self;
        let power = |exponent: u64| u32::try_from(exponent).ok().and_then(|e| 10i128.checked_pow(e));
        if unscaled == 0 || scale == 0 {
            return Ok(unscaled);
        }
        if scale < 0 {
            let shifted = power(scale.unsigned_abs()).and_then(|p| unscaled.checked_mul(p));
            return shifted.ok_or_else(|| ValueError::OutOfRange(self.to_string()));
        }
        // A power of ten too large for i128 is larger than any non-zero `unscaled`, which
        // makes the number a non-zero fraction.
        match power(scale.unsigned_abs()) {
            Some(p) if unscaled % p == 0 => Ok(unscaled / p),
            _ => Err(ValueError::Fractional(self.to_string())),
        }
    }
}

/// Written as the ERP would show it ("12.50", "4500"); with an absurd scale, in scientific
/// notation ("5e-2147483648"), so that a hostile scale cannot make a huge message.
impl fmt::Display for Decimal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const PLAIN_DIGITS_MAX: i64 = 40;
        let Decimal { unscaled, scale } = *self;
        if unscaled == 0 || scale == 0 {
            return write!(f, "{unscaled}");
        }
        if !(-PLAIN_DIGITS_MAX..=PLAIN_DIGITS_MAX).contains(&scale) {
            return write!(f, "{unscaled}e{}", -i128::from(scale));
        }
        let sign = if unscaled < 0 { "-" } else { "" };
        let digits = unscaled.unsigned_abs().to_string();
        let zeros = usize::try_from(scale.unsigned_abs()).unwrap_or(0);
        if scale < 0 {
            return write!(f, "{sign}{digits}{}", "0".repeat(zeros));
        }
        let digits = format!("{digits:0>width$}", width = zeros + 1);
        let (whole, fraction) = digits.split_at(digits.len() - zeros);
        write!(f, "{sign}{whole}.{fraction}")
    }
}

/// How a column's time is written, as its field schema says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TimeEncoding {
    Millis,
    Micros,
    Nanos,
    /// `ZonedTimestamp` or `IsoTimestamp`: RFC 3339.
    Text,
}

/// `None`: no schema, or an INT64 without a name, so the value's size tells the unit.
fn time_encoding(schema: Option<&Value>) -> Result<Option<TimeEncoding>, ValueError> {
    let Some(schema) = schema else { return Ok(None) };
    match (schema["name"].as_str(), schema["type"].as_str()) {
        (Some("io.debezium.time.Timestamp" | "org.apache.kafka.connect.data.Timestamp"), _) => {
            Ok(Some(TimeEncoding::Millis))
        }
        (Some("io.debezium.time.MicroTimestamp"), _) => Ok(Some(TimeEncoding::Micros)),
        (Some("io.debezium.time.NanoTimestamp"), _) => Ok(Some(TimeEncoding::Nanos)),
        (Some("io.debezium.time.ZonedTimestamp" | "io.debezium.time.IsoTimestamp"), _) => Ok(Some(TimeEncoding::Text)),
        // A change time cut to its day would misorder the day's movements.
        (Some(name @ ("io.debezium.time.Date" | "org.apache.kafka.connect.data.Date")), _) => {
            Err(ValueError::DateOnly(name.to_string()))
        }
        (_, Some("int64")) => Ok(None),
        (_, Some("string")) => Ok(Some(TimeEncoding::Text)),
        _ => Err(ValueError::Invalid { expected: "a timestamp in its schema", found: short(&schema.to_string()) }),
    }
}

/// The unit of an epoch time without a schema, told by its size: each unit's range starts
/// at 1973-03-03 (1e11 ms, 1e14 µs, 1e17 ns) and milliseconds end where microseconds begin,
/// in the year 5138. A smaller number is refused rather than read as a time in 1970: it is
/// more likely days (a `Date`) or seconds than a journal row that old.
fn unit_by_size(n: i64) -> Option<TimeEncoding> {
    const FLOOR: i64 = 100_000_000_000;
    match n {
        ..FLOOR => None,
        FLOOR..100_000_000_000_000 => Some(TimeEncoding::Millis),
        100_000_000_000_000..100_000_000_000_000_000 => Some(TimeEncoding::Micros),
        _ => Some(TimeEncoding::Nanos),
    }
}

/// A value cut short for a message: a hostile event may hold a megabyte in one field.
fn short(text: &str) -> String {
    const CHARS_MAX: usize = 64;
    match text.char_indices().nth(CHARS_MAX) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_are_written_as_the_erp_shows_them() {
        let cases = [
            (125, 1, "12.5"),
            (1250, 2, "12.50"),
            (-5, 3, "-0.005"),
            (45, -2, "4500"),
            (7, 0, "7"),
            (5, 2_147_483_648, "5e-2147483648"),
            (5, i64::MIN, "5e9223372036854775808"),
        ];
        for (unscaled, scale, shown) in cases {
            assert_eq!(Decimal { unscaled, scale }.to_string(), shown, "{unscaled} scale {scale}");
        }
    }

    #[test]
    fn a_negative_scale_multiplies() {
        assert_eq!(Decimal { unscaled: 5, scale: -2 }.whole(), Ok(500));
        assert_eq!(Decimal { unscaled: -45, scale: -38 }.whole().map_err(|_| ()), Err(()));
    }

    #[test]
    fn bytes_are_read_as_java_writes_big_integers() {
        // BigInteger.toByteArray(): minimal big-endian two's complement; sign bytes in front
        // of it change nothing.
        let cases: [(&[u8], Option<i128>); 7] = [
            (&[0x00], Some(0)),
            (&[0xFF], Some(-1)),
            (&[0xFF, 0x7F], Some(-129)),
            (&[0x01, 0x86, 0xA0], Some(100_000)),
            (&[0x00, 0x00, 0x00, 0x80], Some(128)),
            (&[0x80; 16], Some(i128::from_be_bytes([0x80; 16]))),
            (&[0x7F; 17], None),
        ];
        for (bytes, unscaled) in cases {
            assert_eq!(unscaled_from_base64(&BASE64_STANDARD.encode(bytes)).unwrap().ok(), unscaled, "{bytes:02x?}");
        }
        assert_eq!(unscaled_from_base64(""), None, "BigInteger refuses zero bytes");
        assert_eq!(unscaled_from_base64("not base64"), None);
        assert_eq!(unscaled_from_base64(&BASE64_STANDARD.encode([0xFF; 1000])), Some(Ok(-1)));
    }

    #[test]
    fn a_time_without_a_schema_is_told_by_its_size() {
        let second = 1_795_369_212;
        for n in [second * 1_000, second * 1_000_000, second * 1_000_000_000] {
            assert_eq!(timestamp(&n.into(), None).unwrap().timestamp(), second, "{n}");
        }
        for n in [second, 20_000, -1, i64::MIN] {
            assert!(timestamp(&n.into(), None).is_err(), "{n}");
        }
    }
}
