//! Kubernetes resource quantities ("250m", "1.5", "512Mi", "1e3") as exact
//! integers, for the actions that grow them (increase_resources,
//! expand_pvc) and compare them with configured caps.
//!
//! Hand-written rather than a crate: the crates that parse quantities pin a
//! k8s-openapi version of their own, and the grammar is small. Values are
//! held in nano-units in an `i128`, which is exact for every suffix the API
//! server accepts up to `E` (10^18 · 10^9 < 2^127).

use std::str::FromStr;

use serde::Deserialize;

/// A non-negative quantity in nano-units (1 CPU = 10^9, 1 byte = 10^9).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Quantity(i128);

const NANO: i128 = 1_000_000_000;

/// Division rounding up, for the non-negative values held here.
fn ceil_div(a: i128, b: i128) -> i128 {
    a / b + i128::from(a % b != 0)
}

impl Quantity {
    pub fn from_units(units: i128) -> Self {
        Quantity(units.saturating_mul(NANO))
    }

    /// `self` times `factor`, rounded up to a whole millicore (CPU) or a
    /// whole byte; `None` when the factor is not a finite positive number.
    pub fn scaled(self, factor: f64, resource: Resource) -> Option<Quantity> {
        if !factor.is_finite() || factor <= 0.0 {
            return None;
        }
        // Factors are given to a thousandth; the product stays exact.
        let permille = (factor * 1000.0).round() as i128;
        let raw = ceil_div(self.0.checked_mul(permille)?, 1000);
        let step = match resource {
            Resource::Cpu => NANO / 1000,
            Resource::Memory | Resource::Storage => NANO,
        };
        Some(Quantity(ceil_div(raw, step) * step))
    }

    /// The canonical text for `resource`: CPU in cores or millicores,
    /// sizes in the largest binary unit that divides them.
    pub fn render(self, resource: Resource) -> String {
        match resource {
            Resource::Cpu => {
                if self.0 % NANO == 0 {
                    format!("{}", self.0 / NANO)
                } else {
                    format!("{}m", ceil_div(self.0, NANO / 1000))
                }
            }
            Resource::Memory | Resource::Storage => {
                let bytes = ceil_div(self.0, NANO);
                for (suffix, unit) in [("Ti", 1i128 << 40), ("Gi", 1 << 30), ("Mi", 1 << 20)] {
                    if bytes >= unit && bytes % unit == 0 {
                        return format!("{}{suffix}", bytes / unit);
                    }
                }
                bytes.to_string()
            }
        }
    }
}

/// What a quantity measures, for rounding and rendering.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Resource {
    Cpu,
    Memory,
    #[serde(skip)]
    Storage,
}

impl Resource {
    pub fn as_str(self) -> &'static str {
        match self {
            Resource::Cpu => "cpu",
            Resource::Memory => "memory",
            Resource::Storage => "storage",
        }
    }
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a Kubernetes quantity")]
pub struct BadQuantity(String);

impl FromStr for Quantity {
    type Err = BadQuantity;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadQuantity(s.to_string());
        let t = s.trim_start_matches('+');
        let end = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (number, suffix) = t.split_at(end);
        let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
        if whole.is_empty() && frac.is_empty() || frac.len() > 9 {
            return Err(bad());
        }
        let digits: i128 = format!("{whole}{frac}").parse().map_err(|_| bad())?;
        // `digits` · 10^-frac units, as nano-units.
        let mut nanos = digits
            .checked_mul(10i128.pow(9 - u32::try_from(frac.len()).map_err(|_| bad())?))
            .ok_or_else(bad)?;
        let binary = |p: u32| 1024i128.pow(p);
        let (mul, div): (i128, i128) = match suffix {
            "" => (1, 1),
            "n" => (1, NANO),
            "u" => (1, 1_000_000),
            "m" => (1, 1000),
            "k" => (1000, 1),
            "M" => (10i128.pow(6), 1),
            "G" => (10i128.pow(9), 1),
            "T" => (10i128.pow(12), 1),
            "P" => (10i128.pow(15), 1),
            "E" => (10i128.pow(18), 1),
            "Ki" => (binary(1), 1),
            "Mi" => (binary(2), 1),
            "Gi" => (binary(3), 1),
            "Ti" => (binary(4), 1),
            "Pi" => (binary(5), 1),
            "Ei" => (binary(6), 1),
            e if e.starts_with(['e', 'E']) => {
                let exp: i32 = e[1..].parse().map_err(|_| bad())?;
                if exp >= 0 {
                    (10i128.checked_pow(exp.unsigned_abs()).ok_or_else(bad)?, 1)
                } else {
                    (1, 10i128.checked_pow(exp.unsigned_abs()).ok_or_else(bad)?)
                }
            }
            _ => return Err(bad()),
        };
        nanos = nanos.checked_mul(mul).ok_or_else(bad)?;
        // Below a nano-unit rounds up, as the API server rounds.
        Ok(Quantity(ceil_div(nanos, div)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Quantity {
        s.parse().unwrap()
    }

    #[test]
    fn every_suffix_the_api_server_accepts_parses_exactly() {
        assert_eq!(q("250m"), q("0.25"));
        assert_eq!(q("1"), q("1000m"));
        assert_eq!(q("1.5"), q("1500m"));
        assert_eq!(q("1Ki"), Quantity::from_units(1024));
        assert_eq!(q("128Mi"), Quantity::from_units(128 << 20));
        assert_eq!(q("1G"), Quantity::from_units(1_000_000_000));
        assert_eq!(q("1e3"), q("1k"));
        assert_eq!(q("5E-1"), q("500m"));
        assert_eq!(q("1Ei"), Quantity::from_units(1 << 60));
        assert_eq!(q("+2"), q("2"));
        assert_eq!(q(".5"), q("500m"));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for s in [
            "",
            "m",
            "1.2.3",
            "1Qi",
            "-1",
            "1e",
            "1e99",
            "ü",
            "1.0000000001",
            "9".repeat(60).as_str(),
        ] {
            assert!(s.parse::<Quantity>().is_err(), "{s:?}");
        }
    }

    #[test]
    fn scaling_rounds_up_to_what_kubernetes_can_hold() {
        assert_eq!(q("250m").scaled(1.5, Resource::Cpu), Some(q("375m")));
        assert_eq!(q("1m").scaled(1.5, Resource::Cpu), Some(q("2m")));
        assert_eq!(q("128Mi").scaled(2.0, Resource::Memory), Some(q("256Mi")));
        assert_eq!(q("100").scaled(1.005, Resource::Memory), Some(q("101")));
        assert_eq!(q("1").scaled(f64::NAN, Resource::Cpu), None);
        assert_eq!(q("1").scaled(-1.0, Resource::Cpu), None);
    }

    #[test]
    fn rendering_is_canonical() {
        assert_eq!(q("0.375").render(Resource::Cpu), "375m");
        assert_eq!(q("2000m").render(Resource::Cpu), "2");
        assert_eq!(q("1024Mi").render(Resource::Memory), "1Gi");
        assert_eq!(q("1536Mi").render(Resource::Memory), "1536Mi");
        assert_eq!(q("1000").render(Resource::Memory), "1000");
        assert_eq!(q("2Ti").render(Resource::Storage), "2Ti");
    }
}
