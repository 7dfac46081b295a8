//! The wire types of onhand: the movement event `onhand.movement.v1`, the stock level
//! published on `onhand.stock.v1`, and the newtypes that make their fields valid.
//!
//! This is the only module that derives `Serialize` + `JsonSchema` for wire types (and
//! `ToSchema`, their description in the API's OpenAPI document). Every
//! movement enters through [`Movement::from_json`], which checks each field and answers
//! with a stable [`InvalidMovement`] code, so the HTTP API and the ledger reject the same
//! input for the same reason.

use std::{borrow::Cow, collections::BTreeMap, fmt};

use chrono::{DateTime, SubsecRound, Utc};
use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};

pub mod alert;
pub mod schemas;

/// The schema id of a movement event, also its `$id` in `schemas/movement.v1.json`.
pub const MOVEMENT_SCHEMA: &str = "onhand.movement.v1";
/// The schema id of a stock level, also its `$id` in `schemas/stock-level.v1.json`.
pub const STOCK_LEVEL_SCHEMA: &str = "onhand.stock-level.v1";

/// The largest encoded movement accepted, in bytes; larger records are rejected as oversized.
pub const MOVEMENT_BYTES_MAX: usize = 16 * 1024;
const EVENT_ID_LEN_MAX: usize = 128;
const ID_LEN_MAX: usize = 64;
const SOURCE_REF_LEN_MAX: usize = 128;
const TEXT_LEN_MAX: usize = 256;
const REASON_LEN_MAX: usize = 1024;
const ATTRIBUTES_MAX: usize = 32;
/// The largest quantity of one movement. Far above any real movement, and small enough
/// that no sum of a level's movements overflows.
pub const QUANTITY_MAX: i64 = 1_000_000_000;
/// How far in the future of `recorded_at` an `occurred_at` may be: source clocks drift,
/// but a count dated next year would freeze its level until a later count.
pub const OCCURRED_AHEAD_MAX: chrono::Duration = chrono::Duration::hours(24);
/// How many bytes longer than the accepted JSON a movement can be once encoded. Strings
/// never grow (the encoder escapes no more than the input had to: `"`, `\\`, control
/// characters), nor does the integer quantity, and absent or `null` optional fields stay
/// out. What grows: `recorded_at` is added (`,"recorded_at":` and at most 27 characters
/// with quotes 45 bytes) or replaced (at most 7 bytes more), and each time is rewritten to
/// at most 27 characters from at least 20 (7 bytes more each). 59 in all; the margin is
/// kept wide.
const ENCODING_GROWTH_MAX: usize = 256;
/// The earliest `occurred_at` accepted (2000-01-01T00:00:00Z).
pub const OCCURRED_SINCE_UNIX_SECONDS: i64 = 946_684_800;

/// Why a movement was refused. `code` is stable and documented; `message` is for people.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct InvalidMovement {
    pub code: RejectCode,
    pub message: String,
}

impl InvalidMovement {
    fn new(code: RejectCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }
}

/// The stable reasons a movement is refused, shared by the HTTP API and the dead-letter topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectCode {
    NotJson,
    SchemaViolation,
    InvalidEventId,
    InvalidSource,
    InvalidSku,
    InvalidLocation,
    UnknownKind,
    InvalidQuantity,
    InvalidField,
    InvalidTime,
    Oversized,
    KindNotAccepted,
}

impl RejectCode {
    pub const ALL: [RejectCode; 12] = [
        RejectCode::NotJson,
        RejectCode::SchemaViolation,
        RejectCode::InvalidEventId,
        RejectCode::InvalidSource,
        RejectCode::InvalidSku,
        RejectCode::InvalidLocation,
        RejectCode::UnknownKind,
        RejectCode::InvalidQuantity,
        RejectCode::InvalidField,
        RejectCode::InvalidTime,
        RejectCode::Oversized,
        RejectCode::KindNotAccepted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RejectCode::NotJson => "not_json",
            RejectCode::SchemaViolation => "schema_violation",
            RejectCode::InvalidEventId => "invalid_event_id",
            RejectCode::InvalidSource => "invalid_source",
            RejectCode::InvalidSku => "invalid_sku",
            RejectCode::InvalidLocation => "invalid_location",
            RejectCode::UnknownKind => "unknown_kind",
            RejectCode::InvalidQuantity => "invalid_quantity",
            RejectCode::InvalidField => "invalid_field",
            RejectCode::InvalidTime => "invalid_time",
            RejectCode::Oversized => "oversized",
            RejectCode::KindNotAccepted => "kind_not_accepted",
        }
    }
}

