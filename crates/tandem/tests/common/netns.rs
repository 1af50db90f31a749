//! Hosts with real addresses for multi-node tests: one network namespace per
//! host, each with a veth link into a bridge in this namespace, where the
//! test's clients run. Links are cut with `ip link set ... down`; a host is
//! partitioned from chosen peers with nftables rules inside its namespace
//! (the clients still reach it). Everything is removed on drop.

use std::process::Command;

/// A private network of hosts.
pub struct Lan {
    tag: String,
    net: String,
    hosts: usize,
}

fn ip(args: &[&str]) -> Result<(), String> {
    run("ip", args)
}

fn run(cmd: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {cmd}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Lan {
    /// Sets up `hosts` namespaces on a bridge. Fails when this machine
    /// cannot make namespaces (not root, no iproute2, no veth/bridge).
    pub fn new(hosts: usize) -> Result<Lan, String> {
        // Unique per process, so concurrent tests do not collide.
        let pid = std::process::id();
        let lan = Lan {
            tag: format!("td{}", pid % 100_000),
            net: format!("10.{}.{}", 100 + (pid / 256) % 100, pid % 256),
            hosts,
        };
        // On failure, dropping `lan` removes what was made.
        lan.bring_up()?;
        Ok(lan)
    }

    fn bring_up(&self) -> Result<(), String> {
        let hosts = self.hosts;
        let br = self.bridge();
        let _ = ip(&["link", "del", &br]);
        ip(&["link", "add", &br, "type", "bridge"])?;
        ip(&["addr", "add", &format!("{}/24", self.gateway()), "dev", &br])?;
        ip(&["link", "set", &br, "up"])?;
        for i in 0..hosts {
            let ns = self.ns(i);
            let veth = self.veth(i);
            let _ = ip(&["netns", "del", &ns]);
            ip(&["netns", "add", &ns])?;
            ip(&[
                "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ])?;
            ip(&["link", "set", &veth, "master", &br, "up"])?;
            let inside = |args: &[&str]| {
                let mut all = vec!["netns", "exec", &ns, "ip"];
                all.extend_from_slice(args);
                ip(&all)
            };
            inside(&[
                "addr",
                "add",
                &format!("{}/24", self.addr(i)),
                "dev",
                "eth0",
            ])?;
            inside(&["link", "set", "eth0", "up"])?;
            inside(&["link", "set", "lo", "up"])?;
        }
        Ok(())
    }

    /// Sets up the network, or explains why this machine cannot: in CI the
    /// test fails, elsewhere it is skipped with the reason.
    pub fn or_skip(hosts: usize) -> Option<Lan> {
        match Lan::new(hosts) {
            Ok(l) => Some(l),
            Err(e) if std::env::var_os("CI").is_some() => {
                panic!("network namespaces are needed for this test: {e}")
            }
            Err(e) => {
                eprintln!("skipped: network namespaces unavailable here ({e})");
                None
            }
        }
    }

    fn bridge(&self) -> String {
        format!("{}br", self.tag)
    }

    fn veth(&self, i: usize) -> String {
        format!("{}v{i}", self.tag)
    }

    /// Name of host `i`'s namespace.
    pub fn ns(&self, i: usize) -> String {
        format!("{}h{i}", self.tag)
    }

    /// Address of the clients' side (this namespace).
    pub fn gateway(&self) -> String {
        format!("{}.1", self.net)
    }

    /// Address of host `i`.
    pub fn addr(&self, i: usize) -> String {
        format!("{}.{}", self.net, 11 + i)
    }

    /// An address of the hosts' network that no host has (`last` above
    /// 10 + the number of hosts, below 255).
    #[allow(dead_code)]
    pub fn spare_addr(&self, last: u8) -> String {
        format!("{}.{last}", self.net)
    }

    /// Whether host `i`'s interface has address `ip` (as `ip addr` lists it).
    #[allow(dead_code)]
    pub fn has_address(&self, i: usize, ip: &str) -> bool {
        let out = Command::new("ip")
            .args(["-n", &self.ns(i), "-o", "addr", "show", "dev", "eth0"])
            .output()
            .expect("run ip");
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .any(|w| w.split('/').next() == Some(ip))
    }

    /// Cuts host `i` off from everyone (its link goes down).
    pub fn cut(&self, i: usize) {
        ip(&["link", "set", &self.veth(i), "down"]).expect("link down");
    }

    /// Restores host `i`'s link.
    pub fn mend(&self, i: usize) {
        ip(&["link", "set", &self.veth(i), "up"]).expect("link up");
    }

    /// Drops every packet between host `i` and the hosts in `from`; the
    /// clients still reach it.
    pub fn partition(&self, i: usize, from: &[usize]) {
        let ns = self.ns(i);
        let nft = |rule: &str| {
            run("ip", &["netns", "exec", &ns, "nft", rule]).expect("nftables rule");
        };
        nft("add table inet tandem_partition");
        nft("add chain inet tandem_partition in { type filter hook input priority 0; }");
        nft("add chain inet tandem_partition out { type filter hook output priority 0; }");
        for &j in from {
            let a = self.addr(j);
            nft(&format!(
                "add rule inet tandem_partition in ip saddr {a} drop"
            ));
            nft(&format!(
                "add rule inet tandem_partition out ip daddr {a} drop"
            ));
        }
    }

    /// Lifts the partition of host `i`.
    pub fn heal(&self, i: usize) {
        run(
            "ip",
            &[
                "netns",
                "exec",
                &self.ns(i),
                "nft",
                "delete table inet tandem_partition",
            ],
        )
        .expect("remove nftables rules");
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for i in 0..self.hosts {
            let ns = self.ns(i);
            // Whatever still runs in the namespace goes with it.
            if let Ok(out) = Command::new("ip").args(["netns", "pids", &ns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = run("kill", &["-9", pid]);
                }
            }
            let _ = ip(&["netns", "del", &ns]);
            let _ = ip(&["link", "del", &self.veth(i)]);
        }
        let _ = ip(&["link", "del", &self.bridge()]);
    }
}

/// Two data nodes on hosts 0 and 1 of `lan` and a witness on host
/// `witness_host`, formed into a cluster, serving volume "vm" of `size`
/// with two copies; returns the nodes, the witness and the join token.
pub fn two_nodes_and_witness(
    lan: &Lan,
    dir: &std::path::Path,
    witness_host: usize,
    size: &str,
) -> (Vec<super::Server>, super::cluster::Witness, String) {
    two_nodes_and_witness_with(lan, dir, witness_host, size, [&[], &[]])
}

/// As [`two_nodes_and_witness`], with further flags of `tandem serve` for
/// node a and node b.
pub fn two_nodes_and_witness_with(
    lan: &Lan,
    dir: &std::path::Path,
    witness_host: usize,
    size: &str,
    extra: [&[&str]; 2],
) -> (Vec<super::Server>, super::cluster::Witness, String) {
    use super::cluster::{form, wait_members, wait_until, Witness};
    let nodes = vec![
        super::Server::start_on_with(&dir.join("a"), &lan.addr(0), Some(&lan.ns(0)), extra[0]),
        super::Server::start_on_with(&dir.join("b"), &lan.addr(1), Some(&lan.ns(1)), extra[1]),
    ];
    let token = form(&nodes[0], &[&nodes[1]]);
    let witness = Witness::start(
        &dir.join("w"),
        &lan.addr(witness_host),
        Some(&lan.ns(witness_host)),
        &nodes[0].cluster_addr(),
        &token,
    );
    wait_members(&nodes[0], 3);
    nodes[0].cli_ok(&["volume", "create", "vm", "--size", size, "--replicas", "2"]);
    wait_until("both nodes export the volume", 20, || {
        nodes
            .iter()
            .all(|n| n.cli_ok(&["volume", "list"]).contains("vm"))
    });
    (nodes, witness, token)
}
