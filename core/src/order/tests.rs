use std::collections::BTreeMap;

use proptest::prelude::*;
use serde_json::{json, Value};

use super::*;

fn channels() -> BTreeMap<String, ChannelConfig> {
    [(
        "web".to_string(),
        ChannelConfig {
            all_locations: false,
            locations: vec!["store-001".into(), "dc-01".into()],
            ..ChannelConfig::default()
        },
    )]
    .into()
}

fn order() -> Value {
    json!({
        "channel": "web",
        "customer": "cust-4821",
        "lines": [{"sku": "SKU-1", "quantity": 2}, {"sku": "SKU-2", "quantity": 1, "in_cart": false}],
        "payment": {"method": "card", "token": "tok_1N3fKp2eZvKYlo2C"},
        "delivery": {"method": "standard", "address": {
            "line1": "Av. Paulista, 1000", "city": "São Paulo", "postal_code": "01310-100", "country": "BR"}}
    })
}

fn check(body: Value) -> Result<OrderRequest, Vec<FieldError>> {
    let raw: RawOrder = serde_json::from_value(body).expect("the shape is right");
    OrderRequest::check(raw, &channels())
}

fn fields(body: Value) -> Vec<(String, &'static str)> {
    check(body).unwrap_err().into_iter().map(|e| (e.field, e.code)).collect()
}

#[test]
fn a_good_order_is_read_whole() {
    let order = check(order()).unwrap();
    assert_eq!(order.lines.len(), 2);
    assert!(order.lines[0].in_cart && !order.lines[1].in_cart, "in_cart defaults to true");
    assert_eq!(order.payment.method, PaymentMethod::Card);
    assert_eq!(order.delivery.address.unwrap().postal_code, "01310-100");
}

#[test]
fn every_wrong_field_is_told_at_once_by_its_path() {
    let mut body = order();
    body["channel"] = json!("fax");
    body["customer"] = json!("");
    body["lines"] =
        json!([{"sku": "", "quantity": 1}, {"sku": "SKU-1", "quantity": 0}, {"sku": "SKU-1", "quantity": 1}]);
    body["payment"] = json!({"method": "cash", "token": "x"});
    body["delivery"]["address"]["postal_code"] = json!("0");
    body["delivery"]["address"]["country"] = json!("Brazil");
    assert_eq!(
        fields(body),
        [
            ("channel".to_string(), "unknown_channel"),
            ("customer".into(), "invalid_field"),
            ("lines[0].sku".into(), "invalid_sku"),
            ("lines[1].quantity".into(), "invalid_quantity"),
            ("lines[2].sku".into(), "duplicate_sku"),
            ("payment.method".into(), "invalid_payment"),
            ("payment.token".into(), "invalid_payment"),
            ("delivery.address.postal_code".into(), "invalid_postal_code"),
            ("delivery.address.country".into(), "invalid_country"),
        ]
    );
}

#[test]
fn a_card_number_is_refused_as_card_data_and_never_kept() {
    for pan in ["4111111111111111", "4111 1111 1111 1111", "5500-0000-0000-0004", "378282246310005"] {
        let mut body = order();
        body["payment"]["token"] = json!(pan);
        assert_eq!(fields(body), [("payment.token".to_string(), "card_data_refused")], "{pan}");
    }
    // Digits that fail the Luhn check, or are too short for a card, are a token like any.
    assert!(!looks_like_card_number("4111111111111112"));
    assert!(!looks_like_card_number("123456789012"));
    assert!(!looks_like_card_number("tok_4111111111111111"));
}

#[test]
fn a_pickup_names_a_store_of_the_channel_and_a_delivery_an_address() {
    let mut pickup = order();
    pickup["delivery"] = json!({"method": "pickup", "store": "store-001"});
    let order_ok = check(pickup.clone()).unwrap();
    assert_eq!(order_ok.delivery.store.unwrap().as_str(), "store-001");
    pickup["delivery"]["store"] = json!("store-999");
    assert_eq!(fields(pickup.clone()), [("delivery.store".to_string(), "invalid_delivery")]);
    pickup["delivery"] = json!({"method": "pickup"});
    assert_eq!(fields(pickup), [("delivery.store".to_string(), "invalid_delivery")]);

    let mut standard = order();
    standard["delivery"] = json!({"method": "standard", "store": "store-001"});
    assert_eq!(
        fields(standard),
        [("delivery.store".to_string(), "invalid_delivery"), ("delivery.address".into(), "invalid_delivery")]
    );
    let mut drone = order();
    drone["delivery"]["method"] = json!("drone");
    assert_eq!(fields(drone), [("delivery.method".to_string(), "invalid_delivery")]);
}

#[test]
fn lines_are_bounded() {
    let mut none = order();
    none["lines"] = json!([]);
    assert_eq!(fields(none), [("lines".to_string(), "invalid_lines")]);
    let mut many = order();
    many["lines"] = (0..=LINES_MAX).map(|i| json!({"sku": format!("SKU-{i}"), "quantity": 1})).collect();
    assert_eq!(fields(many), [("lines".to_string(), "invalid_lines")]);
    let mut huge = order();
    huge["lines"][0]["quantity"] = json!(i64::MAX);
    assert_eq!(fields(huge), [("lines[0].quantity".to_string(), "invalid_quantity")]);
}

proptest! {
    #![proptest_config(crate::fuzzing::config())]

    /// Whatever the texts, checking answers an order or field errors, and never panics.
    #[test]
    fn hostile_texts_give_an_answer(text in any::<String>(), quantity in any::<i64>()) {
        let mut body = order();
        body["customer"] = json!(text);
        body["lines"][0]["sku"] = json!(text);
        body["lines"][0]["quantity"] = json!(quantity);
        body["payment"]["token"] = json!(text);
        body["delivery"]["address"]["postal_code"] = json!(text);
        body["delivery"]["address"]["city"] = json!(text);
        let _ = check(body);
    }
}

#[test]
fn the_configuration_names_the_payment_methods_orders_name() {
    let named: Vec<&str> = PaymentMethod::ALL.iter().map(|m| m.as_str()).collect();
    assert_eq!(named, crate::config::PAYMENT_METHODS);
}