impl fmt::Display for RejectCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Declares a string newtype whose every value is valid: built by `parse`, which checks
/// the length and the allowed characters, and described to JSON Schema with the same rules.
macro_rules! identifier {
    ($(#[$doc:meta])* $name:ident, $code:expr, $what:literal, $len_max:expr, $pattern:literal, $allowed:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub const LEN_MAX: usize = $len_max;

            pub fn parse(value: impl Into<String>) -> Result<Self, InvalidMovement> {
                let value = value.into();
                let allowed: fn(char) -> bool = $allowed;
                if value.is_empty() || value.chars().count() > Self::LEN_MAX {
                    return Err(InvalidMovement::new(
                        $code,
                        format!("{} must be 1 to {} characters", $what, Self::LEN_MAX),
                    ));
                }
                if let Some(bad) = value.chars().find(|c| !allowed(*c)) {
                    return Err(InvalidMovement::new(
                        $code,
                        format!("{} contains the character {bad:?}, allowed: {}", $what, $pattern),
                    ));
                }
                Ok(Self(value))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let raw = String::deserialize(d)?;
                Self::parse(raw).map_err(|e| serde::de::Error::custom(e.message))
            }
        }

        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .min_length(Some(1))
                    .max_length(Some($len_max))
                    .pattern(Some($pattern))
                    .into()
            }
        }

        impl utoipa::ToSchema for $name {}

        impl JsonSchema for $name {
            fn schema_name() -> Cow<'static, str> {
                stringify!($name).into()
            }

            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                json_schema!({
                    "type": "string",
                    "minLength": 1,
                    "maxLength": $len_max,
                    "pattern": $pattern,
                })
            }
        }
    };
}

fn is_code_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')
}

fn is_visible_ascii(c: char) -> bool {
    c.is_ascii_graphic()
}

identifier!(
    /// A unique movement id, derived by connectors from the source's own id so that a
    /// re-sent movement keeps it.
    EventId, RejectCode::InvalidEventId, "event_id", EVENT_ID_LEN_MAX, "^[!-~]+$", is_visible_ascii
);
identifier!(
    /// A stock-keeping unit. It appears in URLs and in the `sku@location` key, hence the
    /// narrow alphabet.
    Sku, RejectCode::InvalidSku, "sku", ID_LEN_MAX, "^[A-Za-z0-9._:-]+$", is_code_char
);
identifier!(
    /// A store, distribution centre or sales-channel id.
    LocationId, RejectCode::InvalidLocation, "location", ID_LEN_MAX, "^[A-Za-z0-9._:-]+$", is_code_char
);

/// The system a movement comes from.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema, utoipa::ToSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum SourceSystem {
    Pos,
    Shopify,
    Erp,
    Wms,
    Api,
    StoreAgent,
}

impl SourceSystem {
    /// Every system, in the order of their names: the fixed set of a metric's `source` label.
    pub const ALL: [SourceSystem; 6] = [
        SourceSystem::Api,
        SourceSystem::Erp,
        SourceSystem::Pos,
        SourceSystem::Shopify,
        SourceSystem::StoreAgent,
        SourceSystem::Wms,
    ];

    /// The name events spell it with (`store-agent`), and a metric's `source` label.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceSystem::Pos => "pos",
            SourceSystem::Shopify => "shopify",
            SourceSystem::Erp => "erp",
            SourceSystem::Wms => "wms",
            SourceSystem::Api => "api",
            SourceSystem::StoreAgent => "store-agent",
        }
    }
}

