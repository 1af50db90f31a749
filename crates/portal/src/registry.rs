//! The targets this portal exports, and the sessions logged in to each.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use iscsi::{Access, AuthPolicy, LoginPolicy};
use scsi::LogicalUnit;
use tokio::sync::watch;

/// Who may log in to a target, and how they authenticate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TargetAccess {
    /// Initiator names allowed to log in and to see the target in discovery;
    /// empty: every initiator.
    pub allowed_initiators: Vec<String>,
    /// CHAP secrets (one-way and mutual); none: no authentication.
    pub auth: AuthPolicy,
}

impl TargetAccess {
    /// Whether `initiator` is on the access list.
    pub fn admits(&self, initiator: &str) -> bool {
        self.allowed_initiators.is_empty()
            || self
                .allowed_initiators
                .iter()
                .any(|a| a.eq_ignore_ascii_case(initiator))
    }
}

/// A normal session logged in to a target, as an administrator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    /// The initiator's name (its IQN).
    pub initiator: String,
    /// The address the initiator connects from.
    pub address: SocketAddr,
}

/// Another node's portal that exports a target too: what SendTargets
/// answers for it (RFC 7143 §13.3, `TargetAddress=<address>,<tag>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Portal {
    /// `host:port` (an IPv6 address in brackets).
    pub address: String,
    /// Its target portal group tag.
    pub tag: u16,
}

/// Which portal serves a target's normal sessions best, for a portal that
/// redirects logins there ([`Targets::set_redirect_logins`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Serving {
    /// This portal (and every target exported by this portal only).
    Here,
    /// Another portal, `host:port` (an IPv6 address in brackets).
    At(String),
    /// No portal is known to serve it now (one is being chosen); initiators
    /// are told to try again later rather than sent where it may be gone.
    Unknown,
}

/// Where else the targets of this portal are exported: the portals of the
/// other nodes of a cluster, which discovery lists beside this one.
pub trait PortalDirectory: Send + Sync {
    /// The portals other than this one through which `target` is exported.
    fn elsewhere(&self, target: &str) -> Vec<Portal>;

    /// The portal that serves normal sessions of `target` best. Never
    /// another portal of this node: a redirection there would come back.
    fn serving(&self, target: &str) -> Serving;
}

/// Why the portal refused a login, as metrics count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusedLogin {
    /// CHAP failed (RFC 7143 status 0201).
    Authentication,
    /// The initiator is not on the target's access list (0202).
    NotAuthorized,
    /// No such target (0203).
    TargetNotFound,
    /// The initiator broke the login protocol (other 02xx statuses).
    Protocol,
    /// The target could not take the login now (03xx statuses).
    Unavailable,
    /// The login did not finish in time.
    Timeout,
    /// Refused at accept: too many connections in all or from one address.
    TooManyConnections,
}

impl RefusedLogin {
    /// Every reason, in the order metrics list them.
    pub const ALL: [RefusedLogin; 7] = [
        RefusedLogin::Authentication,
        RefusedLogin::NotAuthorized,
        RefusedLogin::TargetNotFound,
        RefusedLogin::Protocol,
        RefusedLogin::Unavailable,
        RefusedLogin::Timeout,
        RefusedLogin::TooManyConnections,
    ];

    /// The reason's name in metrics (`reason` label).
    pub fn as_str(self) -> &'static str {
        match self {
            RefusedLogin::Authentication => "authentication",
            RefusedLogin::NotAuthorized => "not_authorized",
            RefusedLogin::TargetNotFound => "target_not_found",
            RefusedLogin::Protocol => "protocol",
            RefusedLogin::Unavailable => "unavailable",
            RefusedLogin::Timeout => "timeout",
            RefusedLogin::TooManyConnections => "too_many_connections",
        }
    }

    /// Why a login that failed with `e` was refused; `None` for a
    /// redirection, which is no refusal.
    pub fn of(e: iscsi::LoginError) -> Option<RefusedLogin> {
        use iscsi::LoginError as E;
        Some(match e {
            E::TargetMoved => return None,
            E::AuthFailed => RefusedLogin::Authentication,
            E::NotAuthorized => RefusedLogin::NotAuthorized,
            E::TargetNotFound => RefusedLogin::TargetNotFound,
            E::Initiator
            | E::UnsupportedVersion
            | E::MissingParameter
            | E::NoSession
            | E::InvalidDuringLogin => RefusedLogin::Protocol,
            E::TargetError | E::ServiceUnavailable => RefusedLogin::Unavailable,
        })
    }
}

