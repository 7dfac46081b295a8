//! Shopify's wire shapes, read into the connector's own types ([`Order`], [`Refund`]):
//! the REST JSON of webhooks and the nodes of the Admin GraphQL `orders` query
//! (API version 2026-04), whose line connections come a page at a time ([`Nodes`]). Only
//! the fields the mapping needs are read; Shopify adds fields often, and unknown ones are
//! ignored.

use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::mapping::{gid_number, LineItem, Order, Refund, RefundLine, Restock};

#[derive(Debug, Deserialize)]
struct RestLineItem {
    id: u64,
    #[serde(default)]
    variant_id: Option<u64>,
    #[serde(default)]
    sku: Option<String>,
    quantity: i64,
}

impl RestLineItem {
    fn into_line(self) -> LineItem {
        LineItem { id: self.id, variant_id: self.variant_id, sku: non_empty(self.sku), quantity: self.quantity }
    }
}

#[derive(Debug, Deserialize)]
struct RestRefundLine {
    id: u64,
    quantity: i64,
    #[serde(default)]
    restock_type: Option<String>,
    #[serde(default)]
    location_id: Option<u64>,
    line_item_id: u64,
    #[serde(default)]
    line_item: Option<RestLineItem>,
}

/// The body of `refunds/create`, also each of an order's `refunds`.
#[derive(Debug, Deserialize)]
pub struct RestRefund {
    id: u64,
    order_id: u64,
    created_at: DateTime<Utc>,
    #[serde(default)]
    refund_line_items: Vec<RestRefundLine>,
}

impl RestRefund {
    /// `lines` are the order's, when known: a refund line without its `line_item` takes
    /// the SKU and variant from there.
    fn into_refund(self, lines: &[LineItem]) -> Refund {
        let lines = self
            .refund_line_items
            .into_iter()
            .map(|rl| RefundLine {
                id: rl.id,
                quantity: rl.quantity,
                restock: Restock::parse(rl.restock_type.as_deref()),
                location_id: rl.location_id,
                line_item: rl.line_item.map(RestLineItem::into_line).unwrap_or_else(|| {
                    lines.iter().find(|l| l.id == rl.line_item_id).cloned().unwrap_or(LineItem {
                        id: rl.line_item_id,
                        variant_id: None,
                        sku: None,
                        quantity: rl.quantity,
                    })
                }),
            })
            .collect();
        Refund { id: self.id, order_id: self.order_id, created_at: self.created_at, lines }
    }
}

/// The body of `orders/create` and `orders/cancelled`.
#[derive(Debug, Deserialize)]
struct RestOrder {
    id: u64,
    #[serde(default)]
    name: Option<String>,
    created_at: DateTime<Utc>,
    #[serde(default)]
    updated_at: Option<DateTime<Utc>>,
    #[serde(default)]
    location_id: Option<u64>,
    #[serde(default)]
    line_items: Vec<RestLineItem>,
    #[serde(default)]
    refunds: Vec<RestRefund>,
}

/// Reads an order webhook body.
pub fn rest_order(body: &[u8]) -> Result<Order, serde_json::Error> {
    let order: RestOrder = serde_json::from_slice(body)?;
    let line_items: Vec<LineItem> = order.line_items.into_iter().map(RestLineItem::into_line).collect();
    let refunds = order.refunds.into_iter().map(|r| r.into_refund(&line_items)).collect();
    Ok(Order {
        id: order.id,
        name: order.name,
        created_at: order.created_at,
        updated_at: order.updated_at,
        location_id: order.location_id,
        line_items,
        refunds,
    })
}

/// Reads a `refunds/create` body.
pub fn rest_refund(body: &[u8]) -> Result<Refund, serde_json::Error> {
    serde_json::from_slice::<RestRefund>(body).map(|r| r.into_refund(&[]))
}

#[derive(Debug, Clone, Deserialize)]
pub struct GqlRef {
    pub id: String,
}

/// A connection's `pageInfo`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PageInfo {
    #[serde(default)]
    pub has_next_page: bool,
    #[serde(default)]
    pub end_cursor: Option<String>,
}