/// Where a movement was first recorded, for audit and for tracing it back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Source {
    pub system: SourceSystem,
    /// Which store, shop or system instance, for example `store-012` or `erp-main`.
    #[schemars(length(min = 1, max = 64))]
    pub instance: String,
    /// The source's own reference: order line, journal row, file line.
    #[serde(rename = "ref")]
    #[schemars(length(min = 1, max = 128))]
    pub reference: String,
}

/// What happened to the stock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MovementKind {
    Receipt,
    Sale,
    Return,
    TransferOut,
    TransferIn,
    Damage,
    Adjustment,
    Count,
    /// Units promised to a checkout (a reservation line); on_hand does not change.
    Reserve,
    /// A reservation line given back, cancelled or expired; on_hand does not change.
    Release,
    /// A reservation line turned into a sale; the sale itself is a separate `sale` movement.
    Commit,
}

impl MovementKind {
    pub const ALL: [MovementKind; 11] = [
        MovementKind::Receipt,
        MovementKind::Sale,
        MovementKind::Return,
        MovementKind::TransferOut,
        MovementKind::TransferIn,
        MovementKind::Damage,
        MovementKind::Adjustment,
        MovementKind::Count,
        MovementKind::Reserve,
        MovementKind::Release,
        MovementKind::Commit,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MovementKind::Receipt => "receipt",
            MovementKind::Sale => "sale",
            MovementKind::Return => "return",
            MovementKind::TransferOut => "transfer_out",
            MovementKind::TransferIn => "transfer_in",
            MovementKind::Damage => "damage",
            MovementKind::Adjustment => "adjustment",
            MovementKind::Count => "count",
            MovementKind::Reserve => "reserve",
            MovementKind::Release => "release",
            MovementKind::Commit => "commit",
        }
    }

    /// A reservation event: recorded for the audit trail, it never changes on_hand. The
    /// reservations own the `reserved` units; these events tell Kafka what they did.
    pub fn is_reservation_event(self) -> bool {
        matches!(self, MovementKind::Reserve | MovementKind::Release | MovementKind::Commit)
    }

    fn parse(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == value)
    }

    /// Checks `quantity` against the kind's sign rule. The bound is checked on the
    /// unsigned magnitude: `i64::MIN.abs()` does not exist, and in a release build it
    /// would wrap to `i64::MIN` and pass a signed comparison.
    fn check_quantity(self, quantity: i64) -> Result<(), &'static str> {
        if quantity.unsigned_abs() > QUANTITY_MAX.unsigned_abs() {
            return Err("must be within -1000000000 and 1000000000");
        }
        match self {
            MovementKind::Adjustment if quantity == 0 => Err("an adjustment must not be 0"),
            MovementKind::Adjustment => Ok(()),
            MovementKind::Count if quantity < 0 => Err("a count must be 0 or more"),
            MovementKind::Count => Ok(()),
            _ if quantity <= 0 => Err("must be greater than 0 for this kind"),
            _ => Ok(()),
        }
    }
}

impl fmt::Display for MovementKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One stock movement: the unit of everything onhand records. See `docs/events.md`.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema, utoipa::ToSchema)]
#[schemars(title = "onhand.movement.v1", transform = quantity_rules, deny_unknown_fields)]
pub struct Movement {
    pub event_id: EventId,
    pub source: Source,
    pub sku: Sku,
    pub location: LocationId,
    pub kind: MovementKind,
    /// Units. receipt, return and transfer_in add it; sale, transfer_out and damage
    /// subtract it (both > 0); adjustment is a signed delta (not 0); count is the
    /// on-hand quantity observed (>= 0); reserve, release and commit are reservation
    /// events that never change on_hand (> 0). At most 1,000,000,000 either way.
    #[schemars(range(min = -1_000_000_000, max = 1_000_000_000))]
    pub quantity: i64,
    /// When it happened at the source (RFC 3339, kept to the microsecond).
    pub occurred_at: DateTime<Utc>,
    /// When onhand accepted it; set by onhand, a client's value is replaced.
    pub recorded_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub actor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub correlation_id: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 32))]
    pub attributes: BTreeMap<String, String>,
}

