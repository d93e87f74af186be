//! Channel groups for structured pruning: which output channels of which layers must be removed
//! together so every value in the graph keeps a consistent channel layout.
//!
//! Every value (the model input, each layer's output) has channels along its first dimension.
//! Channel `c` of one value is tied to channel `c'` of another when removing one forces removing
//! the other:
//! - per-channel operations (activations, unfolded batchnorm, pooling, upsampling, dropout,
//!   flatten) tie channel `c` of their input to channel `c` of their output (flatten turns
//!   channel `c` of `[C, H, W]` into the `H·W` features `c·H·W .. (c+1)·H·W`);
//! - `add` and `mul` tie channel `c` of every operand (a broadcast `[C]` or `[C, 1, 1]` gate
//!   included) to channel `c` of their output;
//! - `concat` ties channel `c` of its `k`-th input to channel `offset_k + c` of its output;
//! - a depthwise convolution (groups = in channels = out channels) ties its input channel `c`
//!   to its output channel `c`: its filter `c` goes with the channel.
//!
//! A set of tied channels is a *channel*; the linear/conv layers whose output rows are among
//! them are its *producers*. Producers that share a channel form one *group*, pruned together:
//! the kept channels are chosen once for the group and applied to every producer's rows, every
//! depthwise filter, every per-channel vector and every consumer's input columns. Channels tied
//! to the model input, to the model output, or read by an operation that mixes channels in a
//! way this does not follow (softmax, a grouped convolution) are never removed.

use crate::model::{Model, Op, Source};

/// Why a channel cannot be removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fixed {
    /// It is tied to the model input's channels, which `reader` reads.
    Input { reader: String },
    /// It is tied to the model output, which `layer` produces.
    Output { layer: String },
    /// `layer` reads or produces it in a way structured pruning does not follow.
    Opaque { layer: String, why: String },
}

/// One set of tied channels.
#[derive(Debug, Clone, PartialEq)]
pub struct Channel {
    /// `(slot, channel)`: slot 0 is the model input, slot `j + 1` layer `j`'s output.
    pub members: Vec<(usize, usize)>,
    /// `(layer, row)`: the linear/conv output rows among `members`.
    pub rows: Vec<(usize, usize)>,
    pub fixed: Option<Fixed>,
}

/// Producers that share channels, pruned together.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    /// The linear/conv layers whose output rows are the group's channels, in model order.
    pub members: Vec<usize>,
    /// The joins and depthwise convolutions that tie the members' channels, in model order.
    pub couplers: Vec<usize>,
    /// The group's channels (indices into [`ChannelGraph::channels`]) in sets of the same
    /// producers, each ranked on its own (so every producer keeps at least one row).
    pub parts: Vec<Vec<usize>>,
}

/// How structured pruning sees a model's channels.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelGraph {
    /// Per slot: channels, and entries of the first dimension per channel (`H·W` after a
    /// flatten of `[C, H, W]`, else 1).
    pub width: Vec<(usize, usize)>,
    base: Vec<usize>,
    /// The channel (index into `channels`) of each `(slot, channel)` id.
    channel_of: Vec<usize>,
    pub channels: Vec<Channel>,
    pub groups: Vec<Group>,
    /// Per layer: the group its output rows belong to.
    group_of: Vec<Option<usize>>,
}

/// How a layer ties its output's channels to what it reads.
enum Link {
    /// New channels (linear, conv); the input, if any, is read by columns.
    Produce,
    /// Channel `c` of the output is channel `c` of each read slot.
    Tie(Vec<usize>),
    /// The output is the read slots' channels one after another.
    Concat(Vec<usize>),
    /// Neither input nor output channels can be removed.
    Opaque(Vec<usize>, String),
}

fn slot(s: Source) -> usize {
    match s {
        Source::Input => 0,
        Source::Layer(j) => j + 1,
    }
}

struct UnionFind(Vec<usize>);

impl UnionFind {
    fn find(&mut self, mut x: usize) -> usize {
        while self.0[x] != x {
            self.0[x] = self.0[self.0[x]];
            x = self.0[x];
        }
        x
    }
    fn union(&mut self, a: usize, b: usize) {
        let (a, b) = (self.find(a), self.find(b));
        if a != b {
            // The smaller id is the root, so a set's root is its earliest member.
            let (lo, hi) = if a < b { (a, b) } else { (b, a) };
            self.0[hi] = lo;
        }
    }
}

