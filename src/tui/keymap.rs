//! Every key binding in one table: the input handler looks keys up here, and the help screen
//! and the status bar are generated from it, so they cannot disagree.

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

/// Everything a key can do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Quit,
    Help,
    Up,
    Down,
    SparsityUp,
    SparsityDown,
    SparsityUpFine,
    SparsityDownFine,
    BitsUp,
    BitsDown,
    CyclePrune,
    CycleScheme,
    CycleGranularity,
    ApplyToAll,
    ToggleGlobal,
    CycleActivations,
    Undo,
    Redo,
    Reset,
    NextPreset,
    PrevPreset,
    Preset(usize),
    Pin,
    Unpin,
    SensitivitySweep,
    UniformSweep,
    ModelCurves,
    Search,
    LoadSearch,
    CycleTarget,
    Cancel,
    Export,
    Plot,
    Budget,
    Finetune,
    TuneSettings,
    Zoom,
    Detail,
    Messages,
    Compare,
    PointPrev,
    PointNext,
    Present,
}

/// One key: a code and the modifiers that must be held (Shift is ignored for characters,
/// whose case already says it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key {
    pub code: KeyCode,
    pub mods: KeyModifiers,
}

const fn key(c: char) -> Key {
    Key {
        code: KeyCode::Char(c),
        mods: KeyModifiers::NONE,
    }
}

const fn code(code: KeyCode) -> Key {
    Key {
        code,
        mods: KeyModifiers::NONE,
    }
}

const fn shift(code: KeyCode) -> Key {
    Key {
        code,
        mods: KeyModifiers::SHIFT,
    }
}

const fn ctrl(c: char) -> Key {
    Key {
        code: KeyCode::Char(c),
        mods: KeyModifiers::CONTROL,
    }
}

/// Where a binding belongs on the help screen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    Layers,
    Configurations,
    Work,
    Screen,
}

impl Group {
    pub const ALL: [Group; 4] = [
        Group::Layers,
        Group::Configurations,
        Group::Work,
        Group::Screen,
    ];

    pub fn title(self) -> &'static str {
        match self {
            Group::Layers => "Edit the selected layer",
            Group::Configurations => "Whole configurations",
            Group::Work => "Sweeps and files",
            Group::Screen => "Screen",
        }
    }
}

pub struct Binding {
    pub keys: &'static [Key],
    pub action: Action,
    pub group: Group,
    /// What the help screen says.
    pub help: &'static str,
    /// The short word on the status bar, for the bindings shown there.
    pub hint: Option<&'static str>,
}

