//! Per-stage schedules of sampling settings, as the official code and its README write them: a
//! constant (`3.5`), a range (`1-3.5`) or an explicit list (`1,1.2,1.5,...`).

use anyhow::{Result, bail};

/// A per-stage value schedule.
#[derive(Debug, Clone, PartialEq)]
pub enum Schedule {
    Constant(f32),
    /// From the first stage's value to the last stage's.
    Range(f32, f32),
    List(Vec<f32>),
}

impl Schedule {
    /// Parses `3.5`, `1-3.5` or `1,1.2,1.4`.
    pub fn parse(text: &str) -> Result<Schedule> {
        let t = text.trim();
        let num = |s: &str| -> Result<f32> {
            let v: f32 = s
                .trim()
                .parse()
                .map_err(|_| anyhow::anyhow!("`{s}` in schedule `{text}` is not a number"))?;
            if !v.is_finite() {
                bail!("`{s}` in schedule `{text}` is not finite");
            }
            Ok(v)
        };
        if t.contains(',') {
            return Ok(Schedule::List(t.split(',').map(num).collect::<Result<_>>()?));
        }
        // A range `a-b`: the separator is a '-' that does not start the string or follow an exponent.
        let bytes = t.as_bytes();
        let sep = (1..bytes.len()).find(|&i| bytes[i] == b'-' && !matches!(bytes[i - 1], b'e' | b'E'));
        match sep {
            Some(i) => Ok(Schedule::Range(num(&t[..i])?, num(&t[i + 1..])?)),
            None => Ok(Schedule::Constant(num(t)?)),
        }
    }

    fn explicit(&self, n: usize) -> Result<Option<Vec<f32>>> {
        match self {
            Schedule::Constant(v) => Ok(Some(vec![*v; n])),
            Schedule::List(v) if v.len() == n => Ok(Some(v.clone())),
            Schedule::List(v) => bail!("schedule lists {} values, the model has {n} stages", v.len()),
            Schedule::Range(..) => Ok(None),
        }
    }

    /// Values for `n` stages; a range is spaced linearly (`torch.linspace` in f32), as the official CFG
    /// schedules are.
    pub fn linear(&self, n: usize) -> Result<Vec<f32>> {
        if let Some(v) = self.explicit(n)? {
            return Ok(v);
        }
        let Schedule::Range(a, b) = *self else { unreachable!() };
        Ok(linspace_f32(a, b, n))
    }

    /// Values for `n` stages; a range follows the official top-p "negative log" sequence:
    /// `b + (a − b)·(m − m^(i/m))/(m − 1)` with `m = n − 1` (fast at first, then slower).
    pub fn negative_log(&self, n: usize) -> Result<Vec<f32>> {
        if let Some(v) = self.explicit(n)? {
            return Ok(v);
        }
        let Schedule::Range(a, b) = *self else { unreachable!() };
        if n < 3 {
            return Ok(linspace_f32(a, b, n));
        }
        let m = (n - 1) as f64;
        Ok((0..n)
            .map(|i| {
                let v = m.powf(i as f64 / m);
                (b as f64 + (a as f64 - b as f64) * (m - v) / (m - 1.0)) as f32
            })
            .collect())
    }
}

/// `torch.linspace(start, end, n)` in f32, with PyTorch's CPU algorithm (the first half counts up from
/// `start`, the second half down from `end`), so the values match bit for bit.
pub fn linspace_f32(start: f32, end: f32, n: usize) -> Vec<f32> {
    match n {
        0 => vec![],
        1 => vec![start],
        _ => {
            let step = (end - start) / (n - 1) as f32;
            let half = n / 2;
            (0..n)
                .map(|i| {
                    if i < half {
                        start + step * i as f32
                    } else {
                        end - step * (n - 1 - i) as f32
                    }
                })
                .collect()
        }
    }
}

/// Rounds to bfloat16 and back (the official sampler casts its CFG scales to bf16).
pub fn round_bf16(v: f32) -> f32 {
    half::bf16::from_f32(v).to_f32()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_constants_ranges_and_lists() {
        assert_eq!(Schedule::parse("3.5").unwrap(), Schedule::Constant(3.5));
        assert_eq!(Schedule::parse("1-3.5").unwrap(), Schedule::Range(1.0, 3.5));
        assert_eq!(Schedule::parse("1e-3-2").unwrap(), Schedule::Range(1e-3, 2.0));
        assert_eq!(Schedule::parse("1,2,3").unwrap(), Schedule::List(vec![1.0, 2.0, 3.0]));
        assert!(Schedule::parse("abc").is_err());
        assert!(Schedule::parse("1-").is_err());
        assert!(Schedule::parse("1,2").unwrap().linear(9).is_err());
    }

    #[test]
    fn readme_schedules_match_the_spec_tables() {
        // NVG-SPEC §5.2.
        let cfg = Schedule::parse("1-3.5").unwrap().linear(9).unwrap();
        assert_eq!(cfg, vec![1.0, 1.3125, 1.625, 1.9375, 2.25, 2.5625, 2.875, 3.1875, 3.5]);
        let top_p = Schedule::parse("1-0.5").unwrap().negative_log(9).unwrap();
        let want = [1.0, 0.9788, 0.9513, 0.9156, 0.8694, 0.8094, 0.7317, 0.6308, 0.5];
        for (g, w) in top_p.iter().zip(want) {
            assert!((g - w).abs() < 5e-5, "{top_p:?}");
        }
    }
}