/// Adds the kind-dependent sign rules of `quantity` to the generated schema.
fn quantity_rules(schema: &mut Schema) {
    let rule = |kinds: &[&str], quantity: serde_json::Value| {
        serde_json::json!({
            "if": { "properties": { "kind": { "enum": kinds } } },
            "then": { "properties": { "quantity": quantity } }
        })
    };
    schema.insert(
        "allOf".into(),
        serde_json::json!([
            rule(
                &["receipt", "sale", "return", "transfer_out", "transfer_in", "damage", "reserve", "release", "commit"],
                serde_json::json!({ "minimum": 1 })
            ),
            rule(&["adjustment"], serde_json::json!({ "not": { "const": 0 } })),
            rule(&["count"], serde_json::json!({ "minimum": 0 })),
        ]),
    );
    schema.insert("$id".into(), MOVEMENT_SCHEMA.into());
}

/// The loose shape a movement is first read into, so that each field can be checked on
/// its own and refused with its own code.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMovement {
    event_id: String,
    source: Source,
    sku: String,
    location: String,
    kind: String,
    quantity: i64,
    occurred_at: DateTime<Utc>,
    recorded_at: Option<DateTime<Utc>>,
    #[serde(default)]
    actor: Option<String>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    correlation_id: Option<String>,
    #[serde(default)]
    attributes: BTreeMap<String, String>,
}

impl Movement {
    /// Reads and checks a movement as it travels on Kafka: `recorded_at` is required.
    pub fn from_json(bytes: &[u8]) -> Result<Self, InvalidMovement> {
        let raw = Self::read_raw(bytes)?;
        let recorded_at = raw
            .recorded_at
            .ok_or_else(|| InvalidMovement::new(RejectCode::SchemaViolation, "missing field `recorded_at`"))?;
        Self::check(raw, recorded_at)
    }

    /// Reads and checks a movement submitted to onhand, stamping it as recorded at `now`.
    /// Reservation events are onhand's own and are refused here.
    /// The movement as it will travel (with `recorded_at`) must fit the size limit too,
    /// or the ledger would refuse what was accepted here.
    pub fn accept_json(bytes: &[u8], now: DateTime<Utc>) -> Result<Self, InvalidMovement> {
        let raw = Self::read_raw(bytes)?;
        let movement = Self::check(raw, now)?;
        if movement.kind.is_reservation_event() {
            return Err(InvalidMovement::new(
                RejectCode::KindNotAccepted,
                format!("{} movements are written by onhand's reservations (POST /v1/reservations)", movement.kind),
            ));
        }
        // Encoding only to measure costs as much as the rest of the checks together (file
        // connectors accept millions of movements), and is needed only near the limit:
        // see `ENCODING_GROWTH_MAX`.
        if bytes.len() + ENCODING_GROWTH_MAX <= MOVEMENT_BYTES_MAX {
            return Ok(movement);
        }
        let encoded_len = movement.to_json().len();
        if encoded_len > MOVEMENT_BYTES_MAX {
            return Err(InvalidMovement::new(
                RejectCode::Oversized,
                format!("movement is {encoded_len} bytes with recorded_at, at most {MOVEMENT_BYTES_MAX} are accepted"),
            ));
        }
        Ok(movement)
    }

    fn read_raw(bytes: &[u8]) -> Result<RawMovement, InvalidMovement> {
        if bytes.len() > MOVEMENT_BYTES_MAX {
            return Err(InvalidMovement::new(
                RejectCode::Oversized,
                format!("movement is {} bytes, at most {MOVEMENT_BYTES_MAX} are accepted", bytes.len()),
            ));
        }
        serde_json::from_slice(bytes).map_err(|e| {
            let code = if e.is_syntax() || e.is_eof() { RejectCode::NotJson } else { RejectCode::SchemaViolation };
            InvalidMovement::new(code, e.to_string())
        })
    }

