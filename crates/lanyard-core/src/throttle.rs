//! Sign-in throttling: slow guessing down without letting anyone lock an account for good.
//!
//! Failed attempts are counted in the database, so every instance sees the same counts, under
//! three keys: the account from one address, one address across accounts, and the account from
//! everywhere (with a higher threshold, so an attacker's failures from one network do not hold
//! back the owner on another). Once a key passes its threshold, each further attempt must wait
//! a penalty that doubles with every failure (capped at the key's window); failures older than
//! the window no longer count, so penalties expire. While a penalty runs, even the right
//! password is refused, or the throttle would tell an attacker which guess was right.

use std::net::IpAddr;
use std::time::Duration;

use crate::UnixTime;

/// At most `max` failures per `window` before penalties start.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Limit {
    pub max: u32,
    #[serde(with = "humantime_serde")]
    pub window: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ThrottlePolicy {
    pub per_account_and_ip: Limit,
    pub per_ip: Limit,
    pub per_account: Limit,
    /// The first penalty; each further failure doubles it.
    #[serde(with = "humantime_serde")]
    pub base_penalty: Duration,
}

impl Default for ThrottlePolicy {
    fn default() -> Self {
        Self {
            per_account_and_ip: Limit {
                max: 5,
                window: Duration::from_secs(15 * 60),
            },
            per_ip: Limit {
                max: 30,
                window: Duration::from_secs(5 * 60),
            },
            per_account: Limit {
                max: 100,
                window: Duration::from_secs(3600),
            },
            base_penalty: Duration::from_secs(15),
        }
    }
}

/// One throttling key and its limit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Key {
    pub key: String,
    pub limit: Limit,
}

/// How a counted sign-in attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttemptOutcome {
    Failed,
    Refused,
    Succeeded,
}

/// The failures recorded under a key within its window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Failures {
    pub count: u32,
    pub latest: Option<UnixTime>,
}

impl ThrottlePolicy {
    /// The keys an attempt for `account` (as typed, normalised) from `ip` counts under.
    pub fn keys(&self, account: &str, ip: Option<IpAddr>) -> Vec<Key> {
        // Bound what an attacker can make us store per attempt.
        let account: String = account.trim().to_lowercase().chars().take(64).collect();
        let ip = ip.map_or_else(|| "unknown".to_owned(), network_of);
        vec![
            Key {
                key: format!("account+ip:{account}|{ip}"),
                limit: self.per_account_and_ip,
            },
            Key {
                key: format!("ip:{ip}"),
                limit: self.per_ip,
            },
            Key {
                key: format!("account:{account}"),
                limit: self.per_account,
            },
        ]
    }

    /// How long the attempt must wait, if at all, given each key's recent failures.
    pub fn retry_after(&self, keys: &[(Key, Failures)], now: UnixTime) -> Option<Duration> {
        keys.iter()
            .filter_map(|(k, f)| {
                let over = f.count.checked_sub(k.limit.max)?;
                let penalty = self
                    .base_penalty
                    .saturating_mul(2u32.saturating_pow(over.min(20)))
                    .min(k.limit.window);
                let until = f.latest?.saturating_add(penalty);
                let wait = until.as_secs() - now.as_secs();
                (wait > 0).then(|| Duration::from_secs(wait.unsigned_abs()))
            })
            .max()
    }
}

/// The address as throttling sees it: IPv4 as is (an IPv4-mapped IPv6 address too), IPv6 by
/// its /64, which one subscriber usually holds whole and could otherwise rotate through.
fn network_of(ip: IpAddr) -> String {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
        IpAddr::V4(v4) => v4.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> UnixTime {
        UnixTime::from_secs(s)
    }

    #[test]
    fn penalties_start_at_the_threshold_grow_and_expire() {
        let p = ThrottlePolicy::default();
        let keys = p.keys("Ada", Some("192.0.2.1".parse().unwrap()));
        assert_eq!(keys[0].key, "account+ip:ada|192.0.2.1");
        let with = |count, latest| {
            vec![(
                keys[0].clone(),
                Failures {
                    count,
                    latest: Some(at(latest)),
                },
            )]
        };
        assert_eq!(p.retry_after(&with(4, 100), at(100)), None);
        assert_eq!(
            p.retry_after(&with(5, 100), at(100)),
            Some(Duration::from_secs(15))
        );
        assert_eq!(p.retry_after(&with(5, 100), at(115)), None);
        assert_eq!(
            p.retry_after(&with(6, 100), at(100)),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            p.retry_after(&with(8, 100), at(100)),
            Some(Duration::from_secs(120))
        );
        // Capped at the window: nobody waits longer than 15 minutes for this key.
        assert_eq!(
            p.retry_after(&with(60, 100), at(100)),
            Some(Duration::from_secs(900))
        );
    }

    #[test]
    fn ipv6_addresses_count_by_their_64() {
        let p = ThrottlePolicy::default();
        let a = p.keys("ada", Some("2001:db8:1:2::1".parse().unwrap()));
        let b = p.keys("ada", Some("2001:db8:1:2:ffff::9".parse().unwrap()));
        assert_eq!(a, b);
        assert_eq!(a[1].key, "ip:2001:db8:1:2::/64");
        let mapped = p.keys("ada", Some("::ffff:192.0.2.1".parse().unwrap()));
        assert_eq!(mapped[1].key, "ip:192.0.2.1");
    }

    #[test]
    fn the_longest_wait_wins() {
        let p = ThrottlePolicy::default();
        let keys = p.keys("ada", None);
        let f = |count| Failures {
            count,
            latest: Some(at(0)),
        };
        let list = vec![
            (keys[0].clone(), f(5)),
            (keys[1].clone(), f(32)),
            (keys[2].clone(), f(3)),
        ];
        assert_eq!(p.retry_after(&list, at(0)), Some(Duration::from_secs(60)));
    }
}