/// A page of a connection: its nodes, and where the next page starts.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Nodes<T> {
    pub nodes: Vec<T>,
    /// Absent: the query did not ask, and the page is taken as the last.
    #[serde(default)]
    pub page_info: PageInfo,
}

/// Where a connection stands after the pages read so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rest<'a> {
    /// Every node is read.
    Done,
    /// More nodes, after this cursor.
    After(&'a str),
    /// More nodes, but no cursor to read them with.
    Unreadable,
}

impl<T> Nodes<T> {
    pub fn rest(&self) -> Rest<'_> {
        match (&self.page_info.has_next_page, &self.page_info.end_cursor) {
            (false, _) => Rest::Done,
            (true, Some(cursor)) => Rest::After(cursor),
            (true, None) => Rest::Unreadable,
        }
    }

    /// Adds the next page: its nodes after these, and its `pageInfo`.
    pub fn extend(&mut self, page: Nodes<T>) {
        self.nodes.extend(page.nodes);
        self.page_info = page.page_info;
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GqlLineItem {
    id: String,
    #[serde(default)]
    sku: Option<String>,
    quantity: i64,
    #[serde(default)]
    variant: Option<GqlRef>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GqlRefundLine {
    #[serde(default)]
    id: Option<String>,
    quantity: i64,
    restock_type: String,
    #[serde(default)]
    location: Option<GqlRef>,
    line_item: GqlLineItem,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GqlRefund {
    pub id: String,
    created_at: DateTime<Utc>,
    /// The first page; the reconciliation reads the rest with `refund(id:)`.
    pub refund_line_items: Nodes<GqlRefundLine>,
}

/// One node of the `orders` query (`docs/connectors/shopify.md` shows the query).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GqlOrder {
    pub id: String,
    #[serde(default)]
    name: Option<String>,
    created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[serde(default)]
    retail_location: Option<GqlRef>,
    /// The first page; the reconciliation reads the rest with `order(id:)`.
    pub line_items: Nodes<GqlLineItem>,
    #[serde(default)]
    pub refunds: Vec<GqlRefund>,
}

fn number(gid: &str) -> Result<u64, String> {
    gid_number(gid).ok_or_else(|| format!("{gid:?} is not a Shopify global id"))
}

impl GqlLineItem {
    fn into_line(self) -> Result<LineItem, String> {
        Ok(LineItem {
            id: number(&self.id)?,
            variant_id: self.variant.map(|v| number(&v.id)).transpose()?,
            sku: non_empty(self.sku),
            quantity: self.quantity,
        })
    }
}

impl GqlOrder {
    /// The order as a webhook would have carried it, ids and all.
    pub fn into_order(self) -> Result<Order, String> {
        let id = number(&self.id)?;
        let line_items = self.line_items.nodes.into_iter().map(GqlLineItem::into_line).collect::<Result<_, _>>()?;
        let refunds = self.refunds.into_iter().map(|r| gql_refund(r, id)).collect::<Result<_, _>>()?;
        Ok(Order {
            id,
            name: self.name,
            created_at: self.created_at,
            updated_at: Some(self.updated_at),
            location_id: self.retail_location.map(|l| number(&l.id)).transpose()?,
            line_items,
            refunds,
        })
    }
}

fn gql_refund(refund: GqlRefund, order_id: u64) -> Result<Refund, String> {
    let lines = refund
        .refund_line_items
        .nodes
        .into_iter()
        .map(|rl| {
            // Without its own id, a line would get an event id the webhook never gives it,
            // and its units would come back twice.
            let id = rl.id.as_deref().ok_or("a refund line item has no id")?;
            Ok(RefundLine {
                id: number(id)?,
                quantity: rl.quantity,
                restock: Restock::parse(Some(&rl.restock_type)),
                location_id: rl.location.map(|l| number(&l.id)).transpose()?,
                line_item: rl.line_item.into_line()?,
            })
        })
        .collect::<Result<_, String>>()?;
    Ok(Refund { id: number(&refund.id)?, order_id, created_at: refund.created_at, lines })
}

fn non_empty(value: Option<String>) -> Option<String> {
    value.map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}
