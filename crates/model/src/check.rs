//! Running the checker over a [`Protocol`] and telling what it found: how
//! many states it explored, whether it explored all of them, and a path to
//! each discovery, printed step by step between its first and last states.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use stateright::{Checker, CheckerVisitor, Expectation, HasDiscoveries, Model, Path};

use crate::action::Action;
use crate::state::{Answer, Mode, NodeName, Record, ReplicaState, State, WriteName};
use crate::Protocol;

/// What one run of the checker explored and found.
pub struct Exploration {
    /// The model that was checked.
    pub protocol: Protocol,
    /// Distinct states visited.
    pub unique_states: usize,
    /// States generated, repeats included.
    pub states: usize,
    /// Longest path explored, in steps.
    pub max_depth: usize,
    /// Every reachable state was visited: the run did not stop early.
    pub complete: bool,
    /// Wall-clock time of the run.
    pub elapsed: Duration,
    /// A path to each discovery, by property name: a counterexample for an
    /// invariant, an example for a reachability property.
    pub discoveries: BTreeMap<&'static str, Path<State, Action>>,
}

impl Protocol {
    /// Explores every reachable state (breadth first, on every core) and
    /// records a discovery per property.
    pub fn explore_all(self) -> Exploration {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let properties = self.properties().len();
        let mut run = self.run(threads, HasDiscoveries::All, None);
        // Stopping because every property had a discovery is not completing.
        run.complete &= run.discoveries.len() < properties;
        run
    }

    /// Explores breadth first on one thread until every property in
    /// `targets` has a discovery, or until every reachable state was
    /// visited. Each path kept for a target is the first one found, so a
    /// shortest one.
    pub fn find(self, targets: &[&'static str]) -> Exploration {
        let wanted: BTreeSet<&'static str> = targets.iter().copied().collect();
        let first = FirstDiscoveries {
            protocol: self.clone(),
            targets: wanted.clone(),
            found: Arc::new(Mutex::new(BTreeMap::new())),
        };
        let found = first.found.clone();
        let mut run = self.run(1, HasDiscoveries::AllOf(wanted.clone()), Some(first));
        // The checker keeps the last path it saw violate a property; the
        // visitor kept the first.
        run.discoveries
            .extend(found.lock().expect("no visitor panicked").clone());
        run.complete = !wanted.iter().all(|p| run.discoveries.contains_key(p));
        run
    }

    fn run(
        self,
        threads: usize,
        finish_when: HasDiscoveries,
        visitor: Option<FirstDiscoveries>,
    ) -> Exploration {
        let protocol = self.clone();
        let start = Instant::now();
        let mut builder = self.checker().threads(threads).finish_when(finish_when);
        if let Some(v) = visitor {
            builder = builder.visitor(v);
        }
        let checker = builder.spawn_bfs().join();
        let discoveries: BTreeMap<_, _> = checker.discoveries().into_iter().collect();
        Exploration {
            protocol,
            unique_states: checker.unique_state_count(),
            states: checker.state_count(),
            max_depth: checker.max_depth(),
            complete: checker.is_done(),
            elapsed: start.elapsed(),
            discoveries,
        }
    }
}

impl Protocol {
    /// The state `actions` lead to from the initial state; panics naming
    /// the first action that is not possible.
    pub fn replay(&self, actions: &[Action]) -> State {
        actions.iter().fold(self.initial(), |s, &a| {
            self.next_state(&s, a)
                .unwrap_or_else(|| panic!("{a} is not possible in {s:?}"))
        })
    }

    /// Whether the invariant named `property` holds in `state`.
    pub fn holds(&self, property: &'static str, state: &State) -> bool {
        let p = self
            .properties()
            .into_iter()
            .find(|p| p.name == property && p.expectation == Expectation::Always)
            .unwrap_or_else(|| panic!("no invariant is named {property:?}"));
        (p.condition)(self, state)
    }
}

/// Keeps the first path that reaches a discovery of each target property.
struct FirstDiscoveries {
    protocol: Protocol,
    targets: BTreeSet<&'static str>,
    #[allow(clippy::type_complexity)]
    found: Arc<Mutex<BTreeMap<&'static str, Path<State, Action>>>>,
}

impl CheckerVisitor<Protocol> for FirstDiscoveries {
    fn visit(&self, _: &Protocol, path: Path<State, Action>) {
        let state = path.last_state();
        for p in self.protocol.properties() {
            if !self.targets.contains(p.name) {
                continue;
            }
            let discovered = match p.expectation {
                Expectation::Always => !(p.condition)(&self.protocol, state),
                Expectation::Sometimes => (p.condition)(&self.protocol, state),
                Expectation::Eventually => false,
            };
            if discovered {
                let mut found = self.found.lock().expect("no visitor panicked");
                found.entry(p.name).or_insert_with(|| path.clone());
            }
        }
    }
}

impl Exploration {
    /// The invariants (safety properties) with a counterexample.
    pub fn violations(&self) -> Vec<&'static str> {
        crate::properties::INVARIANTS
            .into_iter()
            .filter(|p| self.discoveries.contains_key(p))
            .collect()
    }

