//! From Shopify's shapes to movements, in pure functions.
//!
//! An order reaches onhand two ways: as a webhook (the REST JSON of `orders/create`,
//! `orders/cancelled`, `refunds/create`) and from the reconciliation (the Admin GraphQL
//! `orders` query). Both are read into one [`Order`], so that the same functions give the
//! same movements with the same event ids whichever way an order came, and a duplicate is
//! skipped by the ledger.
//!
//! Mapping is in two steps. [`order_facts`], [`refund_facts`] and [`level_update_fact`]
//! say what happened in Shopify's terms ([`Fact`]: a variant or inventory item at a Shopify
//! location); [`resolve`] turns facts into movements with a [`Catalog`] (the SKUs the
//! caller looked up in the database) and the location map, or into the reason they cannot be
//! mapped, for the dead-letter topic.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, SecondsFormat, Utc};
use onhand_core::event::{LocationId, Movement, MovementKind, Sku};
use serde::Deserialize;
use serde_json::json;

use super::config::ShopifyConfig;

/// The catalog attribute holding a product's Shopify variant id.
pub const VARIANT_ATTRIBUTE: &str = "shopify_variant_id";
/// The catalog attribute holding a product's Shopify inventory item id.
pub const INVENTORY_ITEM_ATTRIBUTE: &str = "shopify_inventory_item_id";

/// DLQ reason: no product of the catalog matches the line's SKU or variant id.
pub const UNMAPPED_SKU: &str = "shopify_unmapped_sku";
/// DLQ reason: the Shopify location is not in `location_map`.
pub const UNMAPPED_LOCATION: &str = "shopify_unmapped_location";
/// DLQ reason: a signed webhook whose body is not the topic's shape.
pub const INVALID_PAYLOAD: &str = "shopify_invalid_payload";
/// DLQ reason: an order of the reconciliation whose lines could not all be read; the
/// lines read were recorded.
pub const LINES_TRUNCATED: &str = "shopify_lines_truncated";

/// An order line as both shapes describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineItem {
    pub id: u64,
    pub variant_id: Option<u64>,
    pub sku: Option<String>,
    pub quantity: i64,
}

/// How a refunded line went back to stock (`restock_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restock {
    /// Refunded without restocking: the units stay sold.
    None,
    /// Cancelled before fulfilment: the units never left.
    Cancel,
    /// Returned after fulfilment.
    Return,
    /// Restocked by an old API version, without saying which of the two.
    Legacy,
}

impl Restock {
    /// Reads `restock_type` in either shape (`no_restock`, `NO_RESTOCK`); unknown values
    /// are treated as no restock, the choice that never invents stock.
    pub fn parse(value: Option<&str>) -> Restock {
        match value.map(str::to_ascii_lowercase).as_deref() {
            Some("cancel") => Restock::Cancel,
            Some("return") => Restock::Return,
            Some("legacy_restock") => Restock::Legacy,
            _ => Restock::None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Restock::None => "no_restock",
            Restock::Cancel => "cancel",
            Restock::Return => "return",
            Restock::Legacy => "legacy_restock",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundLine {
    pub id: u64,
    pub quantity: i64,
    pub restock: Restock,
    /// Where the units were restocked, when Shopify says.
    pub location_id: Option<u64>,
    pub line_item: LineItem,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refund {
    pub id: u64,
    pub order_id: u64,
    pub created_at: DateTime<Utc>,
    pub lines: Vec<RefundLine>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    pub id: u64,
    /// `#1001`, for people.
    pub name: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: Option<DateTime<Utc>>,
    /// The location that took the order (a POS order); `None` for a web order.
    pub location_id: Option<u64>,
    pub line_items: Vec<LineItem>,
    /// Cancellations with restock are refunds too, so a cancelled order carries them.
    pub refunds: Vec<Refund>,
}

/// An `inventory_levels/update` webhook.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct LevelUpdate {
    pub inventory_item_id: u64,
    pub location_id: u64,
    pub available: i64,
    pub updated_at: DateTime<Utc>,
}

/// What an outside record names as the product.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    Line { variant_id: Option<u64>, sku: Option<String> },
    InventoryItem(u64),
}

/// Where it happened, in Shopify's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    Shopify(u64),
    /// An order without a location: the web store's default fulfilment location.
    Default,
}

/// One movement in Shopify's terms, before SKU and location are resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fact {
    pub event_id: String,
    pub reference: String,
    pub kind: MovementKind,
    pub quantity: i64,
    pub item: Item,
    pub place: Place,
    pub occurred_at: DateTime<Utc>,
    pub correlation_id: String,
    pub attributes: BTreeMap<String, String>,
}

