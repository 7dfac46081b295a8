//! `onhand products import FILE`: loads a product catalog from CSV or NDJSON.
//!
//! A file is checked whole before anything is written: any bad line, and nothing is
//! imported; the report names every bad line. CSV needs the columns `sku` and `name`;
//! `category` is optional, and every other column becomes an attribute (empty cells are
//! left out). NDJSON has one `{"sku", "name", "category"?, "attributes"?}` per line.

use std::{collections::BTreeMap, fs::File, io::BufRead, path::Path};

use onhand_core::{
    db::{Catalog, DbError},
    event::Sku,
    product::{Product, ProductInput},
};
use serde::Deserialize;

/// Products written per transaction.
const CHUNK_PRODUCTS: usize = 1_000;
/// Bad lines listed in one report; a file with more is surely the wrong file.
const ERRORS_SHOWN_MAX: usize = 100;

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("cannot read {0}: {1}")]
    Read(String, std::io::Error),
    #[error("{0}: unknown format, name the file .csv, .ndjson or .jsonl")]
    UnknownFormat(String),
    #[error("{0}: the CSV header needs the columns sku and name")]
    MissingColumns(String),
    #[error("nothing imported, {} bad line(s):\n{}", .0.len(), .0.iter().take(ERRORS_SHOWN_MAX).map(|(line, e)| format!("  line {line}: {e}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<(u64, String)>),
    #[error("database: {0}")]
    Db(#[from] DbError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImportReport {
    pub products: usize,
    pub created: u64,
}

/// Reads and checks the whole file, then writes it.
pub async fn import(path: &Path, db: &dyn Catalog) -> Result<ImportReport, ImportError> {
    let products = read(path)?;
    let mut created = 0;
    for chunk in products.chunks(CHUNK_PRODUCTS) {
        created += db.put_products(chunk).await?;
    }
    Ok(ImportReport { products: products.len(), created })
}

fn read(path: &Path) -> Result<Vec<Product>, ImportError> {
    let name = path.display().to_string();
    let file = File::open(path).map_err(|e| ImportError::Read(name.clone(), e))?;
    let rows = match path.extension().and_then(|e| e.to_str()) {
        Some("csv") => read_csv(file, &name)?,
        Some("ndjson" | "jsonl") => read_ndjson(file, &name)?,
        _ => return Err(ImportError::UnknownFormat(name)),
    };
    let mut products = Vec::with_capacity(rows.len());
    let mut errors = Vec::new();
    for (line, row) in rows {
        match row.and_then(|(sku, input)| {
            let sku = Sku::parse(sku).map_err(|e| e.message)?;
            Product::parse(sku, input)
        }) {
            Ok(product) => products.push(product),
            Err(e) => errors.push((line, e)),
        }
    }
    if errors.is_empty() {
        Ok(products)
    } else {
        Err(ImportError::Invalid(errors))
    }
}

type Row = (u64, Result<(String, ProductInput), String>);

fn read_csv(file: File, name: &str) -> Result<Vec<Row>, ImportError> {
    let mut reader = csv::ReaderBuilder::new().flexible(false).from_reader(file);
    let headers = reader.headers().map_err(|e| ImportError::Read(name.to_string(), e.into()))?.clone();
    let column = |wanted: &str| headers.iter().position(|h| h.trim() == wanted);
    let (Some(sku), Some(product_name)) = (column("sku"), column("name")) else {
        return Err(ImportError::MissingColumns(name.to_string()));
    };
    let category = column("category");
    let mut rows = Vec::new();
    for (i, record) in reader.records().enumerate() {
        // Line 1 is the header.
        let line = record.as_ref().ok().and_then(|r| r.position()).map_or(i as u64 + 2, |p| p.line());
        let row = record.map_err(|e| e.to_string()).map(|record| {
            let field = |i: usize| record.get(i).unwrap_or_default().trim().to_string();
            let attributes: BTreeMap<String, String> = headers
                .iter()
                .enumerate()
                .filter(|(i, _)| ![Some(sku), Some(product_name), category].contains(&Some(*i)))
                .map(|(i, header)| (header.trim().to_string(), field(i)))
                .filter(|(_, value)| !value.is_empty())
                .collect();
            let input = ProductInput {
                name: field(product_name),
                category: category.map(field).filter(|c| !c.is_empty()),
                attributes,
            };
            (field(sku), input)
        });
        rows.push((line, row));
    }
    Ok(rows)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NdjsonProduct {
    sku: String,
    #[serde(flatten)]
    input: ProductInput,
}

fn read_ndjson(file: File, name: &str) -> Result<Vec<Row>, ImportError> {
    let mut rows = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| ImportError::Read(name.to_string(), e))?;
        if line.trim().is_empty() {
            continue;
        }
        let row = serde_json::from_str::<NdjsonProduct>(&line).map(|p| (p.sku, p.input)).map_err(|e| e.to_string());
        rows.push((i as u64 + 1, row));
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn file(name: &str, text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::File::create(&path).unwrap().write_all(text.as_bytes()).unwrap();
        (dir, path)
    }

    #[test]
    fn csv_columns_become_fields_and_attributes() {
        let (_dir, path) = file("p.csv", "sku,name,category,brand,size\n01,Arroz,grocery,Tio João,5 kg\n02,Sal,,,\n");
        let products = read(&path).unwrap();
        assert_eq!(products[0].name, "Arroz");
        assert_eq!(products[0].attributes.get("brand").map(String::as_str), Some("Tio João"));
        assert_eq!(products[1].category, None);
        assert!(products[1].attributes.is_empty());
    }

    #[test]
    fn every_bad_line_is_reported_and_nothing_is_kept() {
        let (_dir, path) = file("p.csv", "sku,name\n01,Arroz\nbad sku,Sal\n03,\n");
        let ImportError::Invalid(errors) = read(&path).unwrap_err() else { panic!("invalid lines expected") };
        let lines: Vec<u64> = errors.iter().map(|(line, _)| *line).collect();
        assert_eq!(lines, [3, 4]);
        let (_dir, path) = file("p.ndjson", "{\"sku\":\"01\",\"name\":\"Arroz\"}\n\n{\"sku\":\"02\"}\n");
        let ImportError::Invalid(errors) = read(&path).unwrap_err() else { panic!("invalid lines expected") };
        assert_eq!(errors[0].0, 3);
        let (_dir, path) = file("p.csv", "code,name\n01,Arroz\n");
        assert!(matches!(read(&path), Err(ImportError::MissingColumns(_))));
        let (_dir, path) = file("p.xlsx", "");
        assert!(matches!(read(&path), Err(ImportError::UnknownFormat(_))));
    }
}
