//! Unit tests of the Shopify connector's pure parts, on payloads shaped like Shopify's
//! documented examples (`fixtures/`, API version 2026-04).

use std::{collections::HashMap, time::Duration};

use chrono::{DateTime, Utc};
use onhand_core::{
    backoff::Backoff,
    config::{ChannelConfig, Config},
    event::{MovementKind, Sku},
};
use serde_json::{json, Value};

use super::{
    config::ShopifyConfig,
    mapping::{self, Catalog, LevelUpdate, Mapped, Restock, SeenUpdates, Verdict},
    payloads,
    sink::{idempotency_key, Pending},
    source::{freshness, read_delivery, verify_signature, Delivery, Freshness},
};

const ORDERS_CREATE: &str = include_str!("fixtures/orders_create.json");
const ORDERS_CANCELLED: &str = include_str!("fixtures/orders_cancelled.json");
const REFUNDS_CREATE: &str = include_str!("fixtures/refunds_create.json");
const LEVEL_UPDATE: &str = include_str!("fixtures/inventory_levels_update.json");
const GRAPHQL_ORDERS: &str = include_str!("fixtures/graphql_orders.json");

fn section() -> Value {
    json!({
        "shop": "casa-onhand.myshopify.com",
        "access_token": "shpat_0123456789abcdef",
        "webhook_secret": "whsec-test",
        "location_map": { "24826418": "store-012", "48752903": "dc-sp" },
        "default_location": "dc-sp",
        "sink": { "channel": "web", "location_id": 48752903 }
    })
}

fn full_config() -> Config {
    let mut config = Config::default();
    config.channels.insert(
        "web".into(),
        ChannelConfig { all_locations: false, locations: vec!["dc-sp".into()], ..ChannelConfig::default() },
    );
    config
}

fn config() -> ShopifyConfig {
    ShopifyConfig::from_section(&full_config(), &section()).expect("a valid section")
}

fn sku(s: &str) -> Sku {
    Sku::parse(s).unwrap()
}

/// The rice by its SKU, the olive oil by its variant id (its Shopify SKU is not onhand's).
fn catalog() -> Catalog {
    Catalog {
        skus: [sku("7891000100103")].into(),
        variants: HashMap::from([(808950810, sku("7891000100103")), (49148385, sku("7891000100257"))]),
        inventory_items: HashMap::from([(271878346596884015, sku("7891000100103"))]),
    }
}

fn now() -> DateTime<Utc> {
    "2026-11-26T12:00:00Z".parse().unwrap()
}

/// (event_id, sku, location, kind, quantity) of each movement; unmapped facts as their code.
fn summary(mapped: &[Mapped]) -> Vec<(String, String, String, MovementKind, i64)> {
    mapped
        .iter()
        .map(|m| match m {
            Mapped::Movement(m) => {
                (m.event_id.to_string(), m.sku.to_string(), m.location.to_string(), m.kind, m.quantity)
            }
            Mapped::Unmapped { event_id, reason_code, .. } => {
                (event_id.clone(), reason_code.to_string(), String::new(), MovementKind::Count, 0)
            }
        })
        .collect()
}

fn movement(mapped: &Mapped) -> &onhand_core::event::Movement {
    match mapped {
        Mapped::Movement(m) => m,
        Mapped::Unmapped { reason, .. } => panic!("unmapped: {reason}"),
    }
}

/// C1: a line with a quantity at the edge of i64 is dead-lettered as an invalid quantity,
/// never wrapped into a huge sale.
#[test]
fn extreme_quantities_of_an_order_are_dead_lettered() {
    for quantity in [i64::MIN, i64::MAX] {
        let mut order: Value = serde_json::from_str(ORDERS_CREATE).unwrap();
        order["line_items"][0]["quantity"] = json!(quantity);
        let order = payloads::rest_order(order.to_string().as_bytes()).unwrap();
        let mapped = mapping::resolve(mapping::order_all_facts(&order), &catalog(), &config(), now());
        let refused: Vec<&str> = mapped
            .iter()
            .filter_map(|m| match m {
                Mapped::Unmapped { reason_code, .. } => Some(*reason_code),
                Mapped::Movement(_) => None,
            })
            .collect();
        if quantity > 0 {
            assert_eq!(refused, ["invalid_quantity"], "{quantity}");
        } else {
            assert!(refused.is_empty(), "a line with no quantity left moves nothing");
        }
    }
}