/// The key table.
pub const KEYMAP: &[Binding] = &[
    Binding {
        keys: &[code(KeyCode::Up), key('k')],
        action: Action::Up,
        group: Group::Layers,
        help: "previous / next layer",
        hint: None,
    },
    Binding {
        keys: &[code(KeyCode::Down), key('j')],
        action: Action::Down,
        group: Group::Layers,
        help: "next layer",
        hint: Some("layer"),
    },
    Binding {
        keys: &[code(KeyCode::Right), key('l')],
        action: Action::SparsityUp,
        group: Group::Layers,
        help: "prune ±5 % (or global)",
        hint: Some("prune"),
    },
    Binding {
        keys: &[code(KeyCode::Left), key('h')],
        action: Action::SparsityDown,
        group: Group::Layers,
        help: "prune less",
        hint: None,
    },
    Binding {
        keys: &[shift(KeyCode::Right), key('L')],
        action: Action::SparsityUpFine,
        group: Group::Layers,
        help: "prune ±1 %",
        hint: None,
    },
    Binding {
        keys: &[shift(KeyCode::Left), key('H')],
        action: Action::SparsityDownFine,
        group: Group::Layers,
        help: "prune less, finely",
        hint: None,
    },
    Binding {
        keys: &[key('+'), key('=')],
        action: Action::BitsUp,
        group: Group::Layers,
        help: "more / fewer bits",
        hint: None,
    },
    Binding {
        keys: &[key('-'), key('_')],
        action: Action::BitsDown,
        group: Group::Layers,
        help: "fewer bits",
        hint: Some("bits"),
    },
    Binding {
        keys: &[key('m')],
        action: Action::CyclePrune,
        group: Group::Layers,
        help: "method: l1, 2:4, …",
        hint: Some("method"),
    },
    Binding {
        keys: &[key('s')],
        action: Action::CycleScheme,
        group: Group::Layers,
        help: "sym, asym or k-means",
        hint: None,
    },
    Binding {
        keys: &[key('g')],
        action: Action::CycleGranularity,
        group: Group::Layers,
        help: "tensor, channel or group",
        hint: None,
    },
    Binding {
        keys: &[key('A')],
        action: Action::ApplyToAll,
        group: Group::Layers,
        help: "setting to all layers",
        hint: None,
    },
    Binding {
        keys: &[key('G')],
        action: Action::ToggleGlobal,
        group: Group::Configurations,
        help: "global pruning on/off",
        hint: None,
    },
    Binding {
        keys: &[key('a')],
        action: Action::CycleActivations,
        group: Group::Configurations,
        help: "activation bits 8/6/4",
        hint: None,
    },
    Binding {
        keys: &[key('u')],
        action: Action::Undo,
        group: Group::Configurations,
        help: "undo / redo",
        hint: Some("undo"),
    },
    Binding {
        keys: &[key('U'), ctrl('r')],
        action: Action::Redo,
        group: Group::Configurations,
        help: "redo",
        hint: None,
    },
    Binding {
        keys: &[key('r')],
        action: Action::Reset,
        group: Group::Configurations,
        help: "reset to dense",
        hint: None,
    },
    Binding {
        keys: &[key('n')],
        action: Action::NextPreset,
        group: Group::Configurations,
        help: "next / previous preset",
        hint: Some("preset"),
    },
    Binding {
        keys: &[key('N')],
        action: Action::PrevPreset,
        group: Group::Configurations,
        help: "previous preset",
        hint: None,
    },
    Binding {
        keys: &[key('1')],
        action: Action::Preset(0),
        group: Group::Configurations,
        help: "presets: dense, int8, …",
        hint: None,
    },
    Binding {
        keys: &[key('2')],
        action: Action::Preset(1),
        group: Group::Configurations,
        help: "preset: int8 everywhere",
        hint: None,
    },
    Binding {
        keys: &[key('3')],
        action: Action::Preset(2),
        group: Group::Configurations,
        help: "preset: 50 % global pruning",
        hint: None,
    },
    Binding {
        keys: &[key('4')],
        action: Action::Preset(3),
        group: Group::Configurations,
        help: "preset: Deep-Compression-like",
        hint: None,
    },
    Binding {
        keys: &[key('c')],
        action: Action::Pin,
        group: Group::Configurations,
        help: "pin as A–D / unpin last",
        hint: Some("pin"),
    },
    Binding {
        keys: &[key('C')],
        action: Action::Unpin,
        group: Group::Configurations,
        help: "unpin A",
        hint: None,
    },
    Binding {
        keys: &[key('[')],
        action: Action::PointPrev,
        group: Group::Configurations,
        help: "cursor over chart points",
        hint: None,
    },
    Binding {
        keys: &[key(']')],
        action: Action::PointNext,
        group: Group::Configurations,
        help: "next point",
        hint: None,
    },
    Binding {
        keys: &[key('T')],
        action: Action::Compare,
        group: Group::Configurations,
        help: "compare pins (x saves)",
        hint: None,
    },
    Binding {
        keys: &[key('S')],
        action: Action::SensitivitySweep,
        group: Group::Work,
        help: "sensitivity sweep",
        hint: Some("sweep"),
    },
    Binding {
        keys: &[key('w')],
        action: Action::UniformSweep,
        group: Group::Work,
        help: "uniform sweep; W curves",
        hint: None,
    },
    Binding {
        keys: &[key('W')],
        action: Action::ModelCurves,
        group: Group::Work,
        help: "whole-model curves: global L1, uniform bits",
        hint: None,
    },
    Binding {
        keys: &[key('o')],
        action: Action::Search,
        group: Group::Work,
        help: "search under the budgets",
        hint: None,
    },
    Binding {
        keys: &[key('O')],
        action: Action::LoadSearch,
        group: Group::Work,
        help: "load the search's answer",
        hint: None,
    },
    Binding {
        keys: &[key('t')],
        action: Action::CycleTarget,
        group: Group::Work,
        help: "next device target",
        hint: None,
    },
    Binding {
        keys: &[code(KeyCode::Esc)],
        action: Action::Cancel,
        group: Group::Work,
        help: "cancel work, close views",
        hint: None,
    },
    Binding {
        keys: &[key('f')],
        action: Action::Finetune,
        group: Group::Work,
        help: "fine-tune; F distillation",
        hint: None,
    },
    Binding {
        keys: &[key('F')],
        action: Action::TuneSettings,
        group: Group::Work,
        help: "distillation for f: off, T=4 α=0.9, T=2 α=0.5",
        hint: None,
    },
    Binding {
        keys: &[key('e')],
        action: Action::Export,
        group: Group::Work,
        help: "export recipe and model",
        hint: Some("export"),
    },
    Binding {
        keys: &[key('p')],
        action: Action::Plot,
        group: Group::Work,
        help: "charts as PNG and SVG",
        hint: Some("plots"),
    },
    Binding {
        keys: &[key('b')],
        action: Action::Budget,
        group: Group::Work,
        help: "size budget here on/off",
        hint: None,
    },
    Binding {
        keys: &[key('z')],
        action: Action::Zoom,
        group: Group::Screen,
        help: "zoom near dense accuracy",
        hint: None,
    },
    Binding {
        keys: &[key('P')],
        action: Action::Present,
        group: Group::Screen,
        help: "presentation layout",
        hint: None,
    },
    Binding {
        keys: &[code(KeyCode::Enter), key('d')],
        action: Action::Detail,
        group: Group::Screen,
        help: "layer detail; load point",
        hint: Some("detail"),
    },
    Binding {
        keys: &[key('M')],
        action: Action::Messages,
        group: Group::Screen,
        help: "message log",
        hint: None,
    },
    Binding {
        keys: &[key('?')],
        action: Action::Help,
        group: Group::Screen,
        help: "this help",
        hint: Some("help"),
    },
    Binding {
        keys: &[key('q'), ctrl('c')],
        action: Action::Quit,
        group: Group::Screen,
        help: "quit (--resume returns)",
        hint: Some("quit"),
    },
];

