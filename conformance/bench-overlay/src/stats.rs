//! Order statistics over repeated measurements, and how a figure grows
//! with size.

/// Samples of one figure (any unit), kept as measured.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Samples(pub Vec<f64>);

impl Samples {
    pub fn push(&mut self, v: f64) {
        self.0.push(v);
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    fn sorted(&self) -> Vec<f64> {
        let mut v = self.0.clone();
        v.sort_by(f64::total_cmp);
        v
    }

    /// The median (mean of the middle two for an even count).
    pub fn median(&self) -> Option<f64> {
        let v = self.sorted();
        let n = v.len();
        match n {
            0 => None,
            _ if n % 2 == 1 => Some(v[n / 2]),
            _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
        }
    }

    /// The nearest-rank percentile `p` (0 < p <= 100): the smallest value
    /// with at least p % of the samples at or below it.
    pub fn percentile(&self, p: f64) -> Option<f64> {
        let v = self.sorted();
        if v.is_empty() {
            return None;
        }
        let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
        Some(v[rank.clamp(1, v.len()) - 1])
    }

    pub fn min(&self) -> Option<f64> {
        self.sorted().first().copied()
    }

    pub fn max(&self) -> Option<f64> {
        self.sorted().last().copied()
    }
}

/// The exponent k of the best fit `value = c * size^k` (least squares in
/// log-log space): 1 is linear, 2 quadratic. `None` with fewer than two
/// usable points (sizes and values must be positive).
pub fn growth_exponent(points: &[(f64, f64)]) -> Option<f64> {
    let logs: Vec<(f64, f64)> = points
        .iter()
        .filter(|(x, y)| *x > 0.0 && *y > 0.0)
        .map(|(x, y)| (x.ln(), y.ln()))
        .collect();
    if logs.len() < 2 {
        return None;
    }
    let n = logs.len() as f64;
    let mx = logs.iter().map(|p| p.0).sum::<f64>() / n;
    let my = logs.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = logs.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = logs.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    (sxx > 0.0).then(|| sxy / sxx)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn median_and_nearest_rank_percentiles() {
        let s = Samples((1..=200).map(f64::from).collect());
        assert_eq!(s.median(), Some(100.5));
        assert_eq!(s.percentile(50.0), Some(100.0));
        assert_eq!(s.percentile(99.0), Some(198.0));
        assert_eq!(s.percentile(100.0), Some(200.0));
        // Ranks that are not whole round up.
        let seven = Samples((1..=7).map(f64::from).collect());
        assert_eq!(seven.percentile(50.0), Some(4.0));
        assert_eq!(seven.percentile(90.0), Some(7.0));
        let odd = Samples(vec![3.0, 1.0, 2.0]);
        assert_eq!(odd.median(), Some(2.0));
        assert_eq!(odd.min(), Some(1.0));
        assert_eq!(odd.max(), Some(3.0));
        assert_eq!(Samples::default().median(), None);
        assert_eq!(Samples::default().percentile(99.0), None);
    }

    #[test]
    fn growth_exponents() {
        let linear: Vec<(f64, f64)> = [500.0, 5000.0, 65000.0]
            .iter()
            .map(|&n| (n, 0.002 * n))
            .collect();
        assert!((growth_exponent(&linear).unwrap() - 1.0).abs() < 1e-9);
        let quadratic: Vec<(f64, f64)> =
            [10.0, 100.0, 1000.0].iter().map(|&n| (n, n * n)).collect();
        assert!((growth_exponent(&quadratic).unwrap() - 2.0).abs() < 1e-9);
        assert_eq!(growth_exponent(&[(1.0, 1.0)]), None);
        assert_eq!(growth_exponent(&[(1.0, 0.0), (2.0, 0.0)]), None);
    }
}