    fn check(raw: RawMovement, recorded_at: DateTime<Utc>) -> Result<Self, InvalidMovement> {
        let kind = MovementKind::parse(&raw.kind).ok_or_else(|| {
            InvalidMovement::new(
                RejectCode::UnknownKind,
                format!(
                    "unknown kind {:?}, expected one of {}",
                    raw.kind,
                    MovementKind::ALL.map(MovementKind::as_str).join(", ")
                ),
            )
        })?;
        kind.check_quantity(raw.quantity).map_err(|rule| {
            InvalidMovement::new(RejectCode::InvalidQuantity, format!("quantity {} for {kind}: {rule}", raw.quantity))
        })?;
        check_time(raw.occurred_at, recorded_at)?;
        check_source(&raw.source)?;
        check_text("actor", raw.actor.as_deref(), TEXT_LEN_MAX)?;
        check_text("reason", raw.reason.as_deref(), REASON_LEN_MAX)?;
        check_text("correlation_id", raw.correlation_id.as_deref(), TEXT_LEN_MAX)?;
        check_attributes(&raw.attributes)?;
        Ok(Movement {
            event_id: EventId::parse(raw.event_id)?,
            source: raw.source,
            sku: Sku::parse(raw.sku)?,
            location: LocationId::parse(raw.location)?,
            kind,
            quantity: raw.quantity,
            occurred_at: raw.occurred_at.trunc_subsecs(6),
            recorded_at: recorded_at.trunc_subsecs(6),
            actor: raw.actor,
            reason: raw.reason,
            correlation_id: raw.correlation_id,
            attributes: raw.attributes,
        })
    }

    /// The change to on-hand stock, or `None` for a count, which sets it instead. A
    /// reservation event changes nothing: 0.
    pub fn delta(&self) -> Option<i64> {
        match self.kind {
            MovementKind::Reserve | MovementKind::Release | MovementKind::Commit => Some(0),
            MovementKind::Receipt | MovementKind::Return | MovementKind::TransferIn => Some(self.quantity),
            MovementKind::Sale | MovementKind::TransferOut | MovementKind::Damage => Some(-self.quantity),
            MovementKind::Adjustment => Some(self.quantity),
            MovementKind::Count => None,
        }
    }

    /// The Kafka key of a movement: its SKU, so that every location of a SKU stays in order.
    pub fn kafka_key(&self) -> &str {
        self.sku.as_str()
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a movement always serializes")
    }
}

impl<'de> Deserialize<'de> for Movement {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = RawMovement::deserialize(d)?;
        let recorded_at = raw.recorded_at.ok_or_else(|| serde::de::Error::missing_field("recorded_at"))?;
        Movement::check(raw, recorded_at).map_err(serde::de::Error::custom)
    }
}

fn check_time(occurred_at: DateTime<Utc>, recorded_at: DateTime<Utc>) -> Result<(), InvalidMovement> {
    let earliest = DateTime::from_timestamp(OCCURRED_SINCE_UNIX_SECONDS, 0).unwrap_or_default();
    if occurred_at < earliest {
        return Err(InvalidMovement::new(
            RejectCode::InvalidTime,
            format!("occurred_at {occurred_at} is before 2000-01-01"),
        ));
    }
    if occurred_at > recorded_at + OCCURRED_AHEAD_MAX {
        return Err(InvalidMovement::new(
            RejectCode::InvalidTime,
            format!("occurred_at {occurred_at} is more than 24 hours after recorded_at {recorded_at}"),
        ));
    }
    Ok(())
}

fn check_source(source: &Source) -> Result<(), InvalidMovement> {
    let bad = |m: &str| Err(InvalidMovement::new(RejectCode::InvalidSource, m.to_string()));
    if source.instance.is_empty() || source.instance.chars().count() > ID_LEN_MAX {
        return bad("source.instance must be 1 to 64 characters");
    }
    if source.reference.is_empty() || source.reference.chars().count() > SOURCE_REF_LEN_MAX {
        return bad("source.ref must be 1 to 128 characters");
    }
    if has_nul(&source.instance) || has_nul(&source.reference) {
        return bad("source.instance and source.ref must not contain the character \\u0000");
    }
    Ok(())
}

