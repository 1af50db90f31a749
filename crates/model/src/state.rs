//! What the model remembers: the committed cluster state, and for each data
//! node its copy, its accepted epoch, its applied view, its lease and its
//! primary role.
//!
//! Every type is `Copy` and of fixed size (up to [`MAX_NODES`] nodes and
//! [`MAX_WRITES`] writes), so the checker clones and hashes states without
//! allocating.

use std::fmt;

/// Most data nodes a model can have.
pub const MAX_NODES: usize = 3;

/// Most writes a model can issue.
pub const MAX_WRITES: usize = 4;

/// Most timed-out commands that may wait to commit at one time.
pub const MAX_PENDING: usize = 2;

/// A data node, by index (0 is `A`, 1 is `B`, 2 is `C`).
pub type NodeId = usize;

/// A write, by id (0 is `w0`, ...): the initiator issues them in order.
pub type WriteId = usize;

/// A set of writes as a bit mask: the contents of a copy, or what was
/// acknowledged.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Writes(u8);

impl Writes {
    /// Whether `w` is in the set.
    pub fn has(self, w: WriteId) -> bool {
        self.0 & (1 << w) != 0
    }

    /// The set with `w` added.
    pub fn with(self, w: WriteId) -> Writes {
        Writes(self.0 | (1 << w))
    }

    /// Both sets together.
    pub fn union(self, other: Writes) -> Writes {
        Writes(self.0 | other.0)
    }

    /// The writes of `self` that `other` lacks.
    pub fn missing_from(self, other: Writes) -> Writes {
        Writes(self.0 & !other.0)
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl fmt::Debug for Writes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set()
            .entries((0..MAX_WRITES).filter(|&w| self.has(w)).map(WriteName))
            .finish()
    }
}

/// Prints a write id as `w0`, `w1`, ...
pub struct WriteName(pub WriteId);

impl fmt::Debug for WriteName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "w{}", self.0)
    }
}

impl fmt::Display for WriteName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "w{}", self.0)
    }
}

/// Prints a node index as `A`, `B`, `C`.
pub struct NodeName(pub NodeId);

impl fmt::Display for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", (b'A' + self.0 as u8) as char)
    }
}

impl fmt::Debug for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A copy's state as the control plane records it (`cluster::ReplicaState`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ReplicaState {
    /// Holds every acknowledged write; may be promoted.
    InSync,
    /// May miss writes; never promoted.
    OutOfSync,
}

/// The volume's record in the control plane after one committed command:
/// the Raft log as a linearizable register, `index` counting its changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Record {
    /// How many commands have changed it (the commit index, refused
    /// commands left out).
    pub index: u8,
    /// The node that is primary.
    pub primary: NodeId,
    /// Grows with every promotion: a change of primary, and every primary
    /// role taking up its own epoch.
    pub epoch: u8,
    /// Each node's copy; slots past the model's node count stay unused.
    pub replicas: [ReplicaState; MAX_NODES],
    /// Per copy, the number of the last state report applied
    /// (`VolumeRecord::reports`).
    pub reports: [u8; MAX_NODES],
}

/// A command a node proposes to the control plane (`cluster::Command`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Command {
    /// The primary of `epoch` reports the state of `node`'s copy: its
    /// `replica_lost` record or its in-sync record. Numbered `seq` (0:
    /// unnumbered).
    SetReplicaState {
        /// The copy reported on.
        node: NodeId,
        /// Its new state.
        state: ReplicaState,
        /// The epoch of the reporting primary role.
        epoch: u8,
        /// Above every report on `node` made before it by the same node.
        seq: u8,
    },
    /// Makes `node` primary at `expected_epoch + 1`; the old primary, if
    /// another node, counts as out of sync from then on.
    Promote {
        /// The new primary (maybe the current one, taking up a new epoch).
        node: NodeId,
        /// The epoch the proposer saw.
        expected_epoch: u8,
    },
}

impl Record {
    /// Applies one committed command as `ClusterState::apply` does; tells
    /// whether it was applied (`false`: refused, the record unchanged).
    pub fn apply(&mut self, command: Command) -> bool {
        match command {
            Command::SetReplicaState {
                node,
                state,
                epoch,
                seq,
            } => {
                // "epoch is stale", "the primary's own copy is in sync by
                // definition", "report overtaken by a later one".
                if epoch != self.epoch
                    || node == self.primary
                    || (seq > 0 && seq <= self.reports[node])
                {
                    return false;
                }
                if seq > 0 {
                    self.reports[node] = seq;
                }
                self.replicas[node] = state;
            }
            Command::Promote {
                node,
                expected_epoch,
            } => {
                if expected_epoch != self.epoch || self.replicas[node] != ReplicaState::InSync {
                    return false;
                }
                if node != self.primary {
                    self.replicas[self.primary] = ReplicaState::OutOfSync;
                }
                self.primary = node;
                self.epoch += 1;
            }
        }
        self.index += 1;
        true
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Command::SetReplicaState {
                node,
                state,
                epoch,
                seq,
            } => {
                let state = match state {
                    ReplicaState::InSync => "in sync",
                    ReplicaState::OutOfSync => "out of sync",
                };
                let node = NodeName(node);
                match seq {
                    0 => write!(f, "report \"{node} {state}\" @{epoch}"),
                    seq => write!(f, "report #{seq} \"{node} {state}\" @{epoch}"),
                }
            }
            Command::Promote {
                node,
                expected_epoch,
            } => write!(f, "promote {} from @{expected_epoch}", NodeName(node)),
        }
    }
}