/// Bindings the help screen shows on one line (the first binding's help says what all do).
pub const HELP_FOLDS: &[&[Action]] = &[
    &[Action::Up, Action::Down],
    &[Action::SparsityUp, Action::SparsityDown],
    &[Action::SparsityUpFine, Action::SparsityDownFine],
    &[Action::BitsUp, Action::BitsDown],
    &[Action::Undo, Action::Redo],
    &[Action::NextPreset, Action::PrevPreset],
    &[
        Action::Preset(0),
        Action::Preset(1),
        Action::Preset(2),
        Action::Preset(3),
    ],
    &[Action::Pin, Action::Unpin],
    &[Action::PointPrev, Action::PointNext],
    &[Action::Finetune, Action::TuneSettings],
    &[Action::UniformSweep, Action::ModelCurves],
];

/// The help screen's lines of a group: (keys, what they do), folded bindings on one line.
pub fn help_lines(group: Group) -> Vec<(String, &'static str)> {
    let mut out = Vec::new();
    for b in KEYMAP.iter().filter(|b| b.group == group) {
        let fold = HELP_FOLDS.iter().find(|f| f.contains(&b.action));
        match fold {
            Some(f) if f[0] != b.action => {}
            Some(f) => {
                let keys: Vec<String> = f
                    .iter()
                    .filter_map(|a| binding(*a))
                    .map(keys_label)
                    .collect();
                out.push((keys.join(" "), b.help));
            }
            None => out.push((keys_label(b), b.help)),
        }
    }
    out
}

