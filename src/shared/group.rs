//! One counter group of an entry as this replica syncs it: what it counted since the last
//! sync (sent next time), its own counts as the store holds them, and the other replicas'
//! counts as last read. The store's side of the same bookkeeping is `sync.lua`'s `merge`.

/// `N` counts in one window (a minute, a budget period). Counts are `f64` so that one type
/// carries both whole counts (exact far past any minute's requests or tokens) and dollars.
#[derive(Debug, Clone)]
pub struct Group<const N: usize> {
    /// The window `pending` was counted in.
    pending_window: u64,
    /// Counted here since the last sync that went through.
    pending: [f64; N],
    /// The store's tag ("window:generation:epoch") that `own` is in; empty before the first
    /// sync.
    seen: String,
    /// This replica's counts in `seen`, as the store holds them.
    own: [f64; N],
    /// The other replicas' counts and the window they are of; `None` while unknown (before
    /// the first sync, and while the store is away): this replica then counts alone.
    others: Option<(u64, [f64; N])>,
}

/// What one sync sent of a group: put back if the sync failed.
#[derive(Debug, Clone, Copy)]
pub struct Sent<const N: usize> {
    window: u64,
    delta: [f64; N],
}

impl<const N: usize> Default for Group<N> {
    fn default() -> Self {
        Group {
            pending_window: 0,
            pending: [0.0; N],
            seen: String::new(),
            own: [0.0; N],
            others: None,
        }
    }
}

impl<const N: usize> Group<N> {
    /// Counts `delta` in `window`. Counts of an earlier window not yet sent are dropped: that
    /// window has ended, and nothing is judged by it any more.
    pub fn add(&mut self, window: u64, delta: [f64; N]) {
        self.move_to(window);
        for (p, d) in self.pending.iter_mut().zip(delta) {
            *p += d;
        }
    }

    fn move_to(&mut self, window: u64) {
        if window != self.pending_window {
            self.pending_window = window;
            self.pending = [0.0; N];
        }
    }

    /// The other replicas' counts in `window` (none when they are of another window, or
    /// unknown).
    pub fn others_in(&self, window: u64) -> [f64; N] {
        match self.others {
            Some((w, counts)) if w == window => counts,
            _ => [0.0; N],
        }
    }

    /// What to send for `window`: the script's arguments (window, seen tag or `-`, own
    /// counts, delta), each after a space, and the delta taken out of `pending` until the sync
    /// settles.
    pub fn take(&mut self, window: u64, args: &mut String) -> Sent<N> {
        use std::fmt::Write as _;
        self.move_to(window);
        let delta = std::mem::replace(&mut self.pending, [0.0; N]);
        let seen = if self.seen.is_empty() {
            "-"
        } else {
            &self.seen
        };
        let _ = write!(args, " {window} {seen}");
        for v in self.own.iter().chain(&delta) {
            args.push(' ');
            number(*v, args);
        }
        Sent { window, delta }
    }

    /// The sync that carried `sent` failed: its counts wait for the next one, and the other
    /// replicas' counts are unknown until then.
    pub fn restore(&mut self, sent: Sent<N>) {
        if sent.window == self.pending_window {
            for (p, d) in self.pending.iter_mut().zip(sent.delta) {
                *p += d;
            }
        }
        self.others = None;
    }

    /// The store's answer: the tag, the others' counts and this replica's own.
    pub fn settle(&mut self, tag: String, others: [f64; N], own: [f64; N]) {
        let window = tag
            .split(':')
            .next()
            .and_then(|w| w.parse().ok())
            .unwrap_or(u64::MAX);
        self.others = Some((window, others));
        self.seen = tag;
        self.own = own;
    }
}

/// A count as the script reads it: whole numbers without a fraction (HINCRBY takes only
/// those), dollars with every digit.
fn number(v: f64, out: &mut String) {
    use std::fmt::Write as _;
    let _ = if v.fract() == 0.0 && v.abs() < 9.0e15 {
        write!(out, "{}", v as i64)
    } else {
        write!(out, "{v:?}")
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_sync_puts_its_counts_back_and_an_ended_window_drops_them() {
        let mut g = Group::<2>::default();
        g.add(7, [1.0, 30.0]);
        let mut args = String::new();
        let sent = g.take(7, &mut args);
        assert_eq!(args, " 7 - 0 0 1 30");
        g.add(7, [1.0, 5.0]);
        g.restore(sent);
        let mut args = String::new();
        g.take(7, &mut args);
        assert_eq!(args, " 7 - 0 0 2 35");
        // Counted in minute 7, sent in minute 8: minute 7 is over.
        g.add(7, [1.0, 1.0]);
        let mut args = String::new();
        g.take(8, &mut args);
        assert_eq!(args, " 8 - 0 0 0 0");
    }

    #[test]
    fn others_count_only_in_their_window() {
        let mut g = Group::<1>::default();
        assert_eq!(g.others_in(5), [0.0]);
        g.settle("5:0".into(), [3.0], [1.0]);
        assert_eq!(g.others_in(5), [3.0]);
        assert_eq!(g.others_in(6), [0.0]);
        let mut args = String::new();
        let sent = g.take(5, &mut args);
        assert_eq!(args, " 5 5:0 1 0");
        // A failed sync: the others' counts are unknown until the next one goes through.
        g.restore(sent);
        assert_eq!(g.others_in(5), [0.0]);
        let mut s = String::new();
        number(0.25, &mut s);
        assert_eq!(s, "0.25");
    }
}
