//! [`Span`]: a duration as operators write it in flags, environment
//! variables and config files (`5s`, `250ms`, `2m`, `1h`; a bare number is
//! seconds).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Span(pub Duration);

impl FromStr for Span {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let trimmed = text.trim();
        let split = trimmed
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(trimmed.len());
        let (number, unit) = trimmed.split_at(split);
        let scale = match unit.trim() {
            "" | "s" => 1.0,
            "ms" => 1e-3,
            "m" | "min" => 60.0,
            "h" => 3600.0,
            _ => f64::NAN,
        };
        let seconds = number.parse::<f64>().map(|n| n * scale);
        match seconds {
            Ok(s) if s.is_finite() && (0.0..=86_400.0 * 365.0).contains(&s) => {
                Ok(Span(Duration::from_secs_f64(s)))
            }
            _ => Err(format!(
                "{text:?} is not a duration (try 5s, 250ms, 2m or 1h; at most a year)"
            )),
        }
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Span {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Written {
            Seconds(u64),
            Text(String),
        }
        match Written::deserialize(d)? {
            Written::Seconds(s) => Ok(Span(Duration::from_secs(s))),
            Written::Text(text) => text.parse().map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_operators_write() {
        let ms = Duration::from_millis;
        for (text, want) in [
            ("5s", ms(5000)),
            ("5", ms(5000)),
            ("250ms", ms(250)),
            ("1.5s", ms(1500)),
            ("2m", ms(120_000)),
            ("1h", ms(3_600_000)),
            (" 3 s ", ms(3000)),
        ] {
            assert_eq!(text.parse::<Span>(), Ok(Span(want)), "{text}");
        }
        for bad in ["", "s", "5x", "-1s", "1e400", "10000000h", "five"] {
            let err = bad.parse::<Span>().unwrap_err();
            assert!(err.contains("not a duration"), "{bad}: {err}");
        }
    }
}