/// A sale per line: the units left stock when the order was placed. Lines with no
/// quantity left (removed by an order edit) move nothing.
pub fn order_facts(order: &Order) -> Vec<Fact> {
    let place = order.location_id.map_or(Place::Default, Place::Shopify);
    order
        .line_items
        .iter()
        .filter(|line| line.quantity > 0)
        .map(|line| Fact {
            event_id: format!("shopify:order:{}:line:{}", order.id, line.id),
            reference: format!("order {} line {}", order.id, line.id),
            kind: MovementKind::Sale,
            quantity: line.quantity,
            item: Item::Line { variant_id: line.variant_id, sku: line.sku.clone() },
            place,
            occurred_at: order.created_at,
            correlation_id: format!("shopify:order:{}", order.id),
            attributes: line_attributes(order.id, line, order.name.as_deref()),
        })
        .collect()
}

/// A return per restocked refund line, at the line's restock location, else the order's
/// (`order_location`, when known), else the default. A line refunded without restock
/// moves nothing: the units stay sold.
pub fn refund_facts(refund: &Refund, order_location: Option<u64>) -> Vec<Fact> {
    refund
        .lines
        .iter()
        .filter(|line| line.restock != Restock::None && line.quantity > 0)
        .map(|line| {
            let mut attributes = line_attributes(refund.order_id, &line.line_item, None);
            attributes.insert("refund_id".into(), refund.id.to_string());
            attributes.insert("restock_type".into(), line.restock.as_str().into());
            Fact {
                event_id: format!("shopify:refund:{}:line:{}", refund.id, line.id),
                reference: format!("refund {} line {}", refund.id, line.id),
                kind: MovementKind::Return,
                quantity: line.quantity,
                item: Item::Line { variant_id: line.line_item.variant_id, sku: line.line_item.sku.clone() },
                place: line.location_id.or(order_location).map_or(Place::Default, Place::Shopify),
                occurred_at: refund.created_at,
                correlation_id: format!("shopify:order:{}", refund.order_id),
                attributes,
            }
        })
        .collect()
}

/// Every movement an order stands for: its sales and the restocks of its refunds
/// (cancellations included). The reconciliation maps whole orders with it.
pub fn order_all_facts(order: &Order) -> Vec<Fact> {
    let mut facts = order_facts(order);
    for refund in &order.refunds {
        facts.extend(refund_facts(refund, order.location_id));
    }
    facts
}

/// A cancelled order gives back the units of the refunds its cancellation created; the
/// same refunds arrive as `refunds/create` with the same event ids.
pub fn cancelled_order_facts(order: &Order) -> Vec<Fact> {
    order.refunds.iter().flat_map(|refund| refund_facts(refund, order.location_id)).collect()
}

fn line_attributes(order_id: u64, line: &LineItem, order_name: Option<&str>) -> BTreeMap<String, String> {
    let mut attributes = BTreeMap::from([
        ("shopify_order_id".to_string(), order_id.to_string()),
        ("shopify_line_item_id".to_string(), line.id.to_string()),
    ]);
    if let Some(variant) = line.variant_id {
        attributes.insert("shopify_variant_id".into(), variant.to_string());
    }
    if let Some(name) = order_name.filter(|n| !n.is_empty() && n.chars().count() <= 256) {
        attributes.insert("shopify_order_name".into(), name.to_string());
    }
    attributes
}

/// The newest `inventory_levels/update`s judged for an item at the sink's location, saved
/// once everything they caused was recorded. Shopify does not deliver updates in order,
/// and a captured body can be sent again: an update that is one of these or older is not
/// judged again, since it would move the baseline back to a quantity Shopify no longer
/// holds. Shopify's `updated_at` has whole seconds, so the quantities of every update of
/// the newest second are kept, to tell a second update in that second from a copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenUpdates {
    pub updated_at: DateTime<Utc>,
    /// At most [`SeenUpdates::SECOND_MAX`], newest last.
    pub available: Vec<i64>,
}

impl SeenUpdates {
    /// Quantities kept for one second: more updates of one item in one second are not
    /// something a person or an order does.
    pub const SECOND_MAX: usize = 8;

    /// Whether `update` was judged already, or is older than what was.
    pub fn covers(&self, update: &LevelUpdate) -> bool {
        update.updated_at < self.updated_at
            || (update.updated_at == self.updated_at && self.available.contains(&update.available))
    }

    /// What is seen once `update` was judged too.
    pub fn with(seen: Option<SeenUpdates>, update: &LevelUpdate) -> SeenUpdates {
        match seen {
            Some(mut seen) if seen.updated_at == update.updated_at => {
                if !seen.available.contains(&update.available) {
                    seen.available.push(update.available);
                }
                let extra = seen.available.len().saturating_sub(Self::SECOND_MAX);
                seen.available.drain(..extra);
                seen
            }
            Some(seen) if seen.updated_at > update.updated_at => seen,
            _ => SeenUpdates { updated_at: update.updated_at, available: vec![update.available] },
        }
    }