/// Tells apart the sessions of a target.
static NEXT_SESSION: AtomicU64 = AtomicU64::new(1);

/// One exported target: its logical units and its live sessions.
pub(crate) struct Target {
    /// LUN 0.
    pub lun0: Arc<LogicalUnit>,
    /// Logged-in normal sessions, by a number of their own.
    sessions: Mutex<BTreeMap<u64, SessionInfo>>,
    /// Flips to true when the target is removed: its sessions close.
    pub removed: watch::Sender<bool>,
    /// Access list and authentication.
    pub access: RwLock<TargetAccess>,
}

impl Target {
    /// Counts a session in until the returned guard is dropped.
    pub(crate) fn logged_in(self: &Arc<Self>, session: SessionInfo) -> LoggedIn {
        let id = NEXT_SESSION.fetch_add(1, Ordering::Relaxed);
        self.sessions.lock().unwrap().insert(id, session);
        LoggedIn {
            target: self.clone(),
            id,
        }
    }
}

/// A session counted in its target; counted out when dropped.
pub(crate) struct LoggedIn {
    target: Arc<Target>,
    id: u64,
}

impl Drop for LoggedIn {
    fn drop(&mut self) {
        self.target.sessions.lock().unwrap().remove(&self.id);
    }
}

/// The set of targets, by IQN. Shared by the portal and the service layer.
#[derive(Default)]
pub struct Targets {
    map: RwLock<BTreeMap<String, Arc<Target>>>,
    /// The portal group tag this portal answers with, once the node set
    /// one; until then the portal's configured one.
    tag: RwLock<Option<u16>>,
    /// Where else the targets are exported (a cluster member's other nodes).
    directory: RwLock<Option<Arc<dyn PortalDirectory>>>,
    /// Whether normal-session logins go to the portal the directory says
    /// serves the target.
    redirect: AtomicBool,
    /// Logins refused, by [`RefusedLogin`] in the order of its `ALL`.
    refused: [AtomicU64; RefusedLogin::ALL.len()],
    /// Told of every refused login (the node's event history).
    refusals: RwLock<Option<RefusalObserver>>,
}

/// Told of a refused login: why, the initiator's name (its address when it
/// gave none), the target it asked for (empty: none).
pub type RefusalObserver = Arc<dyn Fn(RefusedLogin, &str, &str) + Send + Sync>;

impl Targets {
    /// An empty set.
    pub fn new() -> Targets {
        Targets::default()
    }

    /// Exports `lun0` as LUN 0 of target `iqn` (replacing any previous one),
    /// open to every initiator without authentication.
    pub fn insert(&self, iqn: String, lun0: Arc<LogicalUnit>) {
        self.insert_with_access(iqn, lun0, TargetAccess::default());
    }

    /// Exports `lun0` as LUN 0 of target `iqn` with `access`.
    pub fn insert_with_access(&self, iqn: String, lun0: Arc<LogicalUnit>, access: TargetAccess) {
        let t = Arc::new(Target {
            lun0,
            sessions: Mutex::default(),
            removed: watch::channel(false).0,
            access: RwLock::new(access),
        });
        if let Some(old) = self.map.write().unwrap().insert(iqn, t) {
            let _ = old.removed.send(true);
        }
    }

    /// Stops exporting `iqn`; every session logged in to it is closed.
    /// Returns whether it existed.
    pub fn remove(&self, iqn: &str) -> bool {
        match self.map.write().unwrap().remove(iqn) {
            Some(t) => {
                let _ = t.removed.send(true);
                true
            }
            None => false,
        }
    }

    /// Replaces the access rules of `iqn`; sessions already logged in stay.
    /// Returns whether the target exists.
    pub fn set_access(&self, iqn: &str, access: TargetAccess) -> bool {
        match self.get(iqn) {
            Some(t) => {
                *t.access.write().unwrap() = access;
                true
            }
            None => false,
        }
    }

    /// Counts one login refused for `why`, of `initiator` (its name, or
    /// its address when it gave none) to `target` (empty: none named), and
    /// tells the observer.
    pub fn count_refused(&self, why: RefusedLogin, initiator: &str, target: &str) {
        self.refused[why as usize].fetch_add(1, Ordering::Relaxed);
        let observer = self.refusals.read().unwrap().clone();
        if let Some(tell) = observer {
            tell(why, initiator, target);
        }
    }

