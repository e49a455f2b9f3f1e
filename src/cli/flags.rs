//! Checks of numeric command-line values, run by clap while parsing: a bad value exits 2 with
//! clap's message naming the flag, before anything is loaded.

/// An integer of at least 1 (`--seq-len`, `--batch-size`, ...).
pub fn positive(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        Ok(_) => Err("must be at least 1".into()),
        Err(e) => Err(format!("not a whole number: {e}")),
    }
}

/// A finite number of at least 0 (`--temperature`).
pub fn non_negative(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(x) if x.is_finite() && x >= 0.0 => Ok(x),
        Ok(_) => Err("must be a finite number of at least 0".into()),
        Err(e) => Err(format!("not a number: {e}")),
    }
}

/// A probability mass in (0, 1] (`--top-p`).
pub fn mass(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(x) if x > 0.0 && x <= 1.0 => Ok(x),
        Ok(_) => Err("must be in (0, 1]".into()),
        Err(e) => Err(format!("not a number: {e}")),
    }
}

/// A probability in [0, 1) (`--dropout`).
pub fn probability(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(x) if (0.0..1.0).contains(&x) => Ok(x),
        Ok(_) => Err("must be in [0, 1)".into()),
        Err(e) => Err(format!("not a number: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(positive("3"), Ok(3));
        assert!(positive("0").is_err() && positive("-1").is_err() && positive("x").is_err());
        assert_eq!(non_negative("0"), Ok(0.0));
        assert!(non_negative("-0.5").is_err() && non_negative("inf").is_err());
        assert!(mass("0").is_err() && mass("1.5").is_err() && mass("1") == Ok(1.0));
        assert!(probability("1").is_err() && probability("0.05") == Ok(0.05));
    }
}
