//! Who may call, as the config says (`auth:` and `callers:`): how a caller is recognised (a
//! proven identity, or an API key), and what each may use. The API layer proves identities
//! and matches keys against these; routing applies the policies.
//!
//! Keys are held only as SHA-256 digests: the config names a key's source
//! (`os.environ/NAME`, `file:PATH`) or its digest (`sha256:HEX`), and the key itself is
//! hashed as soon as it is read. A presented key is hashed and compared with every digest in
//! constant time, so neither a match nor its position shows in how long the check takes.

use std::{
    collections::{BTreeSet, HashMap},
    fmt,
    net::IpAddr,
    sync::Arc,
    time::Duration,
};

/// A SHA-256 digest of an API key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct KeyDigest(pub [u8; 32]);

impl KeyDigest {
    pub fn of(key: &[u8]) -> Self {
        let d = ring::digest::digest(&ring::digest::SHA256, key);
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        KeyDigest(out)
    }

    /// Equality that takes the same time wherever the digests differ.
    fn same(&self, other: &KeyDigest) -> bool {
        let mut diff = 0u8;
        for (a, b) in self.0.iter().zip(other.0.iter()) {
            diff |= a ^ b;
        }
        std::hint::black_box(diff) == 0
    }
}

impl fmt::Debug for KeyDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A digest is not the key, but there is no reason to print it either.
        f.write_str("KeyDigest(<redacted>)")
    }
}

/// How callers are told apart and what each may use. `Auth::default()` is today's
/// behaviour: nobody is identified, every call may use everything.
#[derive(Debug, Clone, Default)]
pub struct Auth {
    /// `auth.required`: a call without a recognised caller is refused UNAUTHENTICATED.
    /// Default false: such a call is served with no policy, as before callers existed.
    pub required: bool,
    /// `auth.reflection`: `authenticated` limits server reflection to recognised callers.
    pub reflection_requires_auth: bool,
    /// `auth.trusted_header`: a proxy's header that names the caller, believed only from
    /// the listed peers.
    pub trusted_header: Option<TrustedHeader>,
    /// `callers`, in file order.
    pub callers: Vec<Arc<CallerPolicy>>,
    /// `auth.default`: the policy of a proven identity that no caller lists.
    pub default: Option<Arc<CallerPolicy>>,
    keys: Vec<(KeyDigest, usize)>,
    identities: HashMap<String, usize>,
    /// The files keys were read from (`file:PATH`): a reload watches them with the config.
    pub key_files: Vec<std::path::PathBuf>,
}

/// A header that carries the caller's identity, set by a proxy in front of the router.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedHeader {
    /// The header's name, lower case.
    pub name: String,
    pub format: HeaderFormat,
    /// Peers (the sidecar, the gateway) whose header is believed; from any other peer the
    /// header is ignored.
    pub trusted_peers: Vec<Cidr>,
}

/// How a trusted header names the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderFormat {
    /// Envoy's and Istio's `x-forwarded-client-cert`: the `URI=` field of its last element
    /// (the one the nearest proxy added).
    Xfcc,
    /// The whole value is the identity (Linkerd's `l5d-client-id`, or a named header).
    Plain,
}

/// An address range: `10.0.0.0/8`, `127.0.0.1/32`, `::1/128`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("`{s}` is not an address or CIDR range"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("`{s}` has a prefix length outside 0..={max}"))?,
        };
        Ok(Cidr { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        // A v4 peer may arrive as a v4-mapped v6 address on a dual-stack socket.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// What one caller may use, and how much.
#[derive(Debug, Clone, PartialEq)]
pub struct CallerPolicy {
    /// The caller's name: its label in metrics, logs and traces. `default` for the policy
    /// of identities no caller lists. Shared, so that a call names its caller without a copy.
    pub name: Arc<str>,
    /// Identities (SPIFFE ids, certificate names, trusted-header values) that are this caller.
    pub identities: Vec<String>,
    /// How many API keys it has (the digests are held by [`Auth`]).
    pub key_count: usize,
    /// `models`: the groups it may call, by group name (aliases resolved); `None` for every
    /// group.
    pub models: Option<BTreeSet<String>>,
    /// `rpm_limit`: calls per wall-clock minute.
    pub rpm_limit: Option<u64>,
    /// `tpm_limit`: tokens (estimated prompt tokens, settled with the real usage) per minute.
    pub tpm_limit: Option<u64>,
    /// `max_parallel_requests`: calls in flight at once, committed streams included.
    pub max_parallel_requests: Option<u32>,
    /// `max_budget` per `budget_duration`, in USD of the config's prices.
    pub budget: Option<Budget>,
    pub knobs: Knobs,
}

/// A spend limit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Budget {
    /// `max_budget`, USD.
    pub max_usd: f64,
    /// `budget_duration`.
    pub period: BudgetPeriod,
}

/// The periods a budget is counted in: fixed windows that every replica agrees on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BudgetPeriod {
    /// Windows of this length from the Unix epoch (`30s`, `1h`, `7d`).
    Fixed(Duration),
    /// This many calendar months, UTC, from January 1970 (`1mo`, `3mo`).
    Months(u32),
}