#[test]
fn a_web_order_sells_each_line_at_the_default_location() {
    let order = payloads::rest_order(ORDERS_CREATE.as_bytes()).unwrap();
    let mapped = mapping::resolve(mapping::order_facts(&order), &catalog(), &config(), now());
    assert_eq!(
        summary(&mapped),
        [
            (
                "shopify:order:820982911946154508:line:866550311766439020".into(),
                "7891000100103".into(),
                "dc-sp".into(),
                MovementKind::Sale,
                2
            ),
            (
                "shopify:order:820982911946154508:line:141249953214522974".into(),
                "7891000100257".into(),
                "dc-sp".into(),
                MovementKind::Sale,
                1
            ),
        ]
    );
    let sale = movement(&mapped[0]);
    assert_eq!(sale.occurred_at, "2026-11-20T18:31:07Z".parse::<DateTime<Utc>>().unwrap(), "kept in UTC");
    assert_eq!(sale.recorded_at, now());
    assert_eq!(sale.source.instance, "casa-onhand.myshopify.com");
    assert_eq!(sale.source.reference, "order 820982911946154508 line 866550311766439020");
    assert_eq!(sale.correlation_id.as_deref(), Some("shopify:order:820982911946154508"));
    assert_eq!(sale.attributes["shopify_order_name"], "#1042");
    assert_eq!(sale.attributes["shopify_variant_id"], "808950810");
    assert!(!sale.attributes.contains_key("shopify_location_id"), "a web order has no location");
}

