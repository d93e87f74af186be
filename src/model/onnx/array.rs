//! Dense row-major arrays and ONNX's data-movement operators on them (`Transpose`, `Reshape`,
//! `Squeeze`, `Unsqueeze`, `Gather`, `Slice`, `Split`, `Concat`, `Expand`). The importer runs
//! them on the values of constants (the shape arithmetic exporters write) and on the positions
//! of a layer's output values (to follow where a rearrangement puts each of them).

/// A dense row-major array.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Arr<T> {
    pub dims: Vec<usize>,
    pub data: Vec<T>,
}

/// ONNX axis `a` (negative: from the end) of a rank-`rank` value.
pub(super) fn axis(a: i64, rank: usize) -> Result<usize, String> {
    let r = rank as i64;
    let at = if a < 0 { a + r } else { a };
    if (0..r).contains(&at) {
        Ok(at as usize)
    } else {
        Err(format!("axis {a} of a rank-{rank} value"))
    }
}

fn strides(dims: &[usize]) -> Vec<usize> {
    let mut s = vec![1; dims.len()];
    for i in (0..dims.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * dims[i + 1];
    }
    s
}

/// Every multi-index of `dims` in row-major order, as the flat offsets `strides` give.
fn offsets(dims: &[usize], strides: &[usize]) -> Vec<usize> {
    let mut out = vec![0usize];
    for (d, s) in dims.iter().zip(strides) {
        out = out
            .iter()
            .flat_map(|&o| (0..*d).map(move |i| o + i * s))
            .collect();
    }
    out
}

impl<T: Copy> Arr<T> {
    pub fn new(dims: Vec<usize>, data: Vec<T>) -> Result<Self, String> {
        if dims.iter().product::<usize>() != data.len() {
            return Err(format!("{} values for shape {dims:?}", data.len()));
        }
        Ok(Arr { dims, data })
    }

    #[cfg(test)]
    pub fn scalar(v: T) -> Self {
        Arr {
            dims: Vec::new(),
            data: vec![v],
        }
    }

    fn pick(&self, dims: Vec<usize>, strides: &[usize], start: usize) -> Self {
        let data = offsets(&dims, strides)
            .into_iter()
            .map(|o| self.data[start + o])
            .collect();
        Arr { dims, data }
    }

    /// `perm` as ONNX's `Transpose` reads it (empty: reversed).
    pub fn transpose(&self, perm: &[i64]) -> Result<Self, String> {
        let rank = self.dims.len();
        let perm: Vec<usize> = if perm.is_empty() {
            (0..rank).rev().collect()
        } else {
            perm.iter()
                .map(|&p| axis(p, rank))
                .collect::<Result<_, _>>()?
        };
        let mut sorted = perm.clone();
        sorted.sort_unstable();
        if sorted != (0..rank).collect::<Vec<_>>() {
            return Err(format!("perm {perm:?} of a rank-{rank} value"));
        }
        let s = strides(&self.dims);
        let dims = perm.iter().map(|&p| self.dims[p]).collect();
        let st: Vec<usize> = perm.iter().map(|&p| s[p]).collect();
        Ok(self.pick(dims, &st, 0))
    }

    /// ONNX's `Reshape` target: `0` copies the input's dimension (unless `allowzero`), one `-1`
    /// takes what is left.
    pub fn reshape(&self, target: &[i64], allowzero: bool) -> Result<Self, String> {
        let n = self.data.len();
        let mut dims = Vec::with_capacity(target.len());
        let mut free = None;
        for (i, &t) in target.iter().enumerate() {
            match t {
                0 if !allowzero => dims.push(
                    *self
                        .dims
                        .get(i)
                        .ok_or_else(|| format!("target {target:?} copies a missing dimension"))?,
                ),
                -1 if free.is_none() => {
                    free = Some(i);
                    dims.push(1);
                }
                t if t >= 0 => dims.push(t as usize),
                _ => return Err(format!("target shape {target:?} is not valid")),
            }
        }
        if let Some(i) = free {
            let rest: usize = dims.iter().product();
            if rest == 0 || !n.is_multiple_of(rest) {
                return Err(format!("{n} values do not reshape to {target:?}"));
            }
            dims[i] = n / rest;
        }
        if dims.iter().product::<usize>() != n {
            return Err(format!(
                "{n} values of shape {:?} do not reshape to {target:?}",
                self.dims
            ));
        }
        Ok(Arr {
            dims,
            data: self.data.clone(),
        })
    }