/// A peer's mode in the primary's memory (`primary.rs`: `IN_SYNC`,
/// `SYNCING`, `OUT_OF_SYNC`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Writes go to it and its failures must be recorded before an ack.
    InSync,
    /// Resync copied the primary's writes to it; writes go to it, its
    /// failures only make it out of sync again.
    Syncing,
    /// Writes skip it (its dirty map grows).
    OutOfSync,
}

/// The primary's knowledge of one peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Peer {
    /// Its mode.
    pub mode: Mode,
    /// A `replica_lost` record of this peer is waiting for the control plane
    /// (the fixed design calls the peer "losing" meanwhile).
    pub recording: bool,
    /// In sync here, not yet recorded so in the control plane (the
    /// primary tries the in-sync record again).
    pub unrecorded: bool,
}

impl Peer {
    /// A peer in `mode`, nothing pending.
    pub fn new(mode: Mode) -> Peer {
        Peer {
            mode,
            recording: false,
            unrecorded: false,
        }
    }
}

/// Where one write in flight stands with one peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Answer {
    /// Not sent: the node itself, or a peer out of sync.
    Skipped,
    /// Sent, no answer yet.
    Sent,
    /// The peer has it, or the peer's loss is recorded.
    Done,
    /// The peer failed it; the write waits for the `replica_lost` record.
    AwaitRecord,
}

/// A write the primary has applied locally and sent to its peers, not yet
/// acknowledged.
pub type InFlight = [Answer; MAX_NODES];

/// A node's primary role for the volume (`Primary`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Role {
    /// The epoch it writes with.
    pub epoch: u8,
    /// A peer answered with a newer epoch: it acknowledges nothing more.
    pub deposed: bool,
    /// What it knows of each peer (its own slot unused).
    pub peers: [Peer; MAX_NODES],
    /// Writes in flight, by write id.
    pub writes: [Option<InFlight>; MAX_WRITES],
}

impl Role {
    /// Whether any write is in flight (the resync barrier waits for none).
    pub fn busy(&self) -> bool {
        self.writes.iter().any(Option::is_some)
    }
}

/// A data node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Node {
    /// Running (not crashed).
    pub up: bool,
    /// Restarted and has not yet held a lease since (kept only in
    /// [`crate::Variant::RestartAsPlainDisk`], the one design that acts on
    /// it).
    pub restarted: bool,
    /// Its lease runs: it may acknowledge writes as primary.
    pub lease: bool,
    /// The committed record as this node last applied it (kept durably;
    /// may lag the committed one).
    pub view: Record,
    /// The newest epoch its copy accepted (kept durably); older ones are
    /// refused.
    pub accepted: u8,
    /// The writes its copy holds (kept durably).
    pub copy: Writes,
    /// Its primary role, if it runs one (lost in a crash).
    pub role: Option<Role>,
    /// The epoch this process promoted itself to, for a role not yet
    /// started (`Clustered::taken_up`; 0: none; lost in a crash).
    pub taken_up: u8,
    /// Per copy, the number of the last state report this process made
    /// (`Control::reports`; lost in a crash).
    pub reported: [u8; MAX_NODES],
}

/// One state of the whole system.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct State {
    /// The control plane has a quorum: heartbeats are answered, commands commit.
    pub control_up: bool,
    /// The committed record.
    pub committed: Record,
    /// The data nodes (slots past the model's node count stay unused).
    pub nodes: [Node; MAX_NODES],
    /// The next write the initiator issues.
    pub next_write: WriteId,
    /// Writes acknowledged to the initiator.
    pub acknowledged: Writes,
    /// Crashes so far.
    pub crashes: u8,
    /// Control-plane outages so far.
    pub outages: u8,
    /// Commands that timed out although the control plane had a quorum.
    pub slow: u8,
    /// Promotions of another node by the leader so far.
    pub failovers: u8,
    /// Of those, promotions whose commit was slow.
    pub slow_failovers: u8,
    /// A promotion the leader decided, not committed yet (a slow commit);
    /// the old primary's heartbeats go unanswered meanwhile.
    pub promoting: Option<Command>,
    /// Timed-out commands that may still commit, in any order (kept sorted,
    /// so that the same commands make the same state).
    pub pending: [Option<Command>; MAX_PENDING],
    /// Timed-out commands so far that were left to commit late.
    pub late: u8,
    /// Set if an epoch or an applied view ever went backwards (history
    /// variable for the "epochs only grow" property).
    pub went_back: bool,
}
