//! The product catalog's one type: a product as the API and the importer accept it,
//! checked once at the edge like a movement.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::event::Sku;

const NAME_LEN_MAX: usize = 200;
const CATEGORY_LEN_MAX: usize = 100;
const ATTRIBUTES_MAX: usize = 32;
const ATTRIBUTE_LEN_MAX: usize = 256;

/// A product as sent to onhand: everything but its SKU, which the URL or file carries.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProductInput {
    pub name: String,
    #[serde(default)]
    pub category: Option<String>,
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
}

/// A valid product.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Product {
    pub sku: Sku,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    pub attributes: BTreeMap<String, String>,
}

/// A product as stored, with when it last changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct StoredProduct {
    #[serde(flatten)]
    pub product: Product,
    pub updated_at: DateTime<Utc>,
}

impl Product {
    /// Checks a product; the message says which field is wrong and why.
    pub fn parse(sku: Sku, input: ProductInput) -> Result<Self, String> {
        let length = |what: &str, value: &str, max: usize| {
            let n = value.chars().count();
            if n == 0 || n > max {
                return Err(format!("{what} must be 1 to {max} characters"));
            }
            Ok(())
        };
        length("name", &input.name, NAME_LEN_MAX)?;
        if let Some(category) = &input.category {
            length("category", category, CATEGORY_LEN_MAX)?;
        }
        if input.attributes.len() > ATTRIBUTES_MAX {
            return Err(format!("at most {ATTRIBUTES_MAX} attributes are accepted"));
        }
        for (key, value) in &input.attributes {
            length("an attribute name", key, 64)?;
            if value.chars().count() > ATTRIBUTE_LEN_MAX {
                return Err(format!("attribute {key:?} is longer than {ATTRIBUTE_LEN_MAX} characters"));
            }
        }
        Ok(Product { sku, name: input.name, category: input.category, attributes: input.attributes })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(name: &str) -> ProductInput {
        ProductInput { name: name.into(), category: Some("grocery".into()), attributes: BTreeMap::new() }
    }

    #[test]
    fn a_product_is_checked_field_by_field() {
        let sku = Sku::parse("01").unwrap();
        assert!(Product::parse(sku.clone(), input("Arroz")).is_ok());
        assert_eq!(Product::parse(sku.clone(), input("")).unwrap_err(), "name must be 1 to 200 characters");
        let mut many = input("Arroz");
        many.attributes = (0..33).map(|i| (format!("k{i}"), "v".into())).collect();
        assert_eq!(Product::parse(sku.clone(), many).unwrap_err(), "at most 32 attributes are accepted");
        let mut empty_category = input("Arroz");
        empty_category.category = Some(String::new());
        assert!(Product::parse(sku, empty_category).unwrap_err().starts_with("category"));
    }
}