    /// The form saved in `connector_state`: `2026-11-21T12:14:02Z 37,35`.
    pub fn to_state(&self) -> String {
        let available: Vec<String> = self.available.iter().map(i64::to_string).collect();
        format!("{} {}", self.updated_at.to_rfc3339_opts(SecondsFormat::AutoSi, true), available.join(","))
    }

    pub fn from_state(state: &str) -> Option<Self> {
        let (at, available) = state.split_once(' ')?;
        let updated_at = DateTime::parse_from_rfc3339(at).ok()?.with_timezone(&Utc);
        let available = available.split(',').map(|a| a.parse().ok()).collect::<Option<Vec<i64>>>()?;
        Some(Self { updated_at, available })
    }
}

/// What an `inventory_levels/update` means to onhand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A location the sink does not push to: Shopify's own business.
    NotPushedLocation,
    /// The update judged last, delivered again, or one older than it (a late delivery or
    /// a replayed body): nothing to do.
    Superseded,
    /// Nothing was pushed for this item yet, so there is no number to compare with; the
    /// sink's first push sets onhand's value.
    NoBaseline,
    /// The quantity onhand itself pushed, coming back.
    Echo,
    /// The quantity onhand would push now (a web order's sale already applied).
    InSync,
    /// Someone changed the quantity in Shopify: the difference to what onhand pushed.
    ManualChange { delta: i64 },
}

impl Verdict {
    pub fn label(self) -> &'static str {
        match self {
            Verdict::NotPushedLocation => "not_pushed_location",
            Verdict::Superseded => "superseded",
            Verdict::NoBaseline => "no_baseline",
            Verdict::Echo => "echo",
            Verdict::InSync => "in_sync",
            Verdict::ManualChange { .. } => "manual_change",
        }
    }
}

/// Judges a level update against the newest update judged before it (`seen`), what the
/// sink last pushed for the item (`pushed`) and what onhand would push now (`onhand_now`,
/// the channel's availability).
pub fn judge_level_update(
    update: &LevelUpdate,
    push_location: Option<u64>,
    seen: Option<&SeenUpdates>,
    pushed: Option<i64>,
    onhand_now: Option<i64>,
) -> Verdict {
    if push_location != Some(update.location_id) {
        return Verdict::NotPushedLocation;
    }
    if seen.is_some_and(|seen| seen.covers(update)) {
        return Verdict::Superseded;
    }
    let Some(pushed) = pushed else { return Verdict::NoBaseline };
    if update.available == pushed {
        Verdict::Echo
    } else if Some(update.available) == onhand_now {
        Verdict::InSync
    } else {
        // Saturating: a delta that large is refused by the gate and dead-lettered.
        Verdict::ManualChange { delta: update.available.saturating_sub(pushed) }
    }
}

/// The event id of a manual change: the update's own coordinates, all from the signed
/// body, so that Shopify's re-delivery and a replayed body with fresh headers give the same
/// id and the ledger skips the copy. The quantity tells apart two updates in one second.
/// At most 18 + 20 + 1 + 20 + 1 + 33 + 1 + 20 = 114 visible ASCII characters, under the
/// 128 an event id may have.
pub fn level_update_event_id(update: &LevelUpdate) -> String {
    format!(
        "shopify:inventory:{}:{}:{}:{}",
        update.inventory_item_id,
        update.location_id,
        update.updated_at.to_rfc3339_opts(SecondsFormat::AutoSi, true),
        update.available
    )
}

/// The adjustment of a manual change in Shopify's admin.
pub fn level_update_fact(update: &LevelUpdate, delta: i64) -> Fact {
    Fact {
        event_id: level_update_event_id(update),
        reference: format!("inventory item {} location {}", update.inventory_item_id, update.location_id),
        kind: MovementKind::Adjustment,
        quantity: delta,
        item: Item::InventoryItem(update.inventory_item_id),
        place: Place::Shopify(update.location_id),
        occurred_at: update.updated_at,
        correlation_id: format!("shopify:inventory:{}:{}", update.inventory_item_id, update.location_id),
        attributes: BTreeMap::from([
            ("shopify_inventory_item_id".to_string(), update.inventory_item_id.to_string()),
            ("shopify_available".to_string(), update.available.to_string()),
        ]),
    }
}

/// The SKUs of the products facts name, as the caller found them in the database.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Catalog {
    /// Line SKUs that are products of the catalog.
    pub skus: HashSet<Sku>,
    pub variants: HashMap<u64, Sku>,
    pub inventory_items: HashMap<u64, Sku>,
}

