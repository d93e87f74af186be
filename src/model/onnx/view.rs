//! Values that are a layer's output rearranged: exporters write `nn.MultiheadAttention` as
//! transposes, reshapes and selections around two products of computed values. The importer
//! follows where each element of the layer's output goes (a [`View`]), recognises the
//! products of queries and keys and of probabilities and values by the positions they read,
//! and turns the whole into squeeze's `attention` (and token-wise `linear`) layers: a
//! rearrangement that ends where it started needs no layer at all.

use super::array::Arr;

/// A value whose elements are elements of layer `layer`'s output (`of`, batch first), or
/// attention scores or probabilities computed from such values.
#[derive(Debug, Clone)]
pub(super) struct View {
    /// The layer (or the model input) whose output is read.
    pub layer: String,
    /// That output's shape, batch first.
    pub of: Vec<usize>,
    /// The value's shape and, for each element, its flat position in the layer's output.
    pub at: Arr<u32>,
    /// A factor the values are multiplied by.
    pub scale: f64,
    pub kind: Kind,
}

#[derive(Debug, Clone)]
pub(super) enum Kind {
    Values,
    /// `q·kᵀ` of the heads in `heads`, not yet normalized.
    Scores(Heads),
    /// Softmax of [`Kind::Scores`] over the keys.
    Probs(Heads),
}

/// Where the heads of a product of queries and keys come from.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Heads {
    /// For each matrix of the product (its leading indices flattened): the sample and head.
    pub blocks: Vec<(usize, usize)>,
    pub heads: usize,
    pub head_dim: usize,
    pub tokens: usize,
    /// Query, key and value features per token (3·d).
    pub width: usize,
}

impl View {
    /// The layer's whole output, as it is.
    pub fn whole(layer: String, of: Vec<usize>) -> Result<View, String> {
        let n = of.iter().product::<usize>();
        let n = u32::try_from(n).map_err(|_| format!("{n} values are too many to rearrange"))?;
        Ok(View {
            layer,
            at: Arr::new(of.clone(), (0..n).collect())?,
            of,
            scale: 1.0,
            kind: Kind::Values,
        })
    }

    /// The same elements in another arrangement.
    pub fn with(&self, at: Arr<u32>) -> View {
        View { at, ..self.clone() }
    }

    /// Whether the value is the layer's output unchanged.
    pub fn is_whole(&self) -> bool {
        matches!(self.kind, Kind::Values)
            && self.scale == 1.0
            && self.at.dims == self.of
            && self
                .at
                .data
                .iter()
                .enumerate()
                .all(|(i, &p)| p as usize == i)
    }

    /// What the value is, for messages.
    pub fn describe(&self) -> String {
        match &self.kind {
            Kind::Values => format!(
                "a rearrangement {:?} of layer {}'s output {:?}",
                self.at.dims, self.layer, self.of
            ),
            Kind::Scores(_) => format!("attention scores computed from layer {}", self.layer),
            Kind::Probs(_) => format!("attention probabilities computed from layer {}", self.layer),
        }
    }

    /// For a product by a `[k, out]` matrix along the last axis: which token of the layer's
    /// output each row is (every row must be one whole token's features, in order).
    pub fn token_rows(&self) -> Result<Vec<usize>, String> {
        let k = *self.at.dims.last().ok_or("a scalar")?;
        let last = *self.of.last().ok_or("a scalar")?;
        let rows = self
            .at
            .data
            .chunks_exact(k.max(1))
            .map(|row| {
                let first = row[0] as usize;
                let whole = k == last
                    && first.is_multiple_of(k)
                    && row
                        .iter()
                        .enumerate()
                        .all(|(j, &p)| p as usize == first + j);
                whole.then_some(first / k)
            })
            .collect::<Option<Vec<_>>>();
        if !matches!(self.kind, Kind::Values) || self.scale != 1.0 {
            return Err(format!("multiplies {} by a matrix", self.describe()));
        }
        rows.ok_or_else(|| {
            format!(
                "multiplies {} by a matrix along an axis that is not its features",
                self.describe()
            )
        })
    }

