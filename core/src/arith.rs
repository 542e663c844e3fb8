//! Element-wise vector arithmetic with the overflow checks of PostgreSQL's float4 operators.

/// Why an element-wise operation has no result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArithError {
    /// A finite input gave an infinite element.
    Overflow,
    /// Two non-zero inputs gave zero.
    Underflow,
}

/// The element-wise operators `+`, `-` and `*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Add,
    Sub,
    Mul,
}

/// Writes `a op b` into `out`. All three slices have the same length; on error `out` holds
/// garbage and must not be used.
pub fn apply(op: Op, a: &[f32], b: &[f32], out: &mut [f32]) -> Result<(), ArithError> {
    debug_assert!(a.len() == b.len() && a.len() == out.len());
    let mut bad = false;
    match op {
        Op::Add => {
            for ((o, x), y) in out.iter_mut().zip(a).zip(b) {
                *o = x + y;
                bad |= o.is_infinite();
            }
        }
        Op::Sub => {
            for ((o, x), y) in out.iter_mut().zip(a).zip(b) {
                *o = x - y;
                bad |= o.is_infinite();
            }
        }
        Op::Mul => {
            let mut underflow = false;
            for ((o, x), y) in out.iter_mut().zip(a).zip(b) {
                *o = x * y;
                bad |= o.is_infinite();
                underflow |= *o == 0.0 && *x != 0.0 && *y != 0.0;
            }
            if !bad && underflow {
                return Err(ArithError::Underflow);
            }
        }
    }
    if bad {
        Err(ArithError::Overflow)
    } else {
        Ok(())
    }
}

/// Running sums for `avg(vector)`: element sums in `f64`, as PostgreSQL's `avg(float4)` keeps.
pub fn accumulate(sums: &mut [f64], v: &[f32]) {
    for (s, &x) in sums.iter_mut().zip(v) {
        *s += x as f64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(op: Op, a: &[f32], b: &[f32]) -> Result<Vec<f32>, ArithError> {
        let mut out = vec![0.0; a.len()];
        apply(op, a, b, &mut out).map(|_| out)
    }

    #[test]
    fn element_wise() {
        assert_eq!(run(Op::Add, &[1.0, 2.0], &[3.0, -4.0]), Ok(vec![4.0, -2.0]));
        assert_eq!(run(Op::Sub, &[1.0, 2.0], &[3.0, -4.0]), Ok(vec![-2.0, 6.0]));
        assert_eq!(run(Op::Mul, &[1.5, 2.0], &[2.0, -4.0]), Ok(vec![3.0, -8.0]));
        assert_eq!(run(Op::Mul, &[0.0, 2.0], &[5.0, 0.0]), Ok(vec![0.0, 0.0]));
    }

    #[test]
    fn range_errors() {
        assert_eq!(run(Op::Add, &[f32::MAX], &[f32::MAX]), Err(ArithError::Overflow));
        assert_eq!(run(Op::Sub, &[-f32::MAX], &[f32::MAX]), Err(ArithError::Overflow));
        assert_eq!(run(Op::Mul, &[1e30], &[1e30]), Err(ArithError::Overflow));
        assert_eq!(run(Op::Mul, &[1e-30], &[1e-30]), Err(ArithError::Underflow));
    }

    #[test]
    fn sums_in_f64() {
        let mut s = vec![0.0; 2];
        accumulate(&mut s, &[1.0, 16777216.0]);
        accumulate(&mut s, &[2.0, 1.0]);
        assert_eq!(s, vec![3.0, 16777217.0]);
    }
}
