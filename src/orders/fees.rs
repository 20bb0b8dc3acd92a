//! Money rules: the service fee and the refund share, from stored figures only.

/// The buyer's service fee: a flat 100 below 1000, else 10 % rounded.
pub fn service_fee(price: f64) -> f64 {
    if price < 1000.0 {
        100.0
    } else {
        (price * 0.1).round()
    }
}

/// What the buyer pays in total.
pub fn total(price: f64, service_fee: f64) -> f64 {
    price + service_fee
}

/// A cancelled paid order refunds 95 % of its price (the fee is kept),
/// rounded to the currency's minor unit.
pub fn refund_amount(price: f64) -> f64 {
    (price * 0.95 * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_fee_below_a_thousand() {
        assert_eq!(service_fee(0.5), 100.0);
        assert_eq!(service_fee(999.99), 100.0);
    }

    #[test]
    fn ten_percent_rounded_from_a_thousand() {
        assert_eq!(service_fee(1000.0), 100.0);
        assert_eq!(service_fee(1234.0), 123.0);
        assert_eq!(service_fee(1235.0), 124.0);
        assert_eq!(service_fee(25_000.0), 2_500.0);
    }

    #[test]
    fn refund_keeps_five_percent() {
        assert_eq!(refund_amount(1000.0), 950.0);
        assert_eq!(refund_amount(333.33), 316.66);
        assert_eq!(total(1000.0, 100.0), 1100.0);
    }
}
