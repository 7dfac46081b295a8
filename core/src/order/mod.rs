//! Orders (`docs/orders.md`): what a customer confirms at checkout, checked at the edge
//! field by field, then decided by the order workers: every line reserved at one
//! location or none, the delivery scheduled from that location's calendar, the
//! reservation committed. The pure parts live here: reading and checking an order
//! ([`OrderRequest::check`]), and where and when it is delivered (`schedule.rs`).

pub mod cancel;
pub mod schedule;
pub mod worker;

use serde::{Deserialize, Serialize};

use crate::{
    config::ChannelConfig,
    event::{LocationId, Sku, QUANTITY_MAX},
    reservation::Suggestion,
};

/// Lines an order may have.
pub const LINES_MAX: usize = 100;
/// The longest free text an order carries (a customer reference, an address line).
const TEXT_LEN_MAX: usize = 200;
/// A payment provider's token or reference: long enough for any provider's, short enough
/// to keep in a row.
const PAYMENT_TOKEN_LEN: std::ops::RangeInclusive<usize> = 8..=256;

/// Where an order is: waiting for a worker's decision, then scheduled or rejected, and a
/// scheduled one may be cancelled before it is dispatched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    Received,
    Scheduled,
    Rejected,
    Cancelled,
}

impl OrderStatus {
    pub const ALL: [OrderStatus; 4] =
        [OrderStatus::Received, OrderStatus::Scheduled, OrderStatus::Rejected, OrderStatus::Cancelled];

    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Received => "received",
            OrderStatus::Scheduled => "scheduled",
            OrderStatus::Rejected => "rejected",
            OrderStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(value: &str) -> Option<OrderStatus> {
        OrderStatus::ALL.into_iter().find(|s| s.as_str() == value)
    }
}

/// How an order reaches its customer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryMethod {
    Standard,
    Express,
    /// Collected by the customer at a store of the channel.
    Pickup,
}

impl DeliveryMethod {
    pub const ALL: [DeliveryMethod; 3] = [DeliveryMethod::Standard, DeliveryMethod::Express, DeliveryMethod::Pickup];

    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryMethod::Standard => "standard",
            DeliveryMethod::Express => "express",
            DeliveryMethod::Pickup => "pickup",
        }
    }

    pub fn parse(value: &str) -> Option<DeliveryMethod> {
        DeliveryMethod::ALL.into_iter().find(|m| m.as_str() == value)
    }
}

/// How the customer pays, as the payment provider told the channel: onhand keeps the
/// method and the provider's token or reference, never card data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PaymentMethod {
    Card,
    Pix,
    Boleto,
    Wallet,
}

impl PaymentMethod {
    const ALL: [PaymentMethod; 4] =
        [PaymentMethod::Card, PaymentMethod::Pix, PaymentMethod::Boleto, PaymentMethod::Wallet];

    pub fn as_str(self) -> &'static str {
        match self {
            PaymentMethod::Card => "card",
            PaymentMethod::Pix => "pix",
            PaymentMethod::Boleto => "boleto",
            PaymentMethod::Wallet => "wallet",
        }
    }

    fn parse(value: &str) -> Option<PaymentMethod> {
        PaymentMethod::ALL.into_iter().find(|m| m.as_str() == value)
    }
}

