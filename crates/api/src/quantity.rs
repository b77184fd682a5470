//! Kubernetes resource quantities (`100m`, `1.5`, `512Mi`, `2G`, `1e3`) as integers.
//!
//! The scheduler (and the API server's QoS class) only compares and adds quantities, so each is read once into an integer:
//! thousandths of the unit (`milli`) for CPU, whole units (rounded up, as Kubernetes'
//! `Value()` does) for everything else.

/// A quantity in thousandths of its unit, or `None` when it is not a valid quantity.
pub fn parse_milli(s: &str) -> Option<i128> {
    let s = s.trim();
    let (sign, body) = match s.strip_prefix('-') {
        Some(rest) => (-1, rest),
        None => (1, s.strip_prefix('+').unwrap_or(s)),
    };
    let digits_end = body.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(body.len());
    let (number, suffix) = body.split_at(digits_end);
    let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
    if (whole.is_empty() && frac.is_empty()) || frac.contains('.') || whole.len() + frac.len() > 30 {
        return None;
    }
    // The number as an integer scaled by 10^-frac.len().
    let mantissa: i128 = format!("{whole}{frac}").parse().ok()?;
    let (base, exp): (i128, i32) = match suffix {
        "" => (1, 0),
        "n" => (1, -9),
        "u" => (1, -6),
        "m" => (1, -3),
        "k" => (1, 3),
        "M" => (1, 6),
        "G" => (1, 9),
        "T" => (1, 12),
        "P" => (1, 15),
        "E" => (1, 18),
        "Ki" => (1 << 10, 0),
        "Mi" => (1 << 20, 0),
        "Gi" => (1 << 30, 0),
        "Ti" => (1 << 40, 0),
        "Pi" => (1 << 50, 0),
        "Ei" => (1 << 60, 0),
        e if e.starts_with(['e', 'E']) => (1, e[1..].parse().ok().filter(|x: &i32| x.abs() <= 18)?),
        _ => return None,
    };
    // value * 1000 = mantissa * base * 10^(exp + 3 - frac.len()), rounded up.
    let scale = exp + 3 - frac.len() as i32;
    let product = mantissa.checked_mul(base)?;
    let milli = if scale >= 0 {
        product.checked_mul(10i128.checked_pow(scale as u32)?)?
    } else {
        let div = 10i128.checked_pow((-scale) as u32)?;
        (product + div - 1) / div
    };
    Some(sign * milli)
}

/// CPU in millicores.
pub fn cpu_milli(s: &str) -> Option<i64> {
    parse_milli(s).and_then(|m| i64::try_from(m).ok())
}

/// Any other resource in whole units, rounded up.
pub fn units(s: &str) -> Option<i64> {
    parse_milli(s).map(|m| if m >= 0 { (m + 999) / 1000 } else { m / 1000 }).and_then(|v| i64::try_from(v).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_read_as_kubernetes_does() {
        let cases = [
            ("100m", Some(100)),
            ("1", Some(1000)),
            ("0.5", Some(500)),
            ("1.5", Some(1500)),
            (".25", Some(250)),
            ("1k", Some(1_000_000)),
            ("1Ki", Some(1_024_000)),
            ("512Mi", Some(536_870_912_000)),
            ("1e3", Some(1_000_000)),
            ("2E", Some(2_000_000_000_000_000_000_000)),
            ("1n", Some(1)), // rounded up
            ("-1", Some(-1000)),
            ("", None),
            ("abc", None),
            ("1.2.3", None),
            ("1Xi", None),
            (".", None),
        ];
        for (input, want) in cases {
            assert_eq!(parse_milli(input), want, "{input:?}");
        }
        assert_eq!(cpu_milli("250m"), Some(250));
        assert_eq!(units("1Gi"), Some(1 << 30));
        assert_eq!(units("1500m"), Some(2));
    }
}
