//! Numerically stable scalar functions the preference losses share.

/// `log sigmoid(x)`, stable for large |x|.
pub fn log_sigmoid(x: f64) -> f64 {
    if x < 0.0 {
        x - x.exp().ln_1p()
    } else {
        -(-x).exp().ln_1p()
    }
}

pub fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// `log(1 - exp(x))` for `x < 0`, switching form at `-ln 2` to avoid cancellation (TRL's
/// `log1mexp`).
pub fn log1mexp(x: f64) -> f64 {
    if x < -std::f64::consts::LN_2 {
        (-x.exp()).ln_1p()
    } else {
        (-x.exp_m1()).ln()
    }
}