    /// The unit axes `axes` removed (all unit axes when `None`).
    pub fn squeeze(&self, axes: Option<&[i64]>) -> Result<Self, String> {
        let rank = self.dims.len();
        let drop: Vec<usize> = match axes {
            Some(a) => a.iter().map(|&x| axis(x, rank)).collect::<Result<_, _>>()?,
            None => (0..rank).filter(|&i| self.dims[i] == 1).collect(),
        };
        if let Some(&i) = drop.iter().find(|&&i| self.dims[i] != 1) {
            return Err(format!("squeezes axis {i} of size {}", self.dims[i]));
        }
        let dims = (0..rank)
            .filter(|i| !drop.contains(i))
            .map(|i| self.dims[i])
            .collect();
        Ok(Arr {
            dims,
            data: self.data.clone(),
        })
    }

    /// Unit axes inserted at `axes` (positions in the output).
    pub fn unsqueeze(&self, axes: &[i64]) -> Result<Self, String> {
        let rank = self.dims.len() + axes.len();
        let mut at: Vec<usize> = axes
            .iter()
            .map(|&x| axis(x, rank))
            .collect::<Result<_, _>>()?;
        at.sort_unstable();
        let mut dims = self.dims.clone();
        for i in at {
            dims.insert(i, 1);
        }
        Ok(Arr {
            dims,
            data: self.data.clone(),
        })
    }

    /// ONNX's `Gather` along `axis` (negative indices count from the end).
    pub fn gather(&self, ax: i64, indices: &Arr<i64>) -> Result<Self, String> {
        let a = axis(ax, self.dims.len())?;
        let size = self.dims[a];
        let outer: usize = self.dims[..a].iter().product();
        let inner: usize = self.dims[a + 1..].iter().product();
        let idx: Vec<usize> = indices
            .data
            .iter()
            .map(|&i| {
                let j = if i < 0 { i + size as i64 } else { i };
                usize::try_from(j)
                    .ok()
                    .filter(|&j| j < size)
                    .ok_or_else(|| format!("index {i} of an axis of size {size}"))
            })
            .collect::<Result<_, _>>()?;
        let mut data = Vec::with_capacity(outer * idx.len() * inner);
        for o in 0..outer {
            for &i in &idx {
                let start = (o * size + i) * inner;
                data.extend_from_slice(&self.data[start..start + inner]);
            }
        }
        let mut dims = self.dims[..a].to_vec();
        dims.extend_from_slice(&indices.dims);
        dims.extend_from_slice(&self.dims[a + 1..]);
        Ok(Arr { dims, data })
    }

    /// ONNX's `Slice`: per listed axis, `start..end` by `step` (clamped as ONNX clamps).
    pub fn slice(
        &self,
        starts: &[i64],
        ends: &[i64],
        axes: Option<&[i64]>,
        steps: Option<&[i64]>,
    ) -> Result<Self, String> {
        let rank = self.dims.len();
        let mut begin = vec![0usize; rank];
        let mut dims = self.dims.clone();
        let mut step = vec![1usize; rank];
        for (k, (&s, &e)) in starts.iter().zip(ends).enumerate() {
            let a = axis(axes.map_or(k as i64, |a| a[k]), rank)?;
            let st = steps.map_or(1, |s| s[k]);
            if st <= 0 {
                return Err(format!("slices with step {st}"));
            }
            let size = self.dims[a] as i64;
            let clamp = |v: i64| {
                let v = if v < 0 { v + size } else { v };
                v.clamp(0, size)
            };
            let (b, e) = (clamp(s), clamp(e));
            begin[a] = b as usize;
            step[a] = st as usize;
            dims[a] = if e > b {
                ((e - b + st - 1) / st) as usize
            } else {
                0
            };
        }
        let s = strides(&self.dims);
        let start: usize = begin.iter().zip(&s).map(|(b, s)| b * s).sum();
        let st: Vec<usize> = s.iter().zip(&step).map(|(s, k)| s * k).collect();
        Ok(self.pick(dims, &st, start))
    }

    /// ONNX's `Split` along `axis` into parts of `sizes`.
    pub fn split(&self, ax: i64, sizes: &[usize]) -> Result<Vec<Self>, String> {
        let a = axis(ax, self.dims.len())?;
        if sizes.iter().sum::<usize>() != self.dims[a] {
            return Err(format!(
                "splits an axis of size {} into {sizes:?}",
                self.dims[a]
            ));
        }
        let mut at = 0i64;
        sizes
            .iter()
            .map(|&n| {
                let part = self.slice(&[at], &[at + n as i64], Some(&[a as i64]), None);
                at += n as i64;
                part
            })
            .collect()
    }

