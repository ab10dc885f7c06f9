//! Fuzzing of decoders without a fuzzing engine: a committed corpus of
//! valid encodings (`fuzz/corpus/<target>/` at the workspace root) and a
//! seeded mutator that damages them the ways disks and networks do (bits
//! flipped, bytes overwritten with boundary values, cuts, growth, ranges
//! repeated or moved, splices of two inputs). Every crate with a decoder
//! of untrusted bytes runs its decoders over the corpus and thousands of
//! mutants in its tests (so in `cargo xtask ci`); a decoder must return
//! an error or a value, never panic, loop or allocate without bound.
//!
//! `FUZZ_ITERATIONS` sets the mutants per target (default
//! [`DEFAULT_ITERATIONS`]), `FUZZ_SEED` the first seed;
//! `FUZZ_WRITE_CORPUS=1` makes [`Corpus::load`] write the seed
//! inputs a test passes it (to refresh the committed corpus).

use std::path::PathBuf;

/// Mutants per target when `FUZZ_ITERATIONS` is not set: a few
/// seconds per target in a debug build.
pub const DEFAULT_ITERATIONS: u64 = 3_000;

/// The inputs of one target: the committed corpus, plus the seeds a test
/// gives (valid encodings made by the code under test).
pub struct Corpus {
    /// The target's name (its corpus directory).
    pub target: String,
    /// The inputs.
    pub inputs: Vec<Vec<u8>>,
}

impl Corpus {
    /// The committed corpus of `target` and `seeds`. The workspace root is
    /// found from `CARGO_MANIFEST_DIR` at run time (`crates/<crate>`).
    pub fn load(target: &str, seeds: Vec<Vec<u8>>) -> Corpus {
        let dir = corpus_dir(target);
        if std::env::var_os("FUZZ_WRITE_CORPUS").is_some() {
            let _ = std::fs::create_dir_all(&dir);
            for (i, seed) in seeds.iter().enumerate() {
                let _ = std::fs::write(dir.join(format!("seed-{i:03}.bin")), seed);
            }
        }
        let mut inputs = seeds;
        if let Ok(entries) = std::fs::read_dir(&dir) {
            let mut files: Vec<PathBuf> =
                entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
            files.sort();
            for f in files {
                if let Ok(bytes) = std::fs::read(&f)
                    && !inputs.contains(&bytes)
                {
                    inputs.push(bytes);
                }
            }
        }
        if inputs.is_empty() {
            inputs.push(Vec::new());
        }
        Corpus {
            target: target.to_string(),
            inputs,
        }
    }

    /// Calls `check` on every input and on the configured number of
    /// mutants. A panic in `check` names the target, the seed and the
    /// input (hex), so it can be added to the corpus.
    pub fn run(&self, mut check: impl FnMut(&[u8])) {
        for input in &self.inputs {
            self.guarded(input, "corpus", &mut check);
        }
        let iterations = self.iterations();
        let first = env_u64("FUZZ_SEED").unwrap_or(1);
        for seed in first..first + iterations {
            let mutant = mutate(&self.inputs, seed);
            self.guarded(&mutant, &format!("seed {seed}"), &mut check);
        }
    }

    /// The mutants [`Corpus::run`] makes: `FUZZ_ITERATIONS`, or
    /// [`DEFAULT_ITERATIONS`].
    pub fn iterations(&self) -> u64 {
        env_u64("FUZZ_ITERATIONS").unwrap_or(DEFAULT_ITERATIONS)
    }

    fn guarded(&self, input: &[u8], what: &str, check: &mut impl FnMut(&[u8])) {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(input)));
        if let Err(panic) = outcome {
            let why = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!(
                "fuzz target {} panicked on {what} (FUZZ_SEED and FUZZ_ITERATIONS=1 \
                 rerun it): {why}\ninput ({} bytes): {}",
                self.target,
                input.len(),
                hex(input)
            );
        }
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok()?.parse().ok()
}

fn corpus_dir(target: &str) -> PathBuf {
    let manifest =
        std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(|| PathBuf::from("."), PathBuf::from);
    let root = manifest
        .ancestors()
        .find(|d| d.join("fuzz").join("corpus").is_dir())
        .map_or_else(|| manifest.join("../.."), |d| d.to_path_buf());
    root.join("fuzz").join("corpus").join(target)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().take(512).map(|b| format!("{b:02x}")).collect()
}

/// splitmix64: small, seeded, and the same everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

/// Bytes that make decoders take their edge cases: lengths of 0, 1 and
/// all ones, and the tops of varints and tags.
const INTERESTING: [u8; 8] = [0x00, 0x01, 0x7f, 0x80, 0xff, 0xfe, 0x40, 0x20];

/// A mutant of one of `inputs` (chosen by `seed`), damaged 1 to 4 times.
pub fn mutate(inputs: &[Vec<u8>], seed: u64) -> Vec<u8> {
    let mut rng = Rng(seed);
    let mut out = inputs[rng.below(inputs.len())].clone();
    for _ in 0..1 + rng.below(4) {
        let len = out.len();
        match rng.below(9) {
            0 if len > 0 => {
                let at = rng.below(len);
                out[at] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let at = rng.below(len);
                out[at] = INTERESTING[rng.below(INTERESTING.len())];
            }
            2 if len > 0 => {
                // Eight bytes of all ones or a large number: a length or
                // count field that claims far more than there is.
                let at = rng.below(len);
                let fill = if rng.below(2) == 0 { 0xff } else { 0x7f };
                for b in out.iter_mut().skip(at).take(8) {
                    *b = fill;
                }
            }
            3 => out.truncate(rng.below(len + 1)),
            4 => {
                let extra = rng.below(16) + 1;
                for _ in 0..extra {
                    out.push(rng.next() as u8);
                }
            }
            5 if len > 0 => {
                // Repeat a range.
                let from = rng.below(len);
                let to = from + rng.below(len - from) + 1;
                let piece = out[from..to].to_vec();
                let at = rng.below(len + 1);
                out.splice(at..at, piece);
            }
            6 if len > 1 => {
                // Remove a range.
                let from = rng.below(len);
                let to = from + rng.below(len - from) + 1;
                out.drain(from..to);
            }
            7 => {
                // Splice: this one's head with another's tail.
                let other = &inputs[rng.below(inputs.len())];
                let cut = rng.below(len + 1);
                let from = rng.below(other.len() + 1);
                out.truncate(cut);
                out.extend_from_slice(&other[from..]);
            }
            _ if len > 0 => {
                let at = rng.below(len);
                out[at] = rng.next() as u8;
            }
            _ => out.push(rng.next() as u8),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutants_are_deterministic_and_differ_from_their_inputs() {
        let inputs = vec![b"hello, world".to_vec(), vec![0u8; 40]];
        assert_eq!(mutate(&inputs, 7), mutate(&inputs, 7));
        let changed = (1..200)
            .filter(|s| !inputs.contains(&mutate(&inputs, *s)))
            .count();
        assert!(changed > 180, "only {changed} of 199 mutants differ");
        assert!(mutate(&[Vec::new()], 3).len() < 100);
    }

    /// A decoder that panics on some damage is reported, with the target.
    #[test]
    #[should_panic(expected = "fuzz target planted panicked on seed")]
    fn a_panicking_decoder_is_caught() {
        let corpus = Corpus {
            target: "planted".into(),
            inputs: vec![vec![1, 2, 3, 4]],
        };
        corpus.run(|bytes| assert!(bytes.len() < 6, "too long"));
    }
}