impl BudgetPeriod {
    /// `30s`, `30m`, `24h`, `30d`, `1mo`: LiteLLM's `budget_duration` forms (a number and
    /// one unit).
    pub fn parse(s: &str) -> Result<BudgetPeriod, String> {
        let s = s.trim();
        let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (n, unit) = s.split_at(digits);
        let n: u64 =
            n.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                format!("`{s}` is not a budget duration (30s, 30m, 24h, 30d, 1mo)")
            })?;
        let secs = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            "mo" => {
                return u32::try_from(n)
                    .ok()
                    .filter(|n| *n <= 120)
                    .map(BudgetPeriod::Months)
                    .ok_or_else(|| format!("`{s}`: at most 120 months"));
            }
            _ => {
                return Err(format!(
                    "`{s}` has unknown unit `{unit}` (use s, m, h, d or mo)"
                ));
            }
        };
        let total = n
            .checked_mul(secs)
            .filter(|t| *t <= 10 * 366 * 86_400)
            .ok_or_else(|| format!("`{s}`: at most ten years"))?;
        Ok(BudgetPeriod::Fixed(Duration::from_secs(total)))
    }

    /// The period that `unix_secs` falls in, and when it ends (seconds since the epoch).
    pub fn window(&self, unix_secs: u64) -> (u64, u64) {
        match *self {
            BudgetPeriod::Fixed(len) => {
                let len = len.as_secs().max(1);
                let index = unix_secs / len;
                (index, (index + 1).saturating_mul(len))
            }
            BudgetPeriod::Months(n) => {
                let days = unix_secs / 86_400;
                let (year, month) = civil_month(days);
                let months = (year - 1970) * 12 + u64::from(month - 1);
                let index = months / u64::from(n);
                let end = (index + 1) * u64::from(n);
                let (ey, em) = (1970 + end / 12, (end % 12) as u32 + 1);
                (index, days_from_civil(ey, em) * 86_400)
            }
        }
    }

    pub fn name(&self) -> String {
        match *self {
            BudgetPeriod::Fixed(d) => {
                let secs = d.as_secs();
                let (n, unit) = [(86_400, "d"), (3600, "h"), (60, "m")]
                    .into_iter()
                    .find(|(u, _)| secs % u == 0)
                    .map_or((secs, "s"), |(u, name)| (secs / u, name));
                format!("{n}{unit}")
            }
            BudgetPeriod::Months(n) => format!("{n}mo"),
        }
    }
}

/// The year and month (1..=12) of a day counted from 1970-01-01 (Howard Hinnant's
/// civil-from-days, for days after the epoch).
fn civil_month(days: u64) -> (u64, u32) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month)
}

/// Days from 1970-01-01 to the first of `month` in `year` (the inverse of [`civil_month`]).
fn days_from_civil(year: u64, month: u32) -> u64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y / 400;
    let yoe = y - era * 400;
    let m = u64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A UTC date and time, for messages (`2026-12-31T00:00:00Z`).
pub fn utc(unix_secs: u64) -> String {
    let days = unix_secs / 86_400;
    let (year, month) = civil_month(days);
    let day = days - days_from_civil(year, month) + 1;
    let s = unix_secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// The request switches a caller may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Knobs {
    /// `mock_timeout` and `mock_response` (which the router must allow as well). Default
    /// false: a test switch, not for a shared service's callers unless granted.
    pub mock: bool,
    /// A request's own `fallbacks`. Default true.
    pub fallbacks: bool,
    /// The highest `num_retries` a request may ask for. Default 10, the API's own bound.
    pub max_num_retries: u32,
    /// A request's own `stream_recovery`. Default true.
    pub stream_recovery: bool,
    /// Hedged attempts where a group hedges; false turns them off for this caller's calls.
    /// Default true.
    pub hedging: bool,
}

impl Default for Knobs {
    fn default() -> Self {
        Knobs {
            mock: false,
            fallbacks: true,
            max_num_retries: MAX_NUM_RETRIES,
            stream_recovery: true,
            hedging: true,
        }
    }
}

/// The API's bound on a request's `num_retries`.
pub const MAX_NUM_RETRIES: u32 = 10;

impl CallerPolicy {
    /// A policy named `name` with no identities, limits or group list, and the default
    /// switches: what tests start from.
    #[cfg(test)]
    pub(crate) fn unlimited(name: &str) -> Self {
        CallerPolicy {
            name: name.into(),
            identities: Vec::new(),
            key_count: 0,
            models: None,
            rpm_limit: None,
            tpm_limit: None,
            max_parallel_requests: None,
            budget: None,
            knobs: Knobs::default(),
        }
    }

    /// Whether the caller may call `group` (a group's name, not an alias).
    pub fn allows_group(&self, group: &str) -> bool {
        self.models.as_ref().is_none_or(|m| m.contains(group))
    }
}

