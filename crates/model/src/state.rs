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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
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
    /// How many commands have committed (the commit index).
    pub index: u8,
    /// The node that is primary.
    pub primary: NodeId,
    /// Grows with every change of primary.
    pub epoch: u8,
    /// Each node's copy; slots past the model's node count stay unused.
    pub replicas: [ReplicaState; MAX_NODES],
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

/// A node's primary role for the volume (`ReplicatedVolume`).
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
    /// Restarted and has not yet held a lease since.
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
}

/// A command the control plane neither committed nor refused in time: its
/// proposer gave up on it, and it may still commit later.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Undecided {
    /// The copy whose state it sets.
    pub peer: NodeId,
    /// The state it sets.
    pub state: ReplicaState,
    /// The epoch of the primary that proposed it.
    pub epoch: u8,
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
    /// A timed-out command that may still commit.
    pub undecided: Option<Undecided>,
    /// Timed-out commands so far that were left to commit late.
    pub late: u8,
    /// Set if an epoch or an applied view ever went backwards (history
    /// variable for the "epochs only grow" property).
    pub went_back: bool,
}