/// What to look up in the database before [`resolve`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lookups {
    pub skus: Vec<Sku>,
    pub variants: Vec<String>,
    pub inventory_items: Vec<String>,
}

pub fn lookups(facts: &[Fact]) -> Lookups {
    let mut out = Lookups::default();
    for fact in facts {
        match &fact.item {
            Item::Line { variant_id, sku } => {
                out.skus.extend(sku.as_deref().and_then(|s| Sku::parse(s).ok()));
                out.variants.extend(variant_id.map(|v| v.to_string()));
            }
            Item::InventoryItem(id) => out.inventory_items.push(id.to_string()),
        }
    }
    for list in [&mut out.variants, &mut out.inventory_items] {
        list.sort();
        list.dedup();
    }
    out.skus.sort();
    out.skus.dedup();
    out
}

/// A fact that became a movement, or why it could not.
#[derive(Debug, Clone, PartialEq)]
pub enum Mapped {
    Movement(Box<Movement>),
    Unmapped { event_id: String, reason_code: &'static str, reason: String },
}

/// Turns facts into movements recorded at `now`, each checked by `Movement::from_json`.
pub fn resolve(facts: Vec<Fact>, catalog: &Catalog, config: &ShopifyConfig, now: DateTime<Utc>) -> Vec<Mapped> {
    facts.into_iter().map(|fact| resolve_one(fact, catalog, config, now)).collect()
}

fn resolve_one(fact: Fact, catalog: &Catalog, config: &ShopifyConfig, now: DateTime<Utc>) -> Mapped {
    let unmapped =
        |code, reason: String| Mapped::Unmapped { event_id: fact.event_id.clone(), reason_code: code, reason };
    let Some(sku) = sku_of(&fact.item, catalog) else {
        return unmapped(UNMAPPED_SKU, format!("{}: {} is not in the catalog", fact.event_id, describe(&fact.item)));
    };
    let location: &LocationId = match fact.place {
        Place::Default => &config.default_location,
        Place::Shopify(id) => match config.location(id) {
            Some(location) => location,
            None => {
                return unmapped(
                    UNMAPPED_LOCATION,
                    format!("{}: Shopify location {id} is not in location_map", fact.event_id),
                )
            }
        },
    };
    let mut attributes = fact.attributes.clone();
    if let Place::Shopify(id) = fact.place {
        attributes.insert("shopify_location_id".into(), id.to_string());
    }
    let value = json!({
        "event_id": fact.event_id,
        "source": { "system": "shopify", "instance": config.shop, "ref": fact.reference },
        "sku": sku,
        "location": location,
        "kind": fact.kind.as_str(),
        "quantity": fact.quantity,
        "occurred_at": fact.occurred_at,
        "recorded_at": now,
        "correlation_id": fact.correlation_id,
        "attributes": attributes,
    });
    match Movement::from_json(value.to_string().as_bytes()) {
        Ok(movement) => Mapped::Movement(Box::new(movement)),
        Err(e) => unmapped(e.code.as_str(), format!("{}: {}", fact.event_id, e.message)),
    }
}

/// A line's SKU is used when it is a product of the catalog; otherwise its variant id is
/// looked up. Shopify lets merchants type any SKU, so neither is trusted alone.
fn sku_of(item: &Item, catalog: &Catalog) -> Option<Sku> {
    match item {
        Item::Line { variant_id, sku } => sku
            .as_deref()
            .and_then(|s| Sku::parse(s).ok())
            .filter(|s| catalog.skus.contains(s))
            .or_else(|| variant_id.and_then(|v| catalog.variants.get(&v).cloned())),
        Item::InventoryItem(id) => catalog.inventory_items.get(id).cloned(),
    }
}

fn describe(item: &Item) -> String {
    match item {
        Item::Line { variant_id, sku } => format!(
            "the line with sku {} and variant {}",
            sku.as_deref().map_or("(none)".to_string(), |s| format!("{s:?}")),
            variant_id.map_or("(none)".to_string(), |v| v.to_string())
        ),
        Item::InventoryItem(id) => format!("inventory item {id}"),
    }
}

/// The number at the end of a GraphQL global id: `gid://shopify/LineItem/466157049` is
/// 466157049, the id the REST webhooks carry.
pub fn gid_number(gid: &str) -> Option<u64> {
    let last = gid.rsplit('/').next()?;
    last.split('?').next()?.parse().ok()
}

/// The GraphQL global id of a Shopify object.
pub fn gid(kind: &str, id: u64) -> String {
    format!("gid://shopify/{kind}/{id}")
}
