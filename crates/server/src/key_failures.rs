//! Failed API keys: each is logged with the address it came from, and an address that keeps
//! failing is slowed. After `LIMIT` failures within `WINDOW`, every request from it is answered
//! 429 with `Retry-After` until the oldest of them is a window old. A right key from that address
//! waits too: otherwise guessing could go on, watching which key is let through.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const LIMIT: usize = 10;
pub const WINDOW: Duration = Duration::from_secs(60);
/// Addresses remembered at most, so a flood from many addresses cannot grow the table forever.
const MAX_ADDRESSES: usize = 10_000;

#[derive(Default)]
pub struct KeyFailures {
    /// The times of each address's recent failures, oldest first; at most `LIMIT`.
    recent: Mutex<HashMap<IpAddr, VecDeque<Instant>>>,
}

impl KeyFailures {
    /// How long `address` must wait before it is heard again; None when it need not.
    pub fn retry_after(&self, address: IpAddr, now: Instant) -> Option<Duration> {
        let recent = self.recent.lock().expect("key failures lock");
        let times = recent.get(&bucket(address))?;
        if times.len() < LIMIT {
            return None;
        }
        let free = times[0] + WINDOW;
        (free > now).then(|| free - now)
    }

    /// Counts a failed key from `address`; true when this failure slows the address down.
    pub fn failed(&self, address: IpAddr, now: Instant) -> bool {
        let mut recent = self.recent.lock().expect("key failures lock");
        if recent.len() >= MAX_ADDRESSES && !recent.contains_key(&bucket(address)) {
            recent.retain(|_, times| times.back().is_some_and(|t| now - *t < WINDOW));
            if recent.len() >= MAX_ADDRESSES {
                // Forget the address whose last failure is oldest.
                if let Some(oldest) = recent
                    .iter()
                    .min_by_key(|(_, times)| times.back().copied())
                    .map(|(a, _)| *a)
                {
                    recent.remove(&oldest);
                }
            }
        }
        let times = recent.entry(bucket(address)).or_default();
        while times.front().is_some_and(|t| now - *t >= WINDOW) {
            times.pop_front();
        }
        times.push_back(now);
        while times.len() > LIMIT {
            times.pop_front();
        }
        times.len() == LIMIT
    }
}

/// What failures count against: an IPv6 client commonly holds a whole /64, so it counts as one.
pub fn bucket(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(_) => address,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut segments = v6.segments();
                segments[4..].fill(0);
                IpAddr::V6(segments.into())
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_slowed_after_ten_failures_in_a_minute_and_heard_again_after() {
        let failures = KeyFailures::default();
        let start = Instant::now();
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        // Nine failures spread over more than a minute never reach ten within one.
        for i in 0..9 {
            assert!(!failures.failed(a, start + Duration::from_secs(i * 10)));
        }
        assert!(
            !failures.failed(a, start + Duration::from_secs(95)),
            "the first ones are a minute old"
        );
        assert_eq!(
            failures.retry_after(a, start + Duration::from_secs(95)),
            None
        );
        let later = start + Duration::from_secs(200);
        for i in 0..LIMIT {
            assert_eq!(
                failures.failed(a, later + Duration::from_secs(i as u64)),
                i == LIMIT - 1
            );
        }
        let now = later + Duration::from_secs(10);
        assert_eq!(failures.retry_after(a, now), Some(Duration::from_secs(50)));
        assert_eq!(failures.retry_after(b, now), None, "per address");
        assert_eq!(failures.retry_after(a, later + WINDOW), None);
        // Every address of one IPv6 /64 counts as one; another /64 does not.
        for i in 0..LIMIT {
            let address: IpAddr = format!("fd00:1:2:3::{:x}", i + 1).parse().unwrap();
            failures.failed(address, later);
        }
        let same: IpAddr = "fd00:1:2:3:ffff::9".parse().unwrap();
        let other: IpAddr = "fd00:1:2:4::1".parse().unwrap();
        assert!(failures.retry_after(same, now).is_some());
        assert_eq!(failures.retry_after(other, now), None);
    }

    #[test]
    fn the_table_stays_bounded() {
        let failures = KeyFailures::default();
        let now = Instant::now();
        for i in 0..(MAX_ADDRESSES as u32 + 50) {
            failures.failed(IpAddr::V4(i.into()), now);
        }
        assert!(failures.recent.lock().unwrap().len() <= MAX_ADDRESSES);
    }
}