/// The action bound to a key press, if any.
pub fn lookup(event: &KeyEvent) -> Option<Action> {
    let relevant = KeyModifiers::SHIFT | KeyModifiers::CONTROL | KeyModifiers::ALT;
    let mut mods = event.modifiers & relevant;
    if let KeyCode::Char(_) = event.code {
        // 'L' arrives as Char('L') with SHIFT on most terminals and without on some.
        mods.remove(KeyModifiers::SHIFT);
    }
    KEYMAP
        .iter()
        .find(|b| {
            b.keys
                .iter()
                .any(|k| k.code == event.code && k.mods == mods)
        })
        .map(|b| b.action)
}

/// The binding of an action.
pub fn binding(action: Action) -> Option<&'static Binding> {
    KEYMAP.iter().find(|b| b.action == action)
}

/// How a key is written for people: `q`, `↑`, `⇧→`, `Ctrl+r`, `Esc`.
pub fn key_label(k: &Key) -> String {
    let base = match k.code {
        KeyCode::Char(' ') => "Space".to_string(),
        KeyCode::Char(c) => c.to_string(),
        KeyCode::Up => "↑".into(),
        KeyCode::Down => "↓".into(),
        KeyCode::Left => "←".into(),
        KeyCode::Right => "→".into(),
        KeyCode::Enter => "Enter".into(),
        KeyCode::Esc => "Esc".into(),
        KeyCode::Tab => "Tab".into(),
        other => format!("{other:?}"),
    };
    if k.mods.contains(KeyModifiers::CONTROL) {
        format!("Ctrl+{base}")
    } else if k.mods.contains(KeyModifiers::SHIFT) {
        format!("⇧{base}")
    } else {
        base
    }
}

/// All keys of a binding: `→/l`.
pub fn keys_label(b: &Binding) -> String {
    b.keys.iter().map(key_label).collect::<Vec<_>>().join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_key_is_bound_twice() {
        let mut seen = Vec::new();
        for b in KEYMAP {
            for k in b.keys {
                assert!(!seen.contains(k), "{} bound twice", key_label(k));
                seen.push(*k);
            }
        }
    }

    #[test]
    fn lookup_handles_shift() {
        let ev = |c, m| KeyEvent::new(c, m);
        assert_eq!(
            lookup(&ev(KeyCode::Char('L'), KeyModifiers::SHIFT)),
            Some(Action::SparsityUpFine)
        );
        assert_eq!(
            lookup(&ev(KeyCode::Char('L'), KeyModifiers::NONE)),
            Some(Action::SparsityUpFine)
        );
        assert_eq!(
            lookup(&ev(KeyCode::Right, KeyModifiers::SHIFT)),
            Some(Action::SparsityUpFine)
        );
        assert_eq!(
            lookup(&ev(KeyCode::Right, KeyModifiers::NONE)),
            Some(Action::SparsityUp)
        );
        assert_eq!(
            lookup(&ev(KeyCode::Char('c'), KeyModifiers::CONTROL)),
            Some(Action::Quit)
        );
        assert_eq!(
            lookup(&ev(KeyCode::Char('c'), KeyModifiers::NONE)),
            Some(Action::Pin)
        );
        assert_eq!(lookup(&ev(KeyCode::Char('#'), KeyModifiers::NONE)), None);
        assert_eq!(key_label(&shift(KeyCode::Left)), "⇧←");
    }
}
