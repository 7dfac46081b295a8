//! Where an order is fulfilled from and when it is delivered, from the configuration's
//! regions and calendars (pure).
//!
//! An order is fulfilled from one location: every line reserved there, so it leaves in one
//! parcel. The candidates are the pickup store alone for a pickup; otherwise the locations
//! of the region whose postal-code prefix matches the address longest, in the region's
//! order, then every other location of the channel; only locations with a calendar
//! offering the method count. The delivery is the first slot, from the method's lead days
//! on, of a day the location dispatches whose booked orders are below the slot's capacity.

use std::collections::BTreeMap;

use chrono::{Datelike, NaiveDate, Weekday};

use super::{Delivery, DeliveryMethod};
use crate::{
    config::{CalendarConfig, ChannelConfig, OrdersConfig},
    event::LocationId,
};

/// A location's calendar, checked: the days it dispatches, its slots, and by method the
/// orders a slot takes and the days before the first one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Calendar {
    days: Vec<Weekday>,
    slots: Vec<String>,
    capacity: BTreeMap<DeliveryMethod, u32>,
    lead_days: BTreeMap<DeliveryMethod, u32>,
}

impl Calendar {
    /// Reads a `[orders.calendars.LOCATION]` section, or says what is wrong with it.
    pub fn parse(config: &CalendarConfig) -> Result<Calendar, String> {
        let days = config
            .days
            .iter()
            .map(|d| d.parse::<Weekday>().map_err(|_| format!("{d:?} is not a day (mon to sun)")))
            .collect::<Result<Vec<_>, _>>()?;
        if config.slots.is_empty() || config.slots.iter().any(|s| s.trim().is_empty() || s.len() > 32) {
            return Err("slots: one or more names of 1 to 32 characters".into());
        }
        let by_method = |map: &BTreeMap<String, u32>, what: &str| {
            map.iter()
                .map(|(name, n)| {
                    DeliveryMethod::parse(name)
                        .map(|m| (m, *n))
                        .ok_or_else(|| format!("{what}: {name:?} is not a method (standard, express, pickup)"))
                })
                .collect::<Result<BTreeMap<_, _>, _>>()
        };
        let capacity = by_method(&config.capacity, "capacity")?;
        let lead_days = by_method(&config.lead_days, "lead_days")?;
        Ok(Calendar { days, slots: config.slots.clone(), capacity, lead_days })
    }

    /// How many orders of `method` each slot takes (0: not offered).
    pub fn capacity(&self, method: DeliveryMethod) -> u32 {
        self.capacity.get(&method).copied().unwrap_or(0)
    }

    fn offers(&self, method: DeliveryMethod) -> bool {
        self.capacity.get(&method).is_some_and(|&n| n > 0) && !self.days.is_empty()
    }
}

/// The calendars of every location, checked once, when the order workers start.
pub fn calendars(config: &OrdersConfig) -> Result<BTreeMap<LocationId, Calendar>, String> {
    config
        .calendars
        .iter()
        .map(|(location, calendar)| {
            let id = LocationId::parse(location.clone())
                .map_err(|e| format!("orders.calendars.{location}: {}", e.message))?;
            let calendar = Calendar::parse(calendar).map_err(|e| format!("orders.calendars.{location}: {e}"))?;
            Ok((id, calendar))
        })
        .collect()
}

/// The locations an order may be fulfilled from, best first, among `known` (the locations
/// holding stock of its SKUs).
pub fn candidates(
    delivery: &Delivery,
    channel: &ChannelConfig,
    regions: &BTreeMap<String, Vec<String>>,
    calendars: &BTreeMap<LocationId, Calendar>,
    known: &[LocationId],
) -> Vec<LocationId> {
    let usable =
        |l: &LocationId| channel.serves(l.as_str()) && calendars.get(l).is_some_and(|c| c.offers(delivery.method));
    if let Some(store) = &delivery.store {
        return usable(store).then(|| store.clone()).into_iter().collect();
    }
    let postal: String = delivery
        .address
        .as_ref()
        .map(|a| a.postal_code.chars().filter(char::is_ascii_alphanumeric).collect())
        .unwrap_or_default();
    let significant =
        |prefix: &str| prefix.chars().filter(char::is_ascii_alphanumeric).collect::<String>().to_ascii_uppercase();
    let region = regions
        .iter()
        .map(|(prefix, locations)| (significant(prefix), locations))
        .filter(|(prefix, _)| postal.starts_with(prefix.as_str()))
        .max_by_key(|(prefix, _)| prefix.len())
        .map(|(_, locations)| locations.as_slice())
        .unwrap_or_default();
    let mut ordered: Vec<LocationId> = Vec::new();
    for location in region.iter().filter_map(|l| known.iter().find(|k| k.as_str() == l)) {
        if usable(location) && !ordered.contains(location) {
            ordered.push(location.clone());
        }
    }
    let mut rest: Vec<&LocationId> = known.iter().filter(|l| usable(l) && !ordered.contains(l)).collect();
    rest.sort();
    rest.dedup();
    ordered.extend(rest.into_iter().cloned());
    ordered
}