    /// Tells `observer` of every login refused from now on.
    pub fn observe_refusals(&self, observer: RefusalObserver) {
        *self.refusals.write().unwrap() = Some(observer);
    }

    /// Logins refused since the portal started, by reason.
    pub fn refused_logins(&self) -> [(RefusedLogin, u64); RefusedLogin::ALL.len()] {
        RefusedLogin::ALL.map(|r| (r, self.refused[r as usize].load(Ordering::Relaxed)))
    }

    /// The targets `initiator` may see in discovery, sorted.
    pub fn visible_to(&self, initiator: &str) -> Vec<String> {
        self.map
            .read()
            .unwrap()
            .iter()
            .filter(|(_, t)| t.access.read().unwrap().admits(initiator))
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Number of normal sessions logged in to `iqn`.
    pub fn session_count(&self, iqn: &str) -> usize {
        self.map
            .read()
            .unwrap()
            .get(iqn)
            .map(|t| t.sessions.lock().unwrap().len())
            .unwrap_or(0)
    }

    /// The normal sessions logged in to `iqn`, in the order they logged in.
    pub fn sessions(&self, iqn: &str) -> Vec<SessionInfo> {
        self.map
            .read()
            .unwrap()
            .get(iqn)
            .map(|t| t.sessions.lock().unwrap().values().cloned().collect())
            .unwrap_or_default()
    }

    /// Sets the target portal group tag the portal announces at login and
    /// in discovery from now on (logins under way keep the one they began
    /// with).
    pub fn set_portal_group_tag(&self, tag: u16) {
        *self.tag.write().unwrap() = Some(tag);
    }

    /// The tag set by [`Targets::set_portal_group_tag`], if any.
    pub fn portal_group_tag(&self) -> Option<u16> {
        *self.tag.read().unwrap()
    }

    /// Makes discovery list, beside this portal, the portals `directory`
    /// names for each target.
    pub fn set_directory(&self, directory: Arc<dyn PortalDirectory>) {
        *self.directory.write().unwrap() = Some(directory);
    }

    /// Makes the portal answer a normal-session login for a target that
    /// the directory says another portal serves with a redirection there
    /// (RFC 7143 "target moved temporarily"), and one for a target no
    /// portal is known to serve with "service unavailable". Discovery
    /// sessions and targets served here are not affected; without a
    /// directory nothing is redirected.
    pub fn set_redirect_logins(&self, on: bool) {
        self.redirect.store(on, Ordering::Relaxed);
    }

    /// Whether logins are redirected ([`Targets::set_redirect_logins`]).
    pub fn redirects_logins(&self) -> bool {
        self.redirect.load(Ordering::Relaxed)
    }

    /// Where a normal session of `iqn` logs in when logins are redirected.
    fn serving(&self, iqn: &str) -> Serving {
        if !self.redirect.load(Ordering::Relaxed) {
            return Serving::Here;
        }
        let directory = self.directory.read().unwrap().clone();
        directory.map_or(Serving::Here, |d| d.serving(iqn))
    }

    /// The other portals that export `iqn`, as the directory knows them.
    pub(crate) fn elsewhere(&self, iqn: &str) -> Vec<Portal> {
        let directory = self.directory.read().unwrap().clone();
        directory.map(|d| d.elsewhere(iqn)).unwrap_or_default()
    }

    pub(crate) fn get(&self, iqn: &str) -> Option<Arc<Target>> {
        self.map.read().unwrap().get(iqn).cloned()
    }
}

impl scsi::xcopy::UnitDirectory for Targets {
    fn logical_units(&self) -> Vec<Arc<LogicalUnit>> {
        self.map
            .read()
            .unwrap()
            .values()
            .map(|t| t.lun0.clone())
            .collect()
    }
}

impl LoginPolicy for Targets {
    fn access(&self, initiator: &str, target: Option<&str>) -> Access {
        let Some(name) = target else {
            // Discovery is open; what it shows is filtered per initiator.
            return Access::Allowed(AuthPolicy::default());
        };
        let Some(t) = self.get(name) else {
            return Access::NotFound;
        };
        let access = t.access.read().unwrap();
        if !access.admits(initiator) {
            return Access::Denied;
        }
        // Only an initiator admitted here learns where the target is
        // served; it authenticates there (the rules are the same).
        match self.serving(name) {
            Serving::Here => Access::Allowed(access.auth.clone()),
            Serving::At(address) => Access::Moved(address),
            Serving::Unknown => Access::Unavailable,
        }
    }
}
