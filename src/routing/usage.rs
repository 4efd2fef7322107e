//! Where an answer's usage is settled, for unary and streamed answers alike: its cost from the
//! answering deployment's price, its tokens in the token and cost metrics, and a stream's
//! output tokens in the deployment's usage minute (`tpm`). Per-caller accounting (budgets,
//! spend) goes here too: this is the one place that sees every answer's usage with the
//! deployment it came from.

use super::health::Tracker;
use crate::config::Deployment;
use crate::proto::Usage;

/// A whole answer came back (a unary answer, or a stream that finished): prices its usage and
/// counts it in the metrics.
pub fn answered(tracker: &Tracker, usage: &mut Usage) {
    let d = tracker.deployment();
    price(d, usage);
    tracker
        .health
        .metrics
        .tokens(&d.group, &d.id, tracker.caller.label(), usage);
}

/// A streamed attempt let go of its deployment (finished, broken or abandoned): the output
/// tokens the provider reported count in the deployment's usage this minute, on top of the
/// prompt's estimate counted when the attempt began. (A unary answer's output tokens do not
/// count there: only its prompt's estimate does, as before.)
pub fn released(tracker: &Tracker, usage: Option<&Usage>) {
    if let Some(u) = usage {
        tracker.add_tokens(u64::from(u.completion_tokens));
    }
}

/// Sets what an answer cost, when its deployment has a price.
fn price(d: &Deployment, usage: &mut Usage) {
    usage.cost_usd = d
        .cost
        .map(|c| c.of(usage.prompt_tokens, usage.completion_tokens));
}