/// A promised delivery: the day and the slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub date: NaiveDate,
    pub slot: String,
}

/// The first slot with room for one more order of `method`, from `today` plus the method's
/// lead days up to `today + horizon_days`; `booked(date, slot)` says how many orders of the
/// method it has already. `None`: the calendar is full (`no_delivery_capacity`).
pub fn first_slot(
    calendar: &Calendar,
    method: DeliveryMethod,
    today: NaiveDate,
    horizon_days: u32,
    booked: impl Fn(NaiveDate, &str) -> u32,
) -> Option<Slot> {
    let capacity = *calendar.capacity.get(&method)?;
    let lead = calendar.lead_days.get(&method).copied().unwrap_or(0);
    (lead..=horizon_days)
        .filter_map(|offset| today.checked_add_days(chrono::Days::new(u64::from(offset))))
        .filter(|date| calendar.days.contains(&date.weekday()))
        .find_map(|date| {
            let slot = calendar.slots.iter().find(|slot| booked(date, slot) < capacity)?;
            Some(Slot { date, slot: slot.clone() })
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::order::Address;

    fn calendar(days: &[&str], capacity: &[(&str, u32)], lead: &[(&str, u32)]) -> Calendar {
        let map = |pairs: &[(&str, u32)]| pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        Calendar::parse(&CalendarConfig {
            days: days.iter().map(|d| d.to_string()).collect(),
            slots: vec!["09-13".into(), "13-18".into()],
            capacity: map(capacity),
            lead_days: map(lead),
        })
        .unwrap()
    }

    fn loc(id: &str) -> LocationId {
        LocationId::parse(id).unwrap()
    }

    fn delivery(method: DeliveryMethod, postal_code: &str, store: Option<&str>) -> Delivery {
        let address = (method != DeliveryMethod::Pickup).then(|| Address {
            line1: "Rua A, 1".into(),
            line2: None,
            city: "São Paulo".into(),
            postal_code: postal_code.into(),
            country: "BR".into(),
        });
        Delivery { method, address, store: store.map(loc) }
    }

    // 2026-12-04 is a Friday.
    fn friday() -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 12, 4).unwrap()
    }

    #[test]
    fn a_bad_calendar_is_refused_with_the_reason() {
        let mut config = CalendarConfig {
            days: vec!["mon".into(), "funday".into()],
            slots: vec!["am".into()],
            ..Default::default()
        };
        assert!(Calendar::parse(&config).unwrap_err().contains("funday"));
        config.days = vec!["mon".into()];
        config.capacity = [("drone".to_string(), 3)].into();
        assert!(Calendar::parse(&config).unwrap_err().contains("drone"));
        config.capacity = BTreeMap::new();
        config.slots = Vec::new();
        assert!(Calendar::parse(&config).unwrap_err().contains("slots"));
    }

    #[test]
    fn the_first_slot_with_room_after_the_lead_days_on_a_dispatch_day_is_promised() {
        let weekdays =
            calendar(&["mon", "tue", "wed", "thu", "fri"], &[("standard", 2), ("express", 1)], &[("standard", 1)]);
        let none = |_: NaiveDate, _: &str| 0;
        // Standard: a day's lead from Friday is Saturday, not a dispatch day: Monday.
        let slot = first_slot(&weekdays, DeliveryMethod::Standard, friday(), 14, none).unwrap();
        assert_eq!((slot.date, slot.slot.as_str()), (NaiveDate::from_ymd_opt(2026, 12, 7).unwrap(), "09-13"));
        // Express has no lead: today.
        assert_eq!(first_slot(&weekdays, DeliveryMethod::Express, friday(), 14, none).unwrap().date, friday());
        // A full first slot gives the next one, a full day the next day.
        let monday = NaiveDate::from_ymd_opt(2026, 12, 7).unwrap();
        let morning_full = |d: NaiveDate, s: &str| if d == monday && s == "09-13" { 2 } else { 0 };
        assert_eq!(first_slot(&weekdays, DeliveryMethod::Standard, friday(), 14, morning_full).unwrap().slot, "13-18");
        let monday_full = |d: NaiveDate, _: &str| if d == monday { 2 } else { 0 };
        let slot = first_slot(&weekdays, DeliveryMethod::Standard, friday(), 14, monday_full).unwrap();
        assert_eq!(slot.date, NaiveDate::from_ymd_opt(2026, 12, 8).unwrap());
        // Pickup is not offered here at all.
        assert_eq!(first_slot(&weekdays, DeliveryMethod::Pickup, friday(), 14, none), None);
    }

    #[test]
    fn a_calendar_full_up_to_the_horizon_has_no_slot() {
        let every_day = calendar(&["mon", "tue", "wed", "thu", "fri", "sat", "sun"], &[("standard", 1)], &[]);
        let full = |_: NaiveDate, _: &str| 1;
        assert_eq!(first_slot(&every_day, DeliveryMethod::Standard, friday(), 14, full), None);
        // The horizon counts: a slot free only beyond it is not promised.
        let far = friday().checked_add_days(chrono::Days::new(15)).unwrap();
        let free_far = |d: NaiveDate, _: &str| u32::from(d != far);
        assert_eq!(first_slot(&every_day, DeliveryMethod::Standard, friday(), 14, free_far), None);
        assert_eq!(first_slot(&every_day, DeliveryMethod::Standard, friday(), 15, free_far).unwrap().date, far);
        // A date at the end of the calendar's range does not overflow.
        assert_eq!(first_slot(&every_day, DeliveryMethod::Standard, NaiveDate::MAX, 14, full), None);
    }

    #[test]
    fn candidates_are_the_region_s_locations_first_then_the_channel_s_others() {
        let all = ChannelConfig { all_locations: true, locations: Vec::new(), ..ChannelConfig::default() };
        let calendars: BTreeMap<LocationId, Calendar> = ["dc-01", "store-001", "store-002", "store-003"]
            .into_iter()
            .map(|l| (loc(l), calendar(&["mon", "fri"], &[("standard", 5), ("pickup", 5)], &[])))
            .collect();
        let regions: BTreeMap<String, Vec<String>> = [
            ("0".to_string(), vec!["dc-01".to_string()]),
            ("013".to_string(), vec!["store-002".to_string(), "store-001".to_string()]),
        ]
        .into();
        let known = [loc("store-003"), loc("store-001"), loc("dc-01"), loc("store-002"), loc("store-404")];
        let order = |d: &Delivery| candidates(d, &all, &regions, &calendars, &known);
        // The longest prefix wins; store-404 has no calendar and is never chosen.
        let paulista = delivery(DeliveryMethod::Standard, "01310-100", None);
        assert_eq!(order(&paulista), [loc("store-002"), loc("store-001"), loc("dc-01"), loc("store-003")]);
        let elsewhere = delivery(DeliveryMethod::Standard, "02000-000", None);
        assert_eq!(order(&elsewhere), [loc("dc-01"), loc("store-001"), loc("store-002"), loc("store-003")]);
        // Express is offered nowhere.
        assert!(order(&delivery(DeliveryMethod::Express, "01310-100", None)).is_empty());
        // A pickup is its store or nothing.
        assert_eq!(order(&delivery(DeliveryMethod::Pickup, "", Some("store-003"))), [loc("store-003")]);
        assert!(order(&delivery(DeliveryMethod::Pickup, "", Some("store-404"))).is_empty());
        // A channel's own locations only.
        let two = ChannelConfig {
            all_locations: false,
            locations: vec!["store-001".into(), "dc-01".into()],
            ..ChannelConfig::default()
        };
        assert_eq!(candidates(&paulista, &two, &regions, &calendars, &known), [loc("store-001"), loc("dc-01")]);
    }
}
