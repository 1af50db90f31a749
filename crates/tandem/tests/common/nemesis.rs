//! Fault schedules in the spirit of Jepsen's nemesis: a few faults, each on
//! its own member of the cluster (data node or witness), starting at random
//! moments and healed after random spans, drawn from a seeded generator so
//! that a seed replays the same schedules.

use std::fmt;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;

/// What happens to a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL; started again when healed.
    Kill,
    /// SIGSTOP; SIGCONT when healed.
    Pause,
    /// SIGTERM, a clean exit, and a start at once (nothing left to heal).
    Restart,
    /// Its network link goes down; up again when healed.
    Cut,
}

impl Fault {
    const ALL: [Fault; 4] = [Fault::Kill, Fault::Pause, Fault::Restart, Fault::Cut];

    fn verb(self) -> &'static str {
        match self {
            Fault::Kill => "kill -9",
            Fault::Pause => "SIGSTOP",
            Fault::Restart => "clean restart of",
            Fault::Cut => "cut the link of",
        }
    }
}

/// One fault of a schedule.
#[derive(Debug, Clone)]
pub struct Step {
    /// Index of the member in the schedule's member list.
    pub member: usize,
    /// The fault.
    pub fault: Fault,
    /// When it starts, from the start of the schedule.
    pub at: Duration,
    /// How long until it is healed (a clean restart heals itself).
    pub lasts: Duration,
}

/// One action of a schedule's timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// The fault starts.
    Begin,
    /// The fault is healed.
    Heal,
}

/// A fault schedule: up to three faults on distinct members.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// Names of the members, by index.
    pub members: Vec<String>,
    /// The faults, by start time.
    pub steps: Vec<Step>,
}

impl Schedule {
    /// One to `max_faults` faults (at most one per member) starting within
    /// `span`, each lasting between `shortest` and `longest`.
    pub fn random(
        rng: &mut StdRng,
        members: &[&str],
        max_faults: usize,
        span: Duration,
        shortest: Duration,
        longest: Duration,
    ) -> Schedule {
        let n = rng.gen_range(1..=max_faults.min(members.len()));
        let mut who: Vec<usize> = (0..members.len()).collect();
        who.shuffle(rng);
        let ms = |d: Duration| d.as_millis() as u64;
        let mut steps: Vec<Step> = who[..n]
            .iter()
            .map(|&member| {
                let fault = *Fault::ALL.choose(rng).expect("faults");
                Step {
                    member,
                    fault,
                    at: Duration::from_millis(rng.gen_range(0..=ms(span))),
                    lasts: match fault {
                        Fault::Restart => Duration::ZERO,
                        _ => Duration::from_millis(rng.gen_range(ms(shortest)..=ms(longest))),
                    },
                }
            })
            .collect();
        steps.sort_by_key(|s| s.at);
        Schedule {
            members: members.iter().map(|m| m.to_string()).collect(),
            steps,
        }
    }

    /// Every begin and heal in time order: (when, step, action).
    pub fn timeline(&self) -> Vec<(Duration, &Step, Action)> {
        let mut t: Vec<(Duration, &Step, Action)> = Vec::new();
        for s in &self.steps {
            t.push((s.at, s, Action::Begin));
            if s.fault != Fault::Restart {
                t.push((s.at + s.lasts, s, Action::Heal));
            }
        }
        // Begins before heals at the same moment.
        t.sort_by_key(|&(at, _, a)| (at, a == Action::Heal));
        t
    }

    /// How a step reads in reports.
    pub fn describe(&self, s: &Step) -> String {
        format!("{} {}", s.fault.verb(), self.members[s.member])
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let steps: Vec<String> = self
            .steps
            .iter()
            .map(|s| match s.fault {
                Fault::Restart => format!("{} at {:.2} s", self.describe(s), s.at.as_secs_f64()),
                _ => format!(
                    "{} at {:.2} s for {:.2} s",
                    self.describe(s),
                    s.at.as_secs_f64(),
                    s.lasts.as_secs_f64()
                ),
            })
            .collect();
        write!(f, "{}", steps.join("; "))
    }
}