    /// The layer computing `out` features per token from this value's tokens, arranged as
    /// this value arranges its rows.
    pub fn after_linear(&self, layer: String, out: usize) -> Result<View, String> {
        let rows = self.token_rows()?;
        let mut of = self.of.clone();
        if let Some(l) = of.last_mut() {
            *l = out;
        }
        let mut dims = self.at.dims.clone();
        if let Some(l) = dims.last_mut() {
            *l = out;
        }
        let data = rows
            .iter()
            .flat_map(|&r| (0..out).map(move |o| (r * out + o) as u32))
            .collect();
        Ok(View {
            layer,
            of,
            at: Arr::new(dims, data)?,
            scale: 1.0,
            kind: Kind::Values,
        })
    }
}

/// The sample, token and feature of flat position `p` of a `[N, tokens, width]` output.
fn locate(p: u32, tokens: usize, width: usize) -> (usize, usize, usize) {
    let p = p as usize;
    (p / (tokens * width), p / width % tokens, p % width)
}

/// Splits a `[..., a, b]` value into its matrices.
fn matrices(v: &View) -> Result<(Vec<usize>, usize, usize), String> {
    match v.at.dims[..] {
        [ref lead @ .., a, b] => Ok((lead.to_vec(), a, b)),
        _ => Err(format!("{} is not a matrix", v.describe())),
    }
}

/// `q·kᵀ` where `q` is `[..., tokens, head_dim]` and `k` `[..., head_dim, tokens]`, both read
/// from one `[N, tokens, 3·d]` output: each matrix pair must be the queries and the keys of one
/// head of one sample, and every head of every sample must appear once.
pub fn scores(q: &View, k: &View) -> Result<Heads, String> {
    let [n, tokens, width] = q.of[..] else {
        return Err(format!(
            "multiplies {} (not [batch, tokens, features] values)",
            q.describe()
        ));
    };
    if k.layer != q.layer || !matches!(q.kind, Kind::Values) || !matches!(k.kind, Kind::Values) {
        return Err(format!(
            "multiplies {} by {}; squeeze's attention takes queries and keys from one layer",
            q.describe(),
            k.describe()
        ));
    }
    let (lead, t, dh) = matrices(q)?;
    let (klead, kdh, kt) = matrices(k)?;
    if lead != klead || t != tokens || kt != tokens || kdh != dh || dh == 0 {
        return Err(format!(
            "multiplies {:?} by {:?}; expected queries [.., {tokens}, dh] by keys [.., dh, {tokens}]",
            q.at.dims, k.at.dims
        ));
    }
    if !width.is_multiple_of(3) || !(width / 3).is_multiple_of(dh) {
        return Err(format!(
            "reads {width} features per token; expected queries, keys and values of heads of {dh}"
        ));
    }
    let d = width / 3;
    let mut blocks = Vec::new();
    for (m, (qm, km)) in
        q.at.data
            .chunks_exact(t * dh)
            .zip(k.at.data.chunks_exact(t * dh))
            .enumerate()
    {
        let (s, t0, c0) = locate(qm[0], tokens, width);
        let head = c0 / dh;
        let base = |part: usize, t: usize, j: usize| (s * tokens + t) * width + part * d + c0 + j;
        let fits = t0 == 0
            && c0.is_multiple_of(dh)
            && c0 < d
            && (0..t).all(|ti| {
                (0..dh).all(|j| {
                    qm[ti * dh + j] as usize == base(0, ti, j)
                        && km[j * t + ti] as usize == base(1, ti, j)
                })
            });
        if !fits {
            return Err(format!(
                "matrix {m} of the product is not one head's queries times its keys (features [0, {d}) are queries, [{d}, {}) keys of {} heads of {dh})",
                2 * d,
                d / dh
            ));
        }
        blocks.push((s, head));
    }
    let heads = d / dh;
    let mut seen = blocks.clone();
    seen.sort_unstable();
    let all: Vec<(usize, usize)> = (0..n)
        .flat_map(|s| (0..heads).map(move |h| (s, h)))
        .collect();
    if seen != all {
        return Err(format!(
            "the product's matrices are not each of the {heads} heads of each sample once"
        ));
    }
    Ok(Heads {
        blocks,
        heads,
        head_dim: dh,
        tokens,
        width,
    })
}