/// An order's body as it arrives: every field is checked by [`OrderRequest::check`].
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RawOrder {
    /// The sales channel (a `[channels.NAME]` of the configuration).
    pub channel: String,
    /// The customer's reference in the channel (never a name or an e-mail address).
    pub customer: String,
    /// The lines, or none with `cart`.
    #[serde(default)]
    pub lines: Vec<RawLine>,
    /// A cart (`PUT /v1/carts/{id}`) instead of lines: its lines are ordered, and its hold
    /// is what the order's reservation replaces.
    #[serde(default)]
    pub cart: Option<String>,
    pub payment: RawPayment,
    pub delivery: RawDelivery,
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RawLine {
    pub sku: String,
    pub quantity: i64,
    /// The brief's flag: whether the customer added the product to the cart (false for a
    /// "buy now"). Kept with the order; it changes nothing in the decision.
    #[serde(default = "in_cart")]
    pub in_cart: bool,
}

fn in_cart() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RawPayment {
    /// `card`, `pix`, `boleto` or `wallet`.
    pub method: String,
    /// The payment provider's token or reference for this payment (8 to 256 characters of
    /// letters, digits and `-_.:`), never a card number.
    pub token: String,
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RawDelivery {
    /// `standard`, `express` or `pickup`.
    pub method: String,
    /// Where to deliver; required unless the method is `pickup`.
    pub address: Option<RawAddress>,
    /// The store to collect from; required for `pickup`, refused otherwise.
    pub store: Option<String>,
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAddress {
    pub line1: String,
    pub line2: Option<String>,
    pub city: String,
    /// Letters, digits, spaces and `-`, 3 to 10 of them (`01310-100`, `SW1A 1AA`).
    pub postal_code: String,
    /// ISO 3166-1 alpha-2, upper case (`BR`).
    pub country: String,
}

/// One field that is wrong, by its path in the body (`lines[2].quantity`), with a stable
/// code and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FieldError {
    pub field: String,
    pub code: &'static str,
    pub message: String,
}

/// An order whose every field was checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderRequest {
    pub channel: String,
    pub customer: String,
    pub lines: Vec<OrderLine>,
    pub payment: Payment,
    pub delivery: Delivery,
    /// The hold of the cart it was ordered from, released by the worker just before it
    /// reserves the order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OrderLine {
    #[schema(value_type = String)]
    pub sku: Sku,
    pub quantity: i64,
    pub in_cart: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Payment {
    pub method: PaymentMethod,
    pub token: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Delivery {
    pub method: DeliveryMethod,
    pub address: Option<Address>,
    #[schema(value_type = Option<String>)]
    pub store: Option<LocationId>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Address {
    pub line1: String,
    pub line2: Option<String>,
    pub city: String,
    pub postal_code: String,
    pub country: String,
}

/// A decided order, as `GET /v1/orders/{id}` answers its `decision`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum OrderOutcome {
    Scheduled {
        #[schema(value_type = String)]
        location: LocationId,
        method: DeliveryMethod,
        date: chrono::NaiveDate,
        slot: String,
        reservation_id: String,
    },
    Rejected {
        /// `out_of_stock`, `no_delivery_capacity` or `unknown_channel`.
        reason: String,
        /// For `out_of_stock`: each line not every candidate could fill.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        short_lines: Vec<ShortOrderLine>,
    },
}

/// A line of a rejected order: what was asked, what each location of the channel has,
/// and similar products when the channel as a whole is short of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ShortOrderLine {
    #[schema(value_type = String)]
    pub sku: Sku,
    pub requested: i64,
    pub available_at: Vec<AvailableAt>,
    pub suggestions: Vec<Suggestion>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AvailableAt {
    #[schema(value_type = String)]
    pub location: LocationId,
    pub available: i64,
}

/// A change of an order, on the orders topic (`onhand.order.v1`, keyed by order id): the
/// workers decide the `received` ones; any other reader (a channel's back end) follows
/// what became of its orders.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderEvent {
    #[serde(rename = "type")]
    pub event_type: String,
    /// `{order_id}:{status}`: an order takes each status once, so an event sent twice
    /// (the outbox sends at least once) has the same id.
    #[serde(default)]
    pub event_id: String,
    pub order_id: String,
    pub channel: String,
    pub status: OrderStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<OrderOutcome>,
    pub at: chrono::DateTime<chrono::Utc>,
}

impl OrderEvent {
    pub const TYPE: &'static str = "onhand.order.v1";

    pub fn new(
        order_id: &str,
        channel: &str,
        status: OrderStatus,
        decision: Option<OrderOutcome>,
        at: chrono::DateTime<chrono::Utc>,
    ) -> OrderEvent {
        OrderEvent {
            event_type: Self::TYPE.to_string(),
            event_id: format!("{order_id}:{}", status.as_str()),
            order_id: order_id.to_string(),
            channel: channel.to_string(),
            status,
            decision,
            at,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("an order event always serializes")
    }
}

/// A customer told that a SKU they waited for is available again in a channel
/// (`onhand.back-in-stock.v1`, on the orders topic, keyed by the wish's id), once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackInStockEvent {
    #[serde(rename = "type")]
    pub event_type: String,
    /// `{id}:back_in_stock`: a wish is told once.
    #[serde(default)]
    pub event_id: String,
    /// The wish's id.
    pub id: String,
    pub channel: String,
    pub sku: Sku,
    pub customer: String,
    /// What the channel had available when it was seen.
    pub available: i64,
    pub at: chrono::DateTime<chrono::Utc>,
}

impl BackInStockEvent {
    pub const TYPE: &'static str = "onhand.back-in-stock.v1";
}

/// The field errors of one order, collected rather than stopping at the first.
#[derive(Default)]
struct Problems(Vec<FieldError>);

impl Problems {
    fn add(&mut self, field: impl Into<String>, code: &'static str, message: impl Into<String>) {
        self.0.push(FieldError { field: field.into(), code, message: message.into() });
    }

    /// `value` as free text: 1 to [`TEXT_LEN_MAX`] characters, no control characters.
    fn text(&mut self, field: &str, value: &str) -> String {
        let value = value.trim();
        if value.is_empty() || value.chars().count() > TEXT_LEN_MAX {
            self.add(field, "invalid_field", format!("must be 1 to {TEXT_LEN_MAX} characters"));
        } else if value.chars().any(char::is_control) {
            self.add(field, "invalid_field", "must not contain control characters");
        }
        value.to_string()
    }
}

impl OrderRequest {
    /// Checks every field of `raw` against the channels the configuration names; all the
    /// wrong fields at once, or the order.
    pub fn check(
        raw: RawOrder,
        channels: &std::collections::BTreeMap<String, ChannelConfig>,
    ) -> Result<OrderRequest, Vec<FieldError>> {
        let mut problems = Problems::default();
        let channel = channels.get(&raw.channel);
        if channel.is_none() {
            problems.add("channel", "unknown_channel", format!("no channel is named {:?}", raw.channel));
        }
        let customer = problems.text("customer", &raw.customer);
        let lines = check_lines(&raw.lines, &mut problems);
        let payment = check_payment(&raw.payment, &mut problems);
        let delivery = check_delivery(&raw.delivery, channel, &mut problems);
        match (problems.0.is_empty(), payment, delivery) {
            (true, Some(payment), Some(delivery)) => {
                Ok(OrderRequest { channel: raw.channel, customer, lines, payment, delivery, hold: None })
            }
            _ => Err(problems.0),
        }
    }
}

/// A cart's body as it arrives.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RawCart {
    pub channel: String,
    pub lines: Vec<RawLine>,
}

/// Checks a cart's channel and lines as an order's are checked.
pub fn check_cart(
    raw: &RawCart,
    channels: &std::collections::BTreeMap<String, ChannelConfig>,
) -> Result<Vec<OrderLine>, Vec<FieldError>> {
    let mut problems = Problems::default();
    if !channels.contains_key(&raw.channel) {
        problems.add("channel", "unknown_channel", format!("no channel is named {:?}", raw.channel));
    }
    let lines = check_lines(&raw.lines, &mut problems);
    if problems.0.is_empty() {
        Ok(lines)
    } else {
        Err(problems.0)
    }
}

fn check_lines(raw: &[RawLine], problems: &mut Problems) -> Vec<OrderLine> {
    if raw.is_empty() || raw.len() > LINES_MAX {
        problems.add("lines", "invalid_lines", format!("an order has 1 to {LINES_MAX} lines"));
    }
    let mut lines: Vec<OrderLine> = Vec::new();
    for (i, line) in raw.iter().enumerate() {
        let sku = match Sku::parse(line.sku.clone()) {
            Ok(sku) => Some(sku),
            Err(e) => {
                problems.add(format!("lines[{i}].sku"), "invalid_sku", e.message);
                None
            }
        };
        if !(1..=QUANTITY_MAX).contains(&line.quantity) {
            problems.add(format!("lines[{i}].quantity"), "invalid_quantity", format!("must be 1 to {QUANTITY_MAX}"));
        }
        let Some(sku) = sku else { continue };
        // One line per SKU: the same SKU twice would be reserved as two holds of one level.
        if lines.iter().any(|l| l.sku == sku) {
            problems.add(format!("lines[{i}].sku"), "duplicate_sku", format!("{sku} is on an earlier line"));
            continue;
        }
        lines.push(OrderLine { sku, quantity: line.quantity, in_cart: line.in_cart });
    }
    lines
}

fn check_payment(raw: &RawPayment, problems: &mut Problems) -> Option<Payment> {
    let method = PaymentMethod::parse(&raw.method);
    if method.is_none() {
        problems.add("payment.method", "invalid_payment", "must be card, pix, boleto or wallet");
    }
    let token = raw.token.as_str();
    if looks_like_card_number(token) {
        problems.add(
            "payment.token",
            "card_data_refused",
            "looks like a card number: send the payment provider's token, never card data",
        );
        return None;
    }
    let plausible = PAYMENT_TOKEN_LEN.contains(&token.len())
        && token.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    if !plausible {
        problems.add(
            "payment.token",
            "invalid_payment",
            format!(
                "must be the provider's token: {} to {} letters, digits or -_.:",
                PAYMENT_TOKEN_LEN.start(),
                PAYMENT_TOKEN_LEN.end()
            ),
        );
    }
    match (method, plausible) {
        (Some(method), true) => Some(Payment { method, token: token.to_string() }),
        _ => None,
    }
}

/// Whether `text` holds a payment card number: 13 to 19 digits (spaces and dashes
/// between them allowed) passing the Luhn check. Such a token is refused and never kept.
pub fn looks_like_card_number(text: &str) -> bool {
    let digits: Vec<u32> = text
        .chars()
        .filter(|c| !matches!(c, ' ' | '-'))
        .map(|c| c.to_digit(10))
        .collect::<Option<_>>()
        .unwrap_or_default();
    if !(13..=19).contains(&digits.len()) {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| match i % 2 {
            1 if d * 2 > 9 => d * 2 - 9,
            1 => d * 2,
            _ => d,
        })
        .sum();
    sum % 10 == 0
}

fn check_delivery(raw: &RawDelivery, channel: Option<&ChannelConfig>, problems: &mut Problems) -> Option<Delivery> {
    let Some(method) = DeliveryMethod::parse(&raw.method) else {
        problems.add("delivery.method", "invalid_delivery", "must be standard, express or pickup");
        return None;
    };
    let store = match (&raw.store, method) {
        (None, DeliveryMethod::Pickup) => {
            problems.add("delivery.store", "invalid_delivery", "pickup needs the store to collect from");
            None
        }
        (Some(_), DeliveryMethod::Standard | DeliveryMethod::Express) => {
            problems.add("delivery.store", "invalid_delivery", "only a pickup names a store");
            None
        }
        (None, _) => None,
        (Some(store), DeliveryMethod::Pickup) => match LocationId::parse(store.clone()) {
            Ok(store) if channel.is_some_and(|c| !c.serves(store.as_str())) => {
                problems.add("delivery.store", "invalid_delivery", format!("{store} does not serve the channel"));
                None
            }
            Ok(store) => Some(store),
            Err(e) => {
                problems.add("delivery.store", "invalid_delivery", e.message);
                None
            }
        },
    };
    let address = match (&raw.address, method) {
        (None, DeliveryMethod::Standard | DeliveryMethod::Express) => {
            problems.add("delivery.address", "invalid_delivery", "a delivery needs an address");
            None
        }
        (None, DeliveryMethod::Pickup) => None,
        (Some(address), _) => Some(check_address(address, problems)),
    };
    Some(Delivery { method, address, store })
}

fn check_address(raw: &RawAddress, problems: &mut Problems) -> Address {
    let line1 = problems.text("delivery.address.line1", &raw.line1);
    let line2 = raw.line2.as_deref().map(|l| problems.text("delivery.address.line2", l));
    let city = problems.text("delivery.address.city", &raw.city);
    let postal_code = raw.postal_code.trim().to_ascii_uppercase();
    let significant = postal_code.chars().filter(char::is_ascii_alphanumeric).count();
    if !(3..=10).contains(&significant)
        || !postal_code.chars().all(|c| c.is_ascii_alphanumeric() || c == ' ' || c == '-')
    {
        problems.add(
            "delivery.address.postal_code",
            "invalid_postal_code",
            "must be 3 to 10 letters or digits, with spaces or dashes between them",
        );
    }
    let country = raw.country.trim().to_string();
    if country.len() != 2 || !country.bytes().all(|b| b.is_ascii_uppercase()) {
        problems.add("delivery.address.country", "invalid_country", "must be an ISO 3166-1 alpha-2 code (BR)");
    }
    Address { line1, line2, city, postal_code, country }
}

#[cfg(test)]
mod tests;