    /// The path to the discovery of `property`, step by step, with the state
    /// after each step; `None` if there is none.
    pub fn trace(&self, property: &'static str) -> Option<String> {
        let path = self.discoveries.get(property)?;
        let nodes = self.protocol.bounds.nodes;
        let mut out = format!("{property}: {} steps\n", path.clone().into_actions().len());
        let mut step = 0;
        for (state, action) in path.clone().into_vec() {
            if step == 0 {
                out += &format!("   start        {}\n", Summary { nodes, s: &state });
            }
            if let Some(a) = action {
                step += 1;
                out += &format!("{step:>3}. {a}\n");
            } else if step > 0 {
                out += &format!("   end          {}\n", Summary { nodes, s: &state });
            }
        }
        Some(out)
    }

    /// The trace of [`Exploration::trace`]; panics, naming the run, if
    /// `property` has no discovery.
    pub fn expect_trace(&self, property: &'static str) -> String {
        self.trace(property)
            .unwrap_or_else(|| panic!("no discovery for {property:?}: {self}"))
    }
}

impl fmt::Display for Exploration {
    /// One line: the bounds, the states explored, whether the run was
    /// complete, the violations found.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} {:?}: {} unique states ({} generated, depth {}) in {:.1?}, {}, violated: {:?}",
            self.protocol.variant,
            self.protocol.bounds,
            self.unique_states,
            self.states,
            self.max_depth,
            self.elapsed,
            if self.complete {
                "complete"
            } else {
                "stopped at the discoveries"
            },
            self.violations()
        )
    }
}

/// One state on one line, as the traces print it.
struct Summary<'a> {
    nodes: usize,
    s: &'a State,
}

impl fmt::Display for Summary<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.s;
        let c = &s.committed;
        write!(
            f,
            "control plane {} | committed #{} {}@{} [{}] | acknowledged {:?}",
            if s.control_up { "up" } else { "DOWN" },
            c.index,
            NodeName(c.primary),
            c.epoch,
            replicas(self.nodes, c),
            s.acknowledged
        )?;
        if let Some(promote) = s.promoting {
            write!(f, " | leader proposed {promote}")?;
        }
        for command in s.pending.iter().flatten() {
            write!(f, " | timed out {command}")?;
        }
        for (i, n) in s.nodes.iter().enumerate().take(self.nodes) {
            write!(
                f,
                "\n                {}: {}{}{} view #{} {}@{} accepted {} copy {:?}",
                NodeName(i),
                if n.up { "up" } else { "DOWN" },
                if n.restarted { " restarted" } else { "" },
                if n.lease { " lease" } else { "" },
                n.view.index,
                NodeName(n.view.primary),
                n.view.epoch,
                n.accepted,
                n.copy
            )?;
            if n.taken_up > 0 {
                write!(f, " took up @{}", n.taken_up)?;
            }
            if let Some(r) = &n.role {
                write!(
                    f,
                    " | role@{}{}",
                    r.epoch,
                    if r.deposed { " deposed" } else { "" }
                )?;
                for (p, peer) in r.peers.iter().enumerate().take(self.nodes) {
                    if p != i {
                        let mode = match peer.mode {
                            Mode::InSync => "in-sync",
                            Mode::Syncing => "syncing",
                            Mode::OutOfSync => "out-of-sync",
                        };
                        let losing = if peer.recording { "+recording" } else { "" };
                        let unrecorded = if peer.unrecorded { "+unrecorded" } else { "" };
                        write!(f, " {}:{mode}{unrecorded}{losing}", NodeName(p))?;
                    }
                }
                for (w, answers) in r.writes.iter().enumerate() {
                    let Some(answers) = answers else { continue };
                    write!(f, " {}[", WriteName(w))?;
                    for (p, a) in answers.iter().enumerate().take(self.nodes) {
                        if p != i {
                            let a = match a {
                                Answer::Skipped => "skipped",
                                Answer::Sent => "sent",
                                Answer::Done => "done",
                                Answer::AwaitRecord => "awaits record",
                            };
                            write!(f, "{}:{a}", NodeName(p))?;
                        }
                    }
                    write!(f, "]")?;
                }
            }
        }
        Ok(())
    }
}

/// Each copy's committed state, with the number of the last report on it.
fn replicas(nodes: usize, c: &Record) -> String {
    (0..nodes)
        .map(|i| {
            let st = match c.replicas[i] {
                ReplicaState::InSync => "in",
                ReplicaState::OutOfSync => "out",
            };
            match c.reports[i] {
                0 => format!("{}:{st}", NodeName(i)),
                seq => format!("{}:{st}#{seq}", NodeName(i)),
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