#[test]
fn an_order_at_a_shopify_location_sells_there_or_is_dead_lettered() {
    let mut order: Value = serde_json::from_str(ORDERS_CREATE).unwrap();
    order["location_id"] = json!(24826418);
    let order = payloads::rest_order(order.to_string().as_bytes()).unwrap();
    let mapped = mapping::resolve(mapping::order_facts(&order), &catalog(), &config(), now());
    assert_eq!(movement(&mapped[0]).location.as_str(), "store-012");
    assert_eq!(movement(&mapped[0]).attributes["shopify_location_id"], "24826418");

    let mut unknown: Value = serde_json::from_str(ORDERS_CREATE).unwrap();
    unknown["location_id"] = json!(99999);
    let order = payloads::rest_order(unknown.to_string().as_bytes()).unwrap();
    let mapped = mapping::resolve(mapping::order_facts(&order), &catalog(), &config(), now());
    match &mapped[0] {
        Mapped::Unmapped { reason_code, reason, .. } => {
            assert_eq!(*reason_code, mapping::UNMAPPED_LOCATION);
            assert!(reason.contains("Shopify location 99999 is not in location_map"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_line_the_catalog_does_not_know_is_dead_lettered_with_its_ids() {
    let order = payloads::rest_order(ORDERS_CREATE.as_bytes()).unwrap();
    let mut catalog = catalog();
    catalog.variants.remove(&49148385);
    let mapped = mapping::resolve(mapping::order_facts(&order), &catalog, &config(), now());
    assert!(matches!(mapped[0], Mapped::Movement(_)));
    match &mapped[1] {
        Mapped::Unmapped { event_id, reason_code, reason } => {
            assert_eq!(event_id, "shopify:order:820982911946154508:line:141249953214522974");
            assert_eq!(*reason_code, mapping::UNMAPPED_SKU);
            assert!(reason.contains("sku \"AZ-EV-500\" and variant 49148385 is not in the catalog"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_line_sku_counts_only_when_it_is_in_the_catalog() {
    let line =
        |sku: Option<&str>, variant: Option<u64>| mapping::Item::Line { variant_id: variant, sku: sku.map(Into::into) };
    let facts = |item| {
        let mut order = payloads::rest_order(ORDERS_CREATE.as_bytes()).unwrap();
        order.line_items.truncate(1);
        let mut facts = mapping::order_facts(&order);
        facts[0].item = item;
        facts
    };
    let resolved = |item| summary(&mapping::resolve(facts(item), &catalog(), &config(), now()))[0].1.clone();
    assert_eq!(resolved(line(Some("7891000100103"), None)), "7891000100103");
    assert_eq!(resolved(line(Some("not in catalog"), Some(49148385))), "7891000100257", "the variant decides");
    assert_eq!(resolved(line(None, None)), mapping::UNMAPPED_SKU, "a custom line is not dropped silently");
}

#[test]
fn lines_removed_by_an_edit_move_nothing() {
    let mut order = payloads::rest_order(ORDERS_CREATE.as_bytes()).unwrap();
    order.line_items[1].quantity = 0;
    assert_eq!(mapping::order_facts(&order).len(), 1);
}

#[test]
fn a_cancellation_restocks_its_refund_lines_with_the_refund_ids() {
    let order = payloads::rest_order(ORDERS_CANCELLED.as_bytes()).unwrap();
    let mapped = mapping::resolve(mapping::cancelled_order_facts(&order), &catalog(), &config(), now());
    assert_eq!(
        summary(&mapped),
        [
            (
                "shopify:refund:929361462:line:1058498300".into(),
                "7891000100103".into(),
                "store-012".into(),
                MovementKind::Return,
                2
            ),
            (
                "shopify:refund:929361462:line:1058498301".into(),
                "7891000100257".into(),
                "dc-sp".into(),
                MovementKind::Return,
                1
            ),
        ],
        "line items come from the order; a line without a restock location goes to the default"
    );
    assert_eq!(movement(&mapped[0]).attributes["restock_type"], "cancel");
    assert!(mapping::order_facts(&order).iter().all(|f| f.kind == MovementKind::Sale), "the webhook maps refunds only");
}

#[test]
fn a_refund_restocks_only_the_lines_it_restocks() {
    let refund = payloads::rest_refund(REFUNDS_CREATE.as_bytes()).unwrap();
    let mapped = mapping::resolve(mapping::refund_facts(&refund, None), &catalog(), &config(), now());
    assert_eq!(
        summary(&mapped),
        [(
            "shopify:refund:509562969:line:104689539".into(),
            "7891000100103".into(),
            "dc-sp".into(),
            MovementKind::Return,
            1
        )],
        "the no_restock line stays sold"
    );
    assert_eq!(movement(&mapped[0]).occurred_at, "2026-11-21T13:12:31Z".parse::<DateTime<Utc>>().unwrap());
}

#[test]
fn restock_types_are_read_in_both_shapes() {
    assert_eq!(Restock::parse(Some("return")), Restock::Return);
    assert_eq!(Restock::parse(Some("RETURN")), Restock::Return);
    assert_eq!(Restock::parse(Some("cancel")), Restock::Cancel);
    assert_eq!(Restock::parse(Some("LEGACY_RESTOCK")), Restock::Legacy);
    assert_eq!(Restock::parse(Some("no_restock")), Restock::None);
    assert_eq!(Restock::parse(Some("something_new")), Restock::None, "never invents stock");
    assert_eq!(Restock::parse(None), Restock::None);
}

#[test]
fn the_reconciliation_gives_the_same_event_ids_as_the_webhooks() {
    let page: Value = serde_json::from_str(GRAPHQL_ORDERS).unwrap();
    let node = page["data"]["orders"]["nodes"][0].clone();
    let order = serde_json::from_value::<payloads::GqlOrder>(node).unwrap().into_order().unwrap();
    let from_graphql = summary(&mapping::resolve(mapping::order_all_facts(&order), &catalog(), &config(), now()));

    let webhook_order = payloads::rest_order(ORDERS_CREATE.as_bytes()).unwrap();
    let refund = payloads::rest_refund(REFUNDS_CREATE.as_bytes()).unwrap();
    let mut from_webhooks = mapping::order_facts(&webhook_order);
    from_webhooks.extend(mapping::refund_facts(&refund, None));
    let from_webhooks = summary(&mapping::resolve(from_webhooks, &catalog(), &config(), now()));
    assert_eq!(from_graphql, from_webhooks);
    assert_eq!(from_graphql.len(), 3);
}

#[test]
fn a_graphql_order_says_where_the_rest_of_its_lines_starts() {
    let page: Value = serde_json::from_str(GRAPHQL_ORDERS).unwrap();
    let mut node = page["data"]["orders"]["nodes"][0].clone();
    let order = serde_json::from_value::<payloads::GqlOrder>(node.clone()).unwrap();
    assert_eq!(order.line_items.rest(), payloads::Rest::Done, "no pageInfo: the page is the last");
    node["lineItems"]["pageInfo"] = json!({ "hasNextPage": true, "endCursor": "c1" });
    node["refunds"][0]["refundLineItems"]["pageInfo"] = json!({ "hasNextPage": true, "endCursor": null });
    let mut order = serde_json::from_value::<payloads::GqlOrder>(node).unwrap();
    assert_eq!(order.line_items.rest(), payloads::Rest::After("c1"));
    assert_eq!(order.refunds[0].refund_line_items.rest(), payloads::Rest::Unreadable);

    let next: payloads::Nodes<payloads::GqlLineItem> = serde_json::from_value(json!({
        "pageInfo": { "hasNextPage": false, "endCursor": "c2" },
        "nodes": [{ "id": "gid://shopify/LineItem/3", "sku": "7891000100103", "quantity": 4, "variant": null }]
    }))
    .unwrap();
    order.line_items.extend(next);
    assert_eq!(order.line_items.rest(), payloads::Rest::Done);
    let order = order.into_order().unwrap();
    let ids: Vec<u64> = order.line_items.iter().map(|l| l.id).collect();
    assert_eq!(ids, [866550311766439020, 141249953214522974, 3], "the next page's lines after the first's");
}

#[test]
fn a_graphql_order_with_a_bad_id_is_refused() {
    let page: Value = serde_json::from_str(GRAPHQL_ORDERS).unwrap();
    let mut node = page["data"]["orders"]["nodes"][0].clone();
    node["refunds"][0]["refundLineItems"]["nodes"][0]["id"] = Value::Null;
    let refused = serde_json::from_value::<payloads::GqlOrder>(node).unwrap().into_order().unwrap_err();
    assert_eq!(refused, "a refund line item has no id");
    assert_eq!(mapping::gid_number("gid://shopify/InventoryLevel/24826418?inventory_item_id=1"), Some(24826418));
    assert_eq!(mapping::gid_number("not a gid"), None);
}

#[test]
fn a_level_update_is_judged_against_what_onhand_pushed() {
    let update: LevelUpdate = serde_json::from_str(LEVEL_UPDATE).unwrap();
    assert_eq!(update.available, 37);
    let judge = |push_location, pushed, now| mapping::judge_level_update(&update, push_location, None, pushed, now);
    assert_eq!(judge(Some(1), Some(30), None), Verdict::NotPushedLocation);
    assert_eq!(judge(Some(24826418), None, Some(30)), Verdict::NoBaseline);
    assert_eq!(judge(Some(24826418), Some(37), Some(30)), Verdict::Echo);
    assert_eq!(judge(Some(24826418), Some(38), Some(37)), Verdict::InSync, "a web order onhand already applied");
    assert_eq!(judge(Some(24826418), Some(30), Some(30)), Verdict::ManualChange { delta: 7 });

    let fact = mapping::level_update_fact(&update, 7);
    let mut config = config();
    config.location_map.insert("24826418".into(), onhand_core::event::LocationId::parse("dc-sp").unwrap());
    let mapped = mapping::resolve(vec![fact], &catalog(), &config, now());
    assert_eq!(
        summary(&mapped),
        [(
            "shopify:inventory:271878346596884015:24826418:2026-11-21T12:14:02Z:37".into(),
            "7891000100103".into(),
            "dc-sp".into(),
            MovementKind::Adjustment,
            7
        )]
    );
}

#[test]
fn a_manual_change_is_identified_by_its_signed_body_alone() {
    let update: LevelUpdate = serde_json::from_str(LEVEL_UPDATE).unwrap();
    // The same body, whatever headers came with it, is the same adjustment.
    let replayed: LevelUpdate = serde_json::from_str(LEVEL_UPDATE).unwrap();
    assert_eq!(mapping::level_update_fact(&update, 7).event_id, mapping::level_update_fact(&replayed, -2).event_id);
    let id = |change: fn(&mut LevelUpdate)| {
        let mut other = update.clone();
        change(&mut other);
        mapping::level_update_event_id(&other)
    };
    let original = mapping::level_update_event_id(&update);
    assert_ne!(id(|u| u.inventory_item_id += 1), original);
    assert_ne!(id(|u| u.location_id += 1), original);
    assert_ne!(id(|u| u.updated_at += chrono::Duration::seconds(1)), original);
    assert_ne!(id(|u| u.available += 1), original, "a second change in the same second");
    assert_eq!(
        id(|u| u.updated_at = u.updated_at.with_timezone(&chrono::FixedOffset::east_opt(3600).unwrap()).into()),
        original
    );

    // The longest id there can be is still an event id onhand accepts.
    let longest = LevelUpdate {
        inventory_item_id: u64::MAX,
        location_id: u64::MAX,
        available: i64::MIN,
        updated_at: "9999-12-31T23:59:59.999999999Z".parse().unwrap(),
    };
    let id = mapping::level_update_event_id(&longest);
    assert!(id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic()), "{id}");
    let mut config = config();
    config.location_map.insert("24826418".into(), onhand_core::event::LocationId::parse("dc-sp").unwrap());
    let mut fact = mapping::level_update_fact(&update, 7);
    fact.event_id = id.clone();
    assert_eq!(summary(&mapping::resolve(vec![fact], &catalog(), &config, now()))[0].0, id);
}

#[test]
fn an_update_judged_already_or_older_is_superseded() {
    let at = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
    let update = |updated_at: &str, available| LevelUpdate {
        inventory_item_id: 271878346596884015,
        location_id: 48752903,
        available,
        updated_at: at(updated_at),
    };
    let first = update("2026-11-21T12:14:02Z", 13);
    let seen = SeenUpdates::with(None, &first);
    assert_eq!(SeenUpdates::from_state(&seen.to_state()), Some(seen.clone()), "{}", seen.to_state());
    // (update, pushed, verdict): the baseline is 20 now, after later pushes.
    let cases = [
        (update("2026-11-21T12:14:02Z", 13), Verdict::Superseded),
        (update("2026-11-21T12:14:01Z", 9), Verdict::Superseded),
        (update("2026-11-21T12:14:02Z", 12), Verdict::ManualChange { delta: -8 }),
        (update("2026-11-21T12:14:03Z", 13), Verdict::ManualChange { delta: -7 }),
        (update("2026-11-21T12:14:03Z", 20), Verdict::Echo),
    ];
    for (update, verdict) in cases {
        assert_eq!(
            mapping::judge_level_update(&update, Some(48752903), Some(&seen), Some(20), None),
            verdict,
            "{update:?}"
        );
    }
    let both = SeenUpdates::with(Some(seen.clone()), &update("2026-11-21T12:14:02Z", 12));
    assert_eq!(both.available, [13, 12], "two updates in one second are both seen");
    assert_eq!(SeenUpdates::with(Some(both.clone()), &update("2026-11-21T12:14:01Z", 1)), both, "never back");
    let later = SeenUpdates::with(Some(both), &update("2026-11-21T12:14:05Z", 4));
    assert_eq!((later.updated_at, later.available), (at("2026-11-21T12:14:05Z"), vec![4]));
    let mut busy = None;
    for available in 0..20 {
        busy = Some(SeenUpdates::with(busy, &update("2026-11-21T12:14:02Z", available)));
    }
    assert_eq!(busy.unwrap().available, (12..20).collect::<Vec<_>>(), "bounded, newest kept");
    assert_eq!(SeenUpdates::from_state("garbage"), None);
}

#[test]
fn a_delivery_older_than_the_window_is_stale() {
    let now = now();
    let window_s = 48 * 3600;
    let cases = [
        (None, Freshness::Unknown),
        (Some("yesterday"), Freshness::Unknown),
        (Some("2026-11-26T11:59:58.877041743Z"), Freshness::Fresh),
        (Some("2026-11-24T12:00:00Z"), Freshness::Fresh),
        (Some("2026-11-24T09:00:00-03:00"), Freshness::Fresh),
        (Some("2026-11-24T11:59:59Z"), Freshness::Stale { age_s: window_s + 1 }),
        (Some("2025-11-26T12:00:00Z"), Freshness::Stale { age_s: 365 * 24 * 3600 }),
        (Some("2026-11-26T12:05:00Z"), Freshness::Fresh),
    ];
    for (header, expected) in cases {
        assert_eq!(freshness(header, now, window_s as u64), expected, "{header:?}");
    }
}

#[test]
fn a_body_under_another_topic_moves_nothing_new() {
    let bodies = [
        ("orders/create", ORDERS_CREATE),
        ("orders/cancelled", ORDERS_CANCELLED),
        ("refunds/create", REFUNDS_CREATE),
        ("inventory_levels/update", LEVEL_UPDATE),
    ];
    let read = |topic: &str, body: &str| match read_delivery(topic, body.as_bytes()) {
        Ok(Delivery::Facts(facts)) => Ok(facts.into_iter().map(|f| f.event_id).collect::<Vec<_>>()),
        Ok(Delivery::LevelUpdate(_)) => Ok(vec!["(a level update)".to_string()]),
        Ok(Delivery::Ignored) => Ok(vec!["(ignored)".to_string()]),
        Err(_) => Err("dead-lettered"),
    };
    // Every id a body can give under its own topic or as an order of the reconciliation.
    let own = |topic: &str, body: &str| {
        let mut ids = read(topic, body).unwrap();
        if let Ok(order) = payloads::rest_order(body.as_bytes()) {
            ids.extend(mapping::order_all_facts(&order).into_iter().map(|f| f.event_id));
        }
        ids
    };
    for (own_topic, body) in bodies {
        for (topic, _) in bodies {
            if topic == own_topic {
                continue;
            }
            match read(topic, body) {
                Err(_) => {}
                Ok(ids) => {
                    let own = own(own_topic, body);
                    assert!(
                        ids.iter().all(|id| own.contains(id)),
                        "{own_topic} body as {topic}: {ids:?} not in {own:?}"
                    );
                }
            }
        }
    }
    assert_eq!(read("orders/create", LEVEL_UPDATE), Err("dead-lettered"), "an inventory body is no order");
    assert_eq!(read("refunds/create", ORDERS_CREATE), Err("dead-lettered"), "an order is no refund");
    assert_eq!(read("inventory_levels/update", ORDERS_CREATE), Err("dead-lettered"));
    assert_eq!(read("orders/create", REFUNDS_CREATE), Ok(vec![]), "a refund is an order without lines");
    assert_eq!(read("products/update", ORDERS_CREATE), Ok(vec!["(ignored)".to_string()]));
}

#[test]
fn a_movement_onhand_would_refuse_is_dead_lettered_with_its_code() {
    let mut order = payloads::rest_order(ORDERS_CREATE.as_bytes()).unwrap();
    order.line_items[0].quantity = 2_000_000_000;
    let mapped = mapping::resolve(mapping::order_facts(&order), &catalog(), &config(), now());
    assert!(matches!(&mapped[0], Mapped::Unmapped { reason_code: "invalid_quantity", .. }), "{mapped:?}");
}

#[test]
fn a_webhook_is_verified_on_its_raw_bytes() {
    use base64::{prelude::BASE64_STANDARD, Engine};
    use hmac::{Hmac, Mac};
    let sign = |secret: &[u8], body: &[u8]| {
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap();
        mac.update(body);
        BASE64_STANDARD.encode(mac.finalize().into_bytes())
    };
    let body = ORDERS_CREATE.as_bytes();
    let signature = sign(b"whsec-test", body);
    assert!(verify_signature(b"whsec-test", body, Some(&signature)));
    assert!(!verify_signature(b"another-secret", body, Some(&signature)));
    let mut tampered = body.to_vec();
    tampered[10] ^= 1;
    assert!(!verify_signature(b"whsec-test", &tampered, Some(&signature)));
    assert!(!verify_signature(b"whsec-test", body, None));
    assert!(!verify_signature(b"whsec-test", body, Some("not base64!")));
    assert!(!verify_signature(b"whsec-test", body, Some("")));
}

#[test]
fn the_section_is_checked_and_its_secrets_never_printed() {
    let config = config();
    let printed = format!("{config:?}");
    assert!(!printed.contains("shpat_0123456789abcdef") && !printed.contains("whsec-test"), "{printed}");
    assert_eq!(config.graphql_url(), "https://casa-onhand.myshopify.com/admin/api/2026-04/graphql.json");

    let refused = |change: fn(&mut Value)| {
        let mut section = section();
        change(&mut section);
        ShopifyConfig::from_section(&full_config(), &section).unwrap_err().message
    };
    assert!(refused(|s| s["unknown"] = json!(1)).contains("unknown field `unknown`"));
    assert!(refused(|s| s["sink"]["channel"] = json!("nope")).contains("sink.channel \"nope\""));
    assert!(refused(|s| s["location_map"]["store-1"] = json!("x")).contains("not a Shopify location id"));
    assert!(refused(|s| s["default_location"] = json!("bad location")).contains("location"));
    assert!(refused(|s| s["webhook_max_age_s"] = json!(0)).contains("webhook_max_age_s must be 60 or more"));
    assert!(refused(|s| s["reconcile"] = json!({ "page_size": 77 })).contains("page_size must be 1 to 76"));
    assert!(refused(|s| s["reconcile"] = json!({ "line_pages_max": 0 })).contains("line_pages_max"));
    assert_eq!(config.webhook_max_age_s, 48 * 3600, "Shopify retries for 4 hours and may be a day late");
    let mut numeric = section();
    numeric["webhook_secret"] = json!(12345);
    let config = ShopifyConfig::from_section(&full_config(), &numeric).unwrap();
    assert_eq!(config.webhook_secret.expose(), "12345", "a secret of digits from the environment");
}

#[test]
fn pending_keeps_one_entry_per_sku_and_the_newest_mark() {
    let start = tokio::time::Instant::now();
    let mut pending = Pending::default();
    for _ in 0..1000 {
        pending.mark(sku("A"), start);
        pending.mark(sku("B"), start + Duration::from_millis(5));
    }
    assert_eq!(pending.len(), 2, "a thousand changes, one pending value each");
    let taken = pending.take(10);
    assert_eq!(taken.iter().map(|(s, _)| s.as_str()).collect::<Vec<_>>(), ["A", "B"], "oldest first");
    pending.mark(sku("A"), start);
    pending.done(&taken[0].0, taken[0].1);
    pending.done(&taken[1].0, taken[1].1);
    assert!(pending.contains(&sku("A")), "marked again during its push: the newer value goes out too");
    assert!(!pending.contains(&sku("B")));
}

#[tokio::test(start_paused = true)]
async fn a_change_lingers_for_its_batch_and_backoff_doubles_to_its_bound() {
    let linger = Duration::from_millis(200);
    let mut pending = Pending::default();
    assert_eq!(pending.due_at(linger), None);
    let first = tokio::time::Instant::now();
    pending.mark(sku("A"), first);
    tokio::time::advance(Duration::from_millis(150)).await;
    pending.mark(sku("B"), tokio::time::Instant::now());
    assert_eq!(pending.due_at(linger), Some(first + linger), "the oldest change decides");
    tokio::time::sleep_until(pending.due_at(linger).unwrap()).await;
    assert_eq!(first.elapsed(), linger);

    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_millis(1000));
    let waits: Vec<u128> = (0..5).map(|_| backoff.fail().as_millis()).collect();
    assert_eq!(waits, [200, 400, 800, 1000, 1000]);
    backoff.reset();
    assert_eq!(backoff.fail(), Duration::from_millis(200));
}

#[test]
fn a_push_has_the_same_idempotency_key_until_its_values_change() {
    let key = idempotency_key(&[(271878346596884015, 37, 35, 42)]);
    assert_eq!(key, idempotency_key(&[(271878346596884015, 37, 35, 42)]));
    assert_ne!(key, idempotency_key(&[(271878346596884015, 37, 35, 43)]), "a newer level version");
    assert_ne!(key, idempotency_key(&[(271878346596884015, 37, 36, 42)]), "a re-read compare");
    assert!(key.starts_with("onhand-") && key.len() == 47);
}

#[test]
fn skus_first_marked_at_one_instant_are_taken_in_the_order_they_came() {
    // Under a coarse or paused clock many SKUs share an instant: the first to come is still
    // the oldest, whatever its name.
    let now = tokio::time::Instant::now();
    let mut pending = Pending::default();
    for name in ["C", "A", "B"] {
        pending.mark(sku(name), now);
    }
    let taken: Vec<String> = pending.take(3).into_iter().map(|(s, _)| s.to_string()).collect();
    assert_eq!(taken, ["C", "A", "B"]);
}

/// What the sink may do to its pending set, for the property test below.
#[derive(Debug, Clone)]
enum PendingOp {
    /// Marks SKU `n` at the start plus `at_ms`; times need not grow.
    Mark { n: u16, at_ms: u16 },
    /// Takes a batch and settles some of it: for each taken SKU, `Some(true)` is a push
    /// done with the generation taken, `Some(false)` one done with an older generation,
    /// `None` a push still under way (or failed).
    Flush { count: usize, settle: Vec<Option<bool>> },
}

fn pending_op() -> impl proptest::strategy::Strategy<Value = PendingOp> {
    use proptest::prelude::*;
    prop_oneof![
        3 => (0u16..300, 0u16..50).prop_map(|(n, at_ms)| PendingOp::Mark { n, at_ms }),
        1 => (0usize..60, prop::collection::vec(prop::option::of(any::<bool>()), 0..60))
            .prop_map(|(count, settle)| PendingOp::Flush { count, settle }),
    ]
}

/// The reference: a list in arrival order, scanned and sorted every time.
#[derive(Debug, Default)]
struct PendingModel {
    /// (SKU, first marked, arrival, newest generation)
    items: Vec<(Sku, tokio::time::Instant, u64, u64)>,
    generation: u64,
}

impl PendingModel {
    fn mark(&mut self, sku: Sku, now: tokio::time::Instant) {
        self.generation += 1;
        match self.items.iter_mut().find(|i| i.0 == sku) {
            Some(item) => item.3 = self.generation,
            None => self.items.push((sku, now, self.generation, self.generation)),
        }
    }

    fn oldest(&self) -> Vec<(Sku, u64)> {
        let mut sorted: Vec<_> = self.items.iter().collect();
        sorted.sort_by_key(|i| (i.1, i.2));
        sorted.into_iter().map(|i| (i.0.clone(), i.3)).collect()
    }

    fn done(&mut self, sku: &Sku, generation: u64) {
        self.items.retain(|i| !(&i.0 == sku && i.3 == generation));
    }
}

proptest::proptest! {
    #[test]
    fn pending_behaves_like_a_list_scanned_each_time(ops in proptest::collection::vec(pending_op(), 1..400)) {
        let start = tokio::time::Instant::now();
        let linger = Duration::from_millis(200);
        let mut pending = Pending::default();
        let mut model = PendingModel::default();
        for op in ops {
            match op {
                PendingOp::Mark { n, at_ms } => {
                    let at = start + Duration::from_millis(u64::from(at_ms));
                    pending.mark(sku(&format!("SKU-{n}")), at);
                    model.mark(sku(&format!("SKU-{n}")), at);
                }
                PendingOp::Flush { count, settle } => {
                    let taken = pending.take(count);
                    let expected: Vec<(Sku, u64)> = model.oldest().into_iter().take(count).collect();
                    proptest::prop_assert_eq!(&taken, &expected, "each SKU once, oldest first");
                    for ((sku, generation), settle) in taken.iter().zip(settle) {
                        let generation = match settle {
                            Some(true) => *generation,
                            Some(false) => generation.saturating_sub(1),
                            None => continue,
                        };
                        pending.done(sku, generation);
                        model.done(sku, generation);
                    }
                }
            }
            proptest::prop_assert_eq!(pending.len(), model.items.len());
            proptest::prop_assert_eq!(pending.is_empty(), model.items.is_empty());
            let due = model.items.iter().map(|i| i.1 + linger).min();
            proptest::prop_assert_eq!(pending.due_at(linger), due, "the oldest first mark decides");
            for (sku, ..) in &model.items {
                proptest::prop_assert!(pending.contains(sku));
            }
        }
        proptest::prop_assert_eq!(pending.take(usize::MAX), model.oldest());
    }
}

/// Maps whatever a delivery under `topic` reads as, as the webhook route does.
fn deliver(topic: &str, bytes: &[u8]) {
    match super::source::read_delivery(topic, bytes) {
        Ok(super::source::Delivery::Facts(facts)) => {
            let _ = mapping::lookups(&facts);
            let _ = mapping::resolve(facts, &catalog(), &config(), now());
        }
        Ok(super::source::Delivery::LevelUpdate(update)) => {
            for pushed in [Some(i64::MIN), Some(i64::MAX), Some(0), None] {
                let verdict = mapping::judge_level_update(&update, Some(update.location_id), None, pushed, Some(3));
                if let mapping::Verdict::ManualChange { delta } = verdict {
                    let fact = mapping::level_update_fact(&update, delta);
                    let _ = mapping::resolve(vec![fact], &catalog(), &config(), now());
                }
            }
        }
        _ => {}
    }
}

proptest::proptest! {
    #![proptest_config(onhand_core::fuzzing::config())]

    /// Fuzz harness: every webhook body, under its own topic and under the others, gives
    /// movements, dead letters or an error, never a panic.
    #[test]
    fn webhooks_never_panic(
        order in onhand_core::fuzzing::hostile(ORDERS_CREATE),
        cancelled in onhand_core::fuzzing::hostile(ORDERS_CANCELLED),
        refund in onhand_core::fuzzing::hostile(REFUNDS_CREATE),
        level in onhand_core::fuzzing::hostile(LEVEL_UPDATE),
    ) {
        for topic in ["orders/create", "orders/cancelled", "refunds/create", "inventory_levels/update"] {
            for body in [&order, &cancelled, &refund, &level] {
                deliver(topic, body);
            }
        }
    }

    /// Fuzz harness: a page of the reconciliation's orders query, likewise.
    #[test]
    fn a_graphql_orders_page_never_panics(page in onhand_core::fuzzing::hostile(GRAPHQL_ORDERS)) {
        let Ok(page) = serde_json::from_slice::<Value>(&page) else { return Ok(()) };
        let nodes = page.pointer("/data/orders/nodes").and_then(Value::as_array).cloned().unwrap_or_default();
        for node in nodes {
            if let Ok(order) = serde_json::from_value::<payloads::GqlOrder>(node) {
                if let Ok(order) = order.into_order() {
                    let _ = mapping::resolve(mapping::order_all_facts(&order), &catalog(), &config(), now());
                }
            }
        }
    }
}
