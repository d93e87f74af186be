//! The one place the engine asks the CPU what it can run. A kernel that needs an extension of
//! the instruction set holds a token of this module (`Avx512`, `Vbmi`, `Vnni`); tokens are made
//! only here, after the run-time check found the features, so holding one is the proof every
//! call of a `#[target_feature]` kernel rests on. Layers choose their kernels when they are
//! prepared (`kernels::LayerKernels::prepare`), reading `Isa::current()` once.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

static PORTABLE: AtomicBool = AtomicBool::new(false);

/// Makes the kernels prepared from now on portable even on AVX-512 CPUs (`false` restores the
/// run-time choice). Both paths compute the same sums; this exists so tests and benchmarks
/// can exercise and compare the fallback. Layers prepared before keep their kernels.
pub fn force_portable(on: bool) {
    PORTABLE.store(on, Ordering::Relaxed);
}

/// The CPU has AVX-512 F, BW and VL: the vector kernels run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Avx512(());

/// The CPU has AVX-512 VBMI besides `Avx512` (byte permutations across a whole register): the
/// kernels that unpack bit-packed codes in registers run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vbmi(());

/// The CPU has AVX-512 VNNI besides `Avx512` (`vpdpbusd`, four 8-bit products per 32-bit
/// lane): the 8-bit integer kernel runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vnni(());

/// What the kernels prepared now may use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Isa {
    pub avx512: Option<Avx512>,
    pub vbmi: Option<Vbmi>,
    pub vnni: Option<Vnni>,
}

/// What the CPU has, found once: (AVX-512 F/BW/VL, VBMI, VNNI), each implying the first.
fn detected() -> (bool, bool, bool) {
    static FOUND: OnceLock<(bool, bool, bool)> = OnceLock::new();
    *FOUND.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            let base = std::is_x86_feature_detected!("avx512f")
                && std::is_x86_feature_detected!("avx512bw")
                && std::is_x86_feature_detected!("avx512vl");
            (
                base,
                base && std::is_x86_feature_detected!("avx512vbmi"),
                base && std::is_x86_feature_detected!("avx512vnni"),
            )
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            (false, false, false)
        }
    })
}

/// Whether the portable kernels are asked for: `force_portable`, or `SQUEEZE_PORTABLE_KERNELS`
/// in the environment (read once, to compare the paths from the command line).
fn portable() -> bool {
    static FROM_ENV: OnceLock<bool> = OnceLock::new();
    *FROM_ENV.get_or_init(|| std::env::var_os("SQUEEZE_PORTABLE_KERNELS").is_some())
        || PORTABLE.load(Ordering::Relaxed)
}

impl Isa {
    /// The extensions the CPU has, or none when the portable kernels are asked for.
    pub fn current() -> Isa {
        let (avx512, vbmi, vnni) = detected();
        if portable() {
            return Isa::default();
        }
        Isa {
            avx512: avx512.then_some(Avx512(())),
            vbmi: vbmi.then_some(Vbmi(())),
            vnni: vnni.then_some(Vnni(())),
        }
    }
}