    /// ONNX's `Concat` along `axis`.
    pub fn concat(parts: &[Self], ax: i64) -> Result<Self, String> {
        let first = parts.first().ok_or("nothing to join")?;
        let a = axis(ax, first.dims.len())?;
        let mut dims = first.dims.clone();
        dims[a] = 0;
        for p in parts {
            let mut d = p.dims.clone();
            if d.len() != dims.len() {
                return Err("joins values of different ranks".into());
            }
            dims[a] += d[a];
            d[a] = 0;
            let mut want = dims.clone();
            want[a] = 0;
            if d != want {
                return Err(format!("joins shapes {:?} and {:?}", first.dims, p.dims));
            }
        }
        let outer: usize = dims[..a].iter().product();
        let mut data = Vec::new();
        for o in 0..outer {
            for p in parts {
                let chunk: usize = p.dims[a..].iter().product();
                data.extend_from_slice(&p.data[o * chunk..(o + 1) * chunk]);
            }
        }
        Ok(Arr { dims, data })
    }

    /// Broadcast to `shape` as ONNX's `Expand` (and element-wise operators) broadcast.
    pub fn expand(&self, shape: &[usize]) -> Result<Self, String> {
        let dims = broadcast(&self.dims, shape)?;
        let pad = dims.len() - self.dims.len();
        let s = strides(&self.dims);
        let st: Vec<usize> = (0..dims.len())
            .map(|i| {
                if i < pad || self.dims[i - pad] == 1 {
                    0
                } else {
                    s[i - pad]
                }
            })
            .collect();
        Ok(self.pick(dims, &st, 0))
    }
}

/// The shape two shapes broadcast to.
pub(super) fn broadcast(a: &[usize], b: &[usize]) -> Result<Vec<usize>, String> {
    let rank = a.len().max(b.len());
    (0..rank)
        .map(|i| {
            let x = (i + a.len()).checked_sub(rank).map_or(1, |j| a[j]);
            let y = (i + b.len()).checked_sub(rank).map_or(1, |j| b[j]);
            match (x, y) {
                (x, y) if x == y => Ok(x),
                (1, y) => Ok(y),
                (x, 1) => Ok(x),
                _ => Err(format!("shapes {a:?} and {b:?} do not broadcast")),
            }
        })
        .collect()
}

/// `f` applied element by element to `a` and `b` broadcast together.
pub(super) fn zip_with(
    a: &Arr<f64>,
    b: &Arr<f64>,
    f: impl Fn(f64, f64) -> f64,
) -> Result<Arr<f64>, String> {
    let dims = broadcast(&a.dims, &b.dims)?;
    let (x, y) = (a.expand(&dims)?, b.expand(&dims)?);
    let data = x.data.iter().zip(&y.data).map(|(&p, &q)| f(p, q)).collect();
    Ok(Arr { dims, data })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iota(dims: &[usize]) -> Arr<u32> {
        let n = dims.iter().product::<usize>() as u32;
        Arr::new(dims.to_vec(), (0..n).collect()).unwrap()
    }

    #[test]
    fn movement_operators_follow_onnx() {
        let x = iota(&[2, 3]);
        assert_eq!(x.transpose(&[1, 0]).unwrap().data, [0, 3, 1, 4, 2, 5]);
        assert_eq!(x.reshape(&[0, -1], false).unwrap().dims, [2, 3]);
        assert_eq!(x.reshape(&[3, 2], false).unwrap().dims, [3, 2]);
        let idx = Arr::scalar(1i64);
        let g = x.gather(1, &idx).unwrap();
        assert_eq!((g.dims.clone(), g.data), (vec![2], vec![1, 4]));
        let s = x.slice(&[1], &[i64::MAX], Some(&[1]), None).unwrap();
        assert_eq!((s.dims.clone(), s.data), (vec![2, 2], vec![1, 2, 4, 5]));
        let parts = x.split(1, &[1, 2]).unwrap();
        assert_eq!(parts[1].data, [1, 2, 4, 5]);
        assert_eq!(Arr::concat(&parts, 1).unwrap(), x);
        let u = x.unsqueeze(&[0, 3]).unwrap();
        assert_eq!(u.dims, [1, 2, 3, 1]);
        assert_eq!(u.squeeze(None).unwrap(), x);
        let e = Arr::new(vec![1, 3], vec![7u32, 8, 9]).unwrap();
        assert_eq!(e.expand(&[2, 3]).unwrap().data, [7, 8, 9, 7, 8, 9]);
    }
}