impl Auth {
    /// Assembles validated parts; `keys` pairs each digest with its caller's index.
    pub(super) fn new(
        required: bool,
        reflection_requires_auth: bool,
        trusted_header: Option<TrustedHeader>,
        callers: Vec<Arc<CallerPolicy>>,
        default: Option<Arc<CallerPolicy>>,
        keys: Vec<(KeyDigest, usize)>,
        key_files: Vec<std::path::PathBuf>,
    ) -> Auth {
        let identities = callers
            .iter()
            .enumerate()
            .flat_map(|(i, c)| c.identities.iter().map(move |id| (id.clone(), i)))
            .collect();
        Auth {
            required,
            reflection_requires_auth,
            trusted_header,
            callers,
            default,
            keys,
            identities,
            key_files,
        }
    }

    /// Whether anything tells callers apart: when not, every call is anonymous and nothing
    /// about the caller is read.
    pub fn is_off(&self) -> bool {
        !self.required && self.callers.is_empty() && self.default.is_none()
    }

    /// The caller whose key digest is `presented`'s. Every digest is compared, whatever
    /// matches, in constant time each.
    pub fn caller_by_key(&self, presented: &[u8]) -> Option<&Arc<CallerPolicy>> {
        let digest = KeyDigest::of(presented);
        let mut found = None;
        for (d, caller) in &self.keys {
            if d.same(&digest) {
                found = Some(*caller);
            }
        }
        found.map(|i| &self.callers[i])
    }

    /// The caller a proven identity names, if one lists it.
    pub fn caller_by_identity(&self, identity: &str) -> Option<&Arc<CallerPolicy>> {
        self.identities.get(identity).map(|i| &self.callers[*i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_match_their_ranges_and_mapped_v4() {
        let c = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(c.contains("10.1.200.3".parse().unwrap()));
        assert!(!c.contains("10.2.0.1".parse().unwrap()));
        assert!(c.contains("::ffff:10.1.0.9".parse().unwrap()));
        let one = Cidr::parse("127.0.0.6").unwrap();
        assert!(one.contains("127.0.0.6".parse().unwrap()));
        assert!(!one.contains("127.0.0.1".parse().unwrap()));
        assert!(
            Cidr::parse("0.0.0.0/0")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
        assert!(
            Cidr::parse("::1/128")
                .unwrap()
                .contains("::1".parse().unwrap())
        );
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("host/8").is_err());
    }

    #[test]
    fn budget_periods_are_fixed_windows_or_calendar_months() {
        assert_eq!(
            BudgetPeriod::parse("30d").unwrap(),
            BudgetPeriod::Fixed(Duration::from_secs(30 * 86_400))
        );
        assert_eq!(BudgetPeriod::parse("1mo").unwrap(), BudgetPeriod::Months(1));
        for bad in ["", "0d", "5", "3w", "-1h", "99999999999d", "500mo"] {
            assert!(BudgetPeriod::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(BudgetPeriod::parse("30d").unwrap().name(), "30d");
        assert_eq!(BudgetPeriod::parse("90m").unwrap().name(), "90m");
        assert_eq!(BudgetPeriod::parse("61s").unwrap().name(), "61s");
        let hour = BudgetPeriod::parse("1h").unwrap();
        assert_eq!(hour.window(7200 + 5), (2, 3 * 3600));
        // 2026-12-03T13:00:00Z is in December 2026; the month ends 2027-01-01.
        let t = 1_796_302_800;
        assert_eq!(utc(t), "2026-12-03T13:00:00Z");
        let (_, end) = BudgetPeriod::Months(1).window(t);
        assert_eq!(utc(end), "2027-01-01T00:00:00Z");
        let (_, end) = BudgetPeriod::Months(3).window(t);
        assert_eq!(utc(end), "2027-01-01T00:00:00Z");
        let (_, end) = BudgetPeriod::Months(1).window(end);
        assert_eq!(utc(end), "2027-02-01T00:00:00Z");
        assert_eq!(
            utc(days_from_civil(2024, 3) * 86_400),
            "2024-03-01T00:00:00Z"
        );
    }

    #[test]
    fn keys_match_by_digest() {
        let policy = |name: &str| {
            Arc::new(CallerPolicy {
                identities: vec![format!("spiffe://t/{name}")],
                key_count: 1,
                ..CallerPolicy::unlimited(name)
            })
        };
        let auth = Auth::new(
            true,
            false,
            None,
            vec![policy("a"), policy("b")],
            None,
            vec![
                (KeyDigest::of(b"key-of-a-0123456789"), 0),
                (KeyDigest::of(b"key-of-b-0123456789"), 1),
            ],
            Vec::new(),
        );
        assert_eq!(
            &*auth.caller_by_key(b"key-of-b-0123456789").unwrap().name,
            "b"
        );
        assert!(auth.caller_by_key(b"key-of-b-012345678").is_none());
        assert!(auth.caller_by_key(b"").is_none());
        assert_eq!(&*auth.caller_by_identity("spiffe://t/a").unwrap().name, "a");
        assert!(auth.caller_by_identity("spiffe://t/c").is_none());
        assert!(!format!("{auth:?}").contains("key-of"));
    }
}
