//! A Shopify dead letter mapped again, for `onhand dlq redrive`: the record is the
//! webhook body or the GraphQL order node as Shopify sent it, and its reason names the
//! event id of the line that could not be mapped. Once the catalog or `location_map`
//! knows what was missing, that line maps to the movement it would have been, with the
//! same event id; the order's other lines went through already and are not sent again.

use chrono::Utc;
use onhand_core::{db, event::Movement};

use super::{
    config::ShopifyConfig,
    mapping::{self, Fact, Mapped},
    payloads, source,
};

/// The movement the dead-lettered line maps to now, or why it cannot be sent again.
pub async fn remap(
    config: &ShopifyConfig,
    catalog: &dyn db::Catalog,
    payload: &[u8],
    reason_code: &str,
    reason: &str,
) -> Result<Vec<Movement>, String> {
    match reason_code {
        mapping::INVALID_PAYLOAD => {
            return Err("Shopify's record is not the shape the connector reads: mapping it again cannot help".into())
        }
        mapping::LINES_TRUNCATED => {
            return Err("the lines read were mapped; the order's webhook carries every line (or raise \
                 reconcile.line_pages_max and let the reconciliation read it again)"
                .into())
        }
        _ => {}
    }
    let Some((event_id, _)) = reason.split_once(": ") else {
        return Err("the reason names no event id: the connector's reconciliation re-reads the order".into());
    };
    let facts: Vec<Fact> = facts(payload)?.into_iter().filter(|f| f.event_id == event_id).collect();
    if facts.is_empty() {
        return Err(format!(
            "{event_id} is not a line of this record (a level update is judged against Shopify's level at the \
             time: the sink's next push settles it)"
        ));
    }
    let found = source::catalog(catalog, &mapping::lookups(&facts)).await.map_err(|e| e.to_string())?;
    mapping::resolve(facts, &found, config, Utc::now())
        .into_iter()
        .map(|mapped| match mapped {
            Mapped::Movement(movement) => Ok(*movement),
            Mapped::Unmapped { reason_code, reason, .. } => Err(format!("still {reason_code}: {reason}")),
        })
        .collect()
}

/// Every movement-to-be of a record, whichever of Shopify's shapes it is: a GraphQL order
/// node (a global id), a `refunds/create` body, or an order webhook's body (its sales and
/// the refunds it carries, as the reconciliation reads an order).
fn facts(payload: &[u8]) -> Result<Vec<Fact>, String> {
    let value: serde_json::Value = serde_json::from_slice(payload).map_err(|e| format!("not JSON: {e}"))?;
    let unreadable = |e: String| format!("not an order or a refund Shopify sends: {e}");
    if value.get("id").is_some_and(serde_json::Value::is_string) {
        let node: payloads::GqlOrder = serde_json::from_value(value).map_err(|e| unreadable(e.to_string()))?;
        return Ok(mapping::order_all_facts(&node.into_order().map_err(unreadable)?));
    }
    if value.get("refund_line_items").is_some() && value.get("order_id").is_some() {
        let refund = payloads::rest_refund(payload).map_err(|e| unreadable(e.to_string()))?;
        return Ok(mapping::refund_facts(&refund, None));
    }
    let order = payloads::rest_order(payload).map_err(|e| unreadable(e.to_string()))?;
    Ok(mapping::order_all_facts(&order))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORDERS_CREATE: &str = include_str!("fixtures/orders_create.json");
    const REFUNDS_CREATE: &str = include_str!("fixtures/refunds_create.json");

    #[test]
    fn every_shape_gives_the_event_ids_the_connector_gave() {
        let order = facts(ORDERS_CREATE.as_bytes()).unwrap();
        let from_webhook = mapping::order_facts(&payloads::rest_order(ORDERS_CREATE.as_bytes()).unwrap());
        let ids = |facts: &[Fact]| facts.iter().map(|f| f.event_id.clone()).collect::<Vec<_>>();
        assert!(ids(&from_webhook).iter().all(|id| ids(&order).contains(id)), "{:?}", ids(&order));
        let refund = facts(REFUNDS_CREATE.as_bytes()).unwrap();
        assert!(refund.iter().all(|f| f.event_id.starts_with("shopify:refund:")), "{:?}", ids(&refund));
        for hostile in [&b"not json"[..], b"{}", b"[]", b"{\"id\":\"gid://shopify/Order/x\"}", b"null"] {
            assert!(facts(hostile).is_err(), "{}", String::from_utf8_lossy(hostile));
        }
    }
}
