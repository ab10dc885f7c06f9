//! Keys and values as etcd's benchmark makes them: a key is a number of
//! the key space written into `key_size` bytes, at random or in order.

/// A small, fast generator (splitmix64): the load needs spread, not
/// secrecy.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator for client `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03)
    }

    /// The next number.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..1`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Picks the keys of one client.
#[derive(Clone, Debug)]
pub struct Keys {
    rng: Rng,
    size: usize,
    space: u64,
    /// The next key in order (sequential keys only).
    next: Option<u64>,
}

impl Keys {
    /// Keys of `size` bytes from `0..space`; `sequential` starts client
    /// `client` of `clients` at its share of the space.
    pub fn new(client: usize, clients: usize, size: usize, space: u64, sequential: bool) -> Keys {
        let space = space.max(1);
        Keys {
            rng: Rng::new(client as u64 + 1),
            size: size.max(1),
            space,
            next: sequential.then(|| space / clients.max(1) as u64 * client as u64),
        }
    }

    /// The next key.
    pub fn next_key(&mut self) -> Vec<u8> {
        let n = match &mut self.next {
            Some(next) => {
                let n = *next % self.space;
                *next += 1;
                n
            }
            None => self.rng.next_u64() % self.space,
        };
        key_bytes(n, self.size)
    }

    /// The generator, for other choices of the client.
    pub fn rng(&mut self) -> &mut Rng {
        &mut self.rng
    }
}

/// Number `n` as a key of `size` bytes: big-endian, the low bytes kept
/// when `size` is under 8, zeros in front when over.
pub fn key_bytes(n: u64, size: usize) -> Vec<u8> {
    let be = n.to_be_bytes();
    if size >= 8 {
        let mut k = vec![0; size - 8];
        k.extend_from_slice(&be);
        k
    } else {
        be[8 - size..].to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_their_size_and_stay_in_the_space() {
        assert_eq!(key_bytes(1, 8), vec![0, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(key_bytes(0x0102, 2), vec![1, 2]);
        assert_eq!(key_bytes(5, 10).len(), 10);
        let mut k = Keys::new(0, 1, 8, 10, false);
        for _ in 0..1000 {
            let key = k.next_key();
            let n = u64::from_be_bytes(key.try_into().expect("8 bytes"));
            assert!(n < 10);
        }
        let mut s = Keys::new(1, 2, 8, 100, true);
        assert_eq!(s.next_key(), key_bytes(50, 8));
        assert_eq!(s.next_key(), key_bytes(51, 8));
    }
}