impl ChannelGraph {
    pub fn analyze(model: &Model) -> ChannelGraph {
        let n = model.layers.len();
        let mut width: Vec<(usize, usize)> = Vec::with_capacity(n + 1);
        width.push((model.input.shape.first().copied().unwrap_or(0), 1));
        let mut links = Vec::with_capacity(n);
        for (i, layer) in model.layers.iter().enumerate() {
            let reads: Vec<usize> = model.reads(i).into_iter().map(slot).collect();
            let r0 = reads[0];
            let out0 = layer.out_shape.first().copied().unwrap_or(0);
            let flat_out = layer.out_shape.len() == 1;
            let in_shape = model.shape_of(model.input_of(i));
            let opaque = |why: &str| (Link::Opaque(reads.clone(), why.to_string()), (out0, 1));
            let (link, w) = match &layer.op {
                Op::Conv2d(p, _) if p.is_conv1d() => {
                    opaque("is a conv1d, which structured pruning does not shrink")
                }
                Op::Linear(_) if in_shape.len() != 1 => opaque(
                    "is a linear layer over tokens, which structured pruning does not shrink",
                ),
                Op::Linear(p) => {
                    let (c, s) = width[r0];
                    if p.weight.dims().get(1) != Some(&(c * s)) {
                        opaque("reads them in a layout structured pruning does not follow")
                    } else {
                        (Link::Produce, (out0, 1))
                    }
                }
                Op::Conv2d(p, g) => {
                    let in_ch = in_shape.first().copied().unwrap_or(0);
                    if g.groups == 1 {
                        (Link::Produce, (out0, 1))
                    } else if g.groups == in_ch && p.weight.dims()[0] == in_ch {
                        (Link::Tie(vec![r0]), (out0, 1))
                    } else {
                        opaque(&format!(
                            "is a grouped convolution (groups = {}), whose groups would change",
                            g.groups
                        ))
                    }
                }
                Op::Flatten if in_shape.len() > 1 => {
                    let hw: usize = in_shape[1..].iter().product();
                    (Link::Tie(vec![r0]), (width[r0].0, width[r0].1 * hw))
                }
                Op::ChannelAffine { .. }
                | Op::Activation(_)
                | Op::MaxPool2d(_)
                | Op::AvgPool2d(_)
                | Op::GlobalAvgPool
                | Op::AdaptiveAvgPool(_)
                | Op::Upsample { .. }
                | Op::Flatten
                | Op::Dropout(_) => {
                    let w = if flat_out && in_shape.len() == 1 {
                        width[r0]
                    } else {
                        (out0, 1)
                    };
                    if w.0 == width[r0].0 && w.0 * w.1 == out0 {
                        (Link::Tie(vec![r0]), w)
                    } else {
                        opaque("changes their number")
                    }
                }
                Op::Add { .. } | Op::Mul { .. } => {
                    let same = reads.iter().all(|&r| width[r] == width[r0]);
                    let w = if flat_out { width[r0] } else { (out0, 1) };
                    if same && w.0 == width[r0].0 && w.0 * w.1 == out0 {
                        (Link::Tie(reads.clone()), w)
                    } else {
                        opaque("joins values whose channels do not line up")
                    }
                }
                Op::Concat { .. } => {
                    let span = width[r0].1;
                    let total: usize = reads.iter().map(|&r| width[r].0).sum();
                    let w = (total, if flat_out { span } else { 1 });
                    if reads.iter().all(|&r| width[r].1 == span) && total * w.1 == out0 {
                        (Link::Concat(reads.clone()), w)
                    } else {
                        opaque("joins values whose channels do not line up")
                    }
                }
                Op::Softmax | Op::LayerNorm(_) => opaque("normalizes over them"),
                // An operation this does not know: neither what it reads nor what it gives
                // loses channels.
                #[allow(unreachable_patterns)]
                _ => opaque("mixes them in a way structured pruning does not follow"),
            };
            links.push(link);
            width.push(w);
        }

        let mut base = Vec::with_capacity(width.len());
        let mut total = 0;
        for (c, _) in &width {
            base.push(total);
            total += c;
        }
        let id = |s: usize, c: usize| base[s] + c;
        let mut uf = UnionFind((0..total).collect());
        let mut fixed: Vec<Option<Fixed>> = vec![None; total];
        let fix = |fixed: &mut Vec<Option<Fixed>>, s: usize, why: &Fixed| {
            for c in 0..width[s].0 {
                fixed[id(s, c)].get_or_insert_with(|| why.clone());
            }
        };
        for (i, link) in links.iter().enumerate() {
            let o = i + 1;
            let name = &model.layers[i].name;
            match link {
                Link::Produce => {}
                Link::Tie(reads) => {
                    for &r in reads {
                        for c in 0..width[o].0 {
                            uf.union(id(o, c), id(r, c));
                        }
                    }
                }
                Link::Concat(reads) => {
                    let mut off = 0;
                    for &r in reads {
                        for c in 0..width[r].0 {
                            uf.union(id(o, off + c), id(r, c));
                        }
                        off += width[r].0;
                    }
                }
                Link::Opaque(reads, why) => {
                    let f = Fixed::Opaque {
                        layer: name.clone(),
                        why: why.clone(),
                    };
                    fix(&mut fixed, o, &f);
                    for &r in reads {
                        fix(&mut fixed, r, &f);
                    }
                }
            }
            let reads_input = match link {
                Link::Tie(r) | Link::Concat(r) => r.contains(&0),
                _ => false,
            };
            if reads_input {
                let f = Fixed::Input {
                    reader: name.clone(),
                };
                for c in 0..width[0].0 {
                    fixed[id(0, c)].get_or_insert_with(|| f.clone());
                }
            }
        }
        if let Some(last) = model.layers.last() {
            let f = Fixed::Output {
                layer: last.name.clone(),
            };
            fix(&mut fixed, n, &f);
        }

        // Dense channel indices, in the order of their earliest member.
        let mut channel_of = vec![usize::MAX; total];
        let mut channels: Vec<Channel> = Vec::new();
        for (s, &(count, _)) in width.iter().enumerate() {
            for c in 0..count {
                let x = id(s, c);
                let root = uf.find(x);
                if channel_of[root] == usize::MAX {
                    channel_of[root] = channels.len();
                    channels.push(Channel {
                        members: Vec::new(),
                        rows: Vec::new(),
                        fixed: None,
                    });
                }
                let k = channel_of[root];
                channel_of[x] = k;
                let ch = &mut channels[k];
                ch.members.push((s, c));
                if ch.fixed.is_none() {
                    ch.fixed.clone_from(&fixed[x]);
                }
                if s > 0 && model.layers[s - 1].params().is_some() {
                    ch.rows.push((s - 1, c));
                }
            }
        }

        // Groups: producers sharing a channel.
        let mut lf = UnionFind((0..n).collect());
        for ch in &channels {
            for w in ch.rows.windows(2) {
                lf.union(w[0].0, w[1].0);
            }
        }
        let mut group_of: Vec<Option<usize>> = vec![None; n];
        let mut groups: Vec<Group> = Vec::new();
        let mut group_of_root: Vec<Option<usize>> = vec![None; n];
        for (i, layer) in model.layers.iter().enumerate() {
            if layer.params().is_none() || width[i + 1].0 == 0 {
                continue;
            }
            let root = lf.find(i);
            let g = *group_of_root[root].get_or_insert_with(|| {
                groups.push(Group {
                    members: Vec::new(),
                    couplers: Vec::new(),
                    parts: Vec::new(),
                });
                groups.len() - 1
            });
            groups[g].members.push(i);
            group_of[i] = Some(g);
        }
        let mut signatures: Vec<Vec<(Vec<usize>, Vec<usize>)>> = vec![Vec::new(); groups.len()];
        for (k, ch) in channels.iter().enumerate() {
            let Some(&(first, _)) = ch.rows.first() else {
                continue;
            };
            let Some(g) = group_of[first] else {
                continue;
            };
            let mut sig: Vec<usize> = ch.rows.iter().map(|r| r.0).collect();
            sig.dedup();
            match signatures[g].iter_mut().find(|(s, _)| *s == sig) {
                Some((_, part)) => part.push(k),
                None => signatures[g].push((sig, vec![k])),
            }
            for &(s, _) in &ch.members {
                let Some(l) = s.checked_sub(1) else {
                    continue;
                };
                let op = &model.layers[l].op;
                let couples = op.is_join() || matches!(op, Op::Conv2d(_, geo) if geo.groups > 1);
                if couples && !groups[g].couplers.contains(&l) {
                    groups[g].couplers.push(l);
                }
            }
        }
        for (g, sigs) in groups.iter_mut().zip(signatures) {
            g.parts = sigs.into_iter().map(|(_, p)| p).collect();
            g.couplers.sort_unstable();
        }
        ChannelGraph {
            width,
            base,
            channel_of,
            channels,
            groups,
            group_of,
        }
    }

    /// The channel that holds channel `c` of `slot`.
    pub fn channel(&self, slot: usize, c: usize) -> usize {
        self.channel_of[self.base[slot] + c]
    }

    /// The group layer `layer`'s output rows belong to.
    pub fn group_of(&self, layer: usize) -> Option<usize> {
        self.group_of.get(layer).copied().flatten()
    }

    /// The group's channels that can be removed, in order.
    pub fn removable(&self, group: usize) -> impl Iterator<Item = usize> + '_ {
        self.groups[group]
            .parts
            .iter()
            .flatten()
            .copied()
            .filter(|&k| self.channels[k].fixed.is_none())
    }
}