/// `probs·v`: `v` must be `[..., tokens, head_dim]`, each matrix the values of the head its
/// probabilities came from. The result, as a view of the `[N, tokens, d]` attention output
/// (the heads side by side).
pub fn weighted(heads: &Heads, v: &View, qkv: &str, layer: String) -> Result<View, String> {
    let (t, dh, width) = (heads.tokens, heads.head_dim, heads.width);
    let d = width / 3;
    let ok_shape = matrices(v).is_ok_and(|(_, a, b)| a == t && b == dh)
        && v.at.data.len() == heads.blocks.len() * t * dh;
    if v.layer != qkv || !matches!(v.kind, Kind::Values) || !ok_shape || v.of.len() != 3 {
        return Err(format!(
            "multiplies attention probabilities by {}; expected the values of the same heads",
            v.describe()
        ));
    }
    if v.scale != 1.0 {
        return Err(format!(
            "multiplies attention probabilities by values scaled by {}",
            v.scale
        ));
    }
    let mut data = Vec::with_capacity(v.at.data.len());
    for (vm, &(s, h)) in v.at.data.chunks_exact(t * dh).zip(&heads.blocks) {
        for ti in 0..t {
            for j in 0..dh {
                let want = (s * t + ti) * width + 2 * d + h * dh + j;
                if vm[ti * dh + j] as usize != want {
                    return Err(format!(
                        "multiplies head {h}'s probabilities by something other than its values (features [{}, {width}))",
                        2 * d
                    ));
                }
                data.push(((s * t + ti) * d + h * dh + j) as u32);
            }
        }
    }
    let n = v.of[0];
    Ok(View {
        layer,
        of: vec![n, t, d],
        at: Arr::new(v.at.dims.clone(), data)?,
        scale: 1.0,
        kind: Kind::Values,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `nn.MultiheadAttention`'s head split of a `[N, T, 3d]` output: q, k, v as
    /// `[N, heads, T, dh]` (keys transposed).
    fn split(n: usize, t: usize, d: usize, heads: usize) -> (View, View, View) {
        let qkv = View::whole("qkv".into(), vec![n, t, 3 * d]).unwrap();
        let dh = d / heads;
        let five = qkv
            .at
            .reshape(&[n as i64, t as i64, 3, heads as i64, dh as i64], false)
            .unwrap();
        let part = |i: i64| {
            let p = five.gather(2, &Arr::scalar(i)).unwrap();
            qkv.with(p.transpose(&[0, 2, 1, 3]).unwrap())
        };
        let k = part(1);
        let kt = k.with(k.at.transpose(&[0, 1, 3, 2]).unwrap());
        (part(0), kt, part(2))
    }

    #[test]
    fn heads_are_recognised_by_the_positions_they_read() {
        let (q, k, v) = split(2, 3, 8, 2);
        let h = scores(&q, &k).unwrap();
        assert_eq!((h.heads, h.head_dim, h.blocks.len()), (2, 4, 4));
        let out = weighted(&h, &v, "qkv", "attn".into()).unwrap();
        // Heads back side by side: [N, heads, T, dh] → [N, T, heads, dh] → [N, T, d].
        let merged = out.with(
            out.at
                .transpose(&[0, 2, 1, 3])
                .unwrap()
                .reshape(&[2, 3, 8], false)
                .unwrap(),
        );
        assert!(merged.is_whole());
        // Keys read as queries, values as keys, or heads mixed: refused.
        assert!(scores(&k, &k).is_err());
        assert!(scores(&q, &q.with(q.at.transpose(&[0, 1, 3, 2]).unwrap())).is_err());
        assert!(weighted(&h, &q, "qkv", "attn".into()).is_err());
        let swapped = v.with(v.at.transpose(&[1, 0, 2, 3]).unwrap());
        assert!(weighted(&h, &swapped, "qkv", "attn".into()).is_err());
    }

    #[test]
    fn a_linear_reads_whole_tokens() {
        let x = View::whole("x".into(), vec![2, 3, 4]).unwrap();
        let tn = x.with(x.at.transpose(&[1, 0, 2]).unwrap());
        assert_eq!(tn.token_rows().unwrap(), [0, 3, 1, 4, 2, 5]);
        let y = tn.after_linear("y".into(), 5).unwrap();
        let back = y.with(y.at.transpose(&[1, 0, 2]).unwrap());
        assert!(back.is_whole());
        assert!(
            x.with(x.at.transpose(&[0, 2, 1]).unwrap())
                .token_rows()
                .is_err()
        );
    }
}