/// PostgreSQL's text cannot hold U+0000, so a movement carrying it would be refused by the
/// database after Kafka accepted it; it is refused here instead, with every other check.
fn has_nul(text: &str) -> bool {
    text.contains('\0')
}

fn check_text(field: &str, value: Option<&str>, len_max: usize) -> Result<(), InvalidMovement> {
    match value {
        Some(v) if v.is_empty() || v.chars().count() > len_max => Err(InvalidMovement::new(
            RejectCode::InvalidField,
            format!("{field} must be 1 to {len_max} characters when present"),
        )),
        Some(v) if has_nul(v) => Err(InvalidMovement::new(
            RejectCode::InvalidField,
            format!("{field} must not contain the character \\u0000"),
        )),
        _ => Ok(()),
    }
}

fn check_attributes(attributes: &BTreeMap<String, String>) -> Result<(), InvalidMovement> {
    if attributes.len() > ATTRIBUTES_MAX {
        return Err(InvalidMovement::new(
            RejectCode::InvalidField,
            format!("at most {ATTRIBUTES_MAX} attributes are accepted"),
        ));
    }
    for (key, value) in attributes {
        check_text("an attribute name", Some(key), ID_LEN_MAX)?;
        if has_nul(value) {
            return Err(InvalidMovement::new(
                RejectCode::InvalidField,
                format!("attribute {key:?} must not contain the character \\u0000"),
            ));
        }
        if value.chars().count() > TEXT_LEN_MAX {
            return Err(InvalidMovement::new(
                RejectCode::InvalidField,
                format!("attribute {key:?} is longer than {TEXT_LEN_MAX} characters"),
            ));
        }
    }
    Ok(())
}

/// The stock of one SKU at one location, as the ledger last wrote it. Published on
/// `onhand.stock.v1` with key `sku@location` after every change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
#[schemars(title = "onhand.stock-level.v1", transform = stock_level_id)]
pub struct StockLevel {
    pub sku: Sku,
    pub location: LocationId,
    /// May go below 0 when sales are recorded before the receipt that covered them.
    pub on_hand: i64,
    /// Units held by checkouts that have not been sold yet.
    #[serde(default)]
    pub reserved: i64,
    /// Units kept back from every channel.
    #[serde(default)]
    pub safety_stock: i64,
    /// At or below this on_hand the location is low on stock; absent: the default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reorder_point: Option<i64>,
    /// Grows by one with every write of this row (optimistic concurrency).
    pub version: i64,
    /// `occurred_at` of the newest movement applied; absent for a level that only has a
    /// stock policy so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_movement_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_event_id: Option<EventId>,
    /// `occurred_at` of the count on_hand is based on, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_count_at: Option<DateTime<Utc>>,
    /// When this level was last written.
    pub updated_at: DateTime<Utc>,
    /// `recorded_at` of the newest movement this version applied, when the ledger
    /// publishes it: readers measure from it how long a movement took to reach them.
    /// Absent on levels read from the database or written by others than the ledger.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_recorded_at: Option<DateTime<Utc>>,
    /// The system of that movement, next to `last_recorded_at`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_source: Option<SourceSystem>,
}

fn stock_level_id(schema: &mut Schema) {
    schema.insert("$id".into(), STOCK_LEVEL_SCHEMA.into());
}

impl StockLevel {
    /// What a channel may sell here: on_hand less reserved and safety stock, never below 0.
    /// Saturating, so that a level read from anywhere cannot make it overflow.
    pub fn available(&self) -> i64 {
        self.on_hand.saturating_sub(self.reserved).saturating_sub(self.safety_stock).max(0)
    }

    /// The key on `onhand.stock.v1`.
    pub fn kafka_key(&self) -> String {
        format!("{}@{}", self.sku, self.location)
    }
}

#[cfg(test)]
mod tests;
