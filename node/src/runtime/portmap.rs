//! Router port mapping: asks the gateway to forward a public UDP port to our
//! socket, so that a node behind a cooperative home router is reachable by
//! anyone holding its token, with no RSVP round and no probing.
//!
//! Three protocols, tried in the order RFC 6886 §1.1 recommends: PCP
//! (RFC 6887), then NAT-PMP (RFC 6886), then UPnP IGD. PCP and NAT-PMP come
//! from `crab_nat` (both protocols, tokio, no other dependencies worth
//! naming); UPnP IGD from `igd-next` (the maintained fork of `igd`, which
//! libp2p's UPnP behaviour uses, over the hyper client already in the tree).
//! Only IPv4 is mapped: IPv6 needs a firewall pinhole, not a translation.
//!
//! The mapping is asked for once at start (the UPnP search runs while PCP
//! is asked, so a silent gateway costs about two seconds, not four), renewed
//! at half its lifetime, asked for again if a renewal fails, and deleted
//! when the node stops. The node turns it into a candidate in its tokens
//! (see [`crate::member::LocalCandidates::set_port_mapped`]).
//!
//! Nothing here runs for a node bound to loopback: tests bind there, and no
//! test may talk to the machine's real gateway.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::num::NonZeroU16;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

/// How long a mapping is asked for (RFC 6886 recommends two hours).
const LIFETIME: Duration = Duration::from_secs(7200);
/// How long the UPnP search listens for gateways.
const UPNP_SEARCH: Duration = Duration::from_millis(1500);
/// How long one UPnP SOAP request may take.
const UPNP_REQUEST: Duration = Duration::from_secs(2);
/// Pause before asking again after every protocol failed or a mapping was
/// lost (a router rebooting, a daemon restarted).
const RETRY: Duration = Duration::from_secs(300);
/// How long deleting the mapping may hold up the node's exit.
pub const RELEASE_WAIT: Duration = Duration::from_secs(1);
/// What the mapping is called in the router's table (UPnP shows it).
const DESCRIPTION: &str = "convoke";

/// The port mapping protocols, by the name metrics and status use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Port Control Protocol (RFC 6887).
    Pcp,
    /// NAT Port Mapping Protocol (RFC 6886).
    NatPmp,
    /// UPnP Internet Gateway Device.
    Upnp,
}

impl Protocol {
    /// Its name in metrics labels and status.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Pcp => "pcp",
            Protocol::NatPmp => "natpmp",
            Protocol::Upnp => "upnp",
        }
    }
}

/// What the mapper tells the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// The gateway forwards `external` to our socket (new, or renewed at a
    /// different address).
    Mapped {
        /// How.
        protocol: Protocol,
        /// The public address:port.
        external: SocketAddr,
        /// For how long, unless renewed.
        lifetime: Duration,
    },
    /// No gateway mapped a port (or a mapping was lost): the reason, for
    /// status and logs.
    Unavailable {
        /// Why, in a few words.
        reason: String,
    },
}

/// The mapper task's handle: reports come on [`PortMapper::next`] (every
/// round's, renewals included). Dropping it stops the task, which deletes
/// the mapping in the background; [`PortMapper::release`] waits for that
/// (a while).
#[derive(Debug)]
pub struct PortMapper {
    rx: mpsc::Receiver<Report>,
    stop: Option<oneshot::Sender<oneshot::Sender<()>>>,
}

impl PortMapper {
    /// Starts mapping a public port to `local` (the address our IPv4
    /// socket is bound at). `None` when there is nothing to map: a
    /// loopback socket, or an IPv6 one. Must be called inside a tokio
    /// runtime.
    pub fn start(local: SocketAddr) -> Option<PortMapper> {
        let SocketAddr::V4(local) = local else { return None };
        if local.ip().is_loopback() || local.port() == 0 {
            return None;
        }
        let (tx, rx) = mpsc::channel(4);
        let (stop_tx, stop_rx) = oneshot::channel();
        tokio::spawn(run(local, tx, stop_rx));
        Some(PortMapper { rx, stop: Some(stop_tx) })
    }

    /// The next report (pending for ever once the task has ended).
    pub async fn next(&mut self) -> Report {
        match self.rx.recv().await {
            Some(r) => r,
            None => std::future::pending().await,
        }
    }

    /// Deletes the mapping at the gateway, waiting at most
    /// [`RELEASE_WAIT`].
    pub async fn release(mut self) {
        let Some(stop) = self.stop.take() else { return };
        let (done_tx, done_rx) = oneshot::channel();
        if stop.send(done_tx).is_ok() {
            let _ = tokio::time::timeout(RELEASE_WAIT, done_rx).await;
        }
    }
}

/// The IPv4 default gateway, from the kernel's routing table.
///
/// Written here because the crates that find gateways (`netdev`,
/// `default-net`) bring a whole interface-enumeration layer for what is
/// one line of `/proc/net/route` on Linux; other systems get UPnP only,
/// whose discovery needs no gateway address.
pub fn default_gateway_v4() -> Option<Ipv4Addr> {
    parse_route_table(&std::fs::read_to_string("/proc/net/route").ok()?)
}

/// The gateway of the first default route in a `/proc/net/route` table
/// (hexadecimal fields in host byte order; flag 0x2 = RTF_GATEWAY).
pub fn parse_route_table(table: &str) -> Option<Ipv4Addr> {
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (dest, gateway, flags) = (f.get(1)?, f.get(2)?, f.get(3)?);
        let flags = u16::from_str_radix(flags, 16).ok()?;
        if *dest != "00000000" || flags & 0x1 == 0 || flags & 0x2 == 0 {
            return None;
        }
        let g = u32::from_str_radix(gateway, 16).ok()?;
        let ip = Ipv4Addr::from(g.to_le_bytes());
        (!ip.is_unspecified()).then_some(ip)
    })
}

/// Our address on the way to `gateway` (a connected UDP socket's local
/// address: `connect` sends nothing).
fn address_towards(gateway: Ipv4Addr) -> Option<Ipv4Addr> {
    let s = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).ok()?;
    s.connect((gateway, crab_nat::GATEWAY_PORT)).ok()?;
    match s.local_addr().ok()?.ip() {
        IpAddr::V4(v4) if !v4.is_unspecified() => Some(v4),
        _ => None,
    }
}

/// A mapping we hold, and how to renew and delete it.
enum Held {
    PcpOrPmp(crab_nat::PortMapping),
    Upnp {
        gateway: Box<igd_next::aio::Gateway<igd_next::aio::tokio::Tokio>>,
        internal: SocketAddrV4,
        external_port: u16,
        /// The lease asked for, seconds (0: permanent, for gateways that
        /// take nothing else).
        lease: u32,
    },
}

async fn run(local: SocketAddrV4, tx: mpsc::Sender<Report>, mut stop: oneshot::Receiver<oneshot::Sender<()>>) {
    let mut held: Option<Held> = None;
    loop {
        // A request under way is finished even when the node stops
        // meanwhile, so that a mapping it got is deleted, not left behind.
        let request = step(held.take(), local);
        tokio::pin!(request);
        let mut stopping = None;
        let (now_held, report, wait) = tokio::select! {
            r = &mut request => r,
            done = &mut stop => {
                stopping = Some(done);
                request.await
            }
        };
        held = now_held;
        if let Some(done) = stopping {
            return finish(held, done).await;
        }
        // Every report, renewals too: the node shows when the mapping
        // would expire.
        if tx.send(report).await.is_err() {
            if let Some(h) = held {
                delete(h).await;
            }
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(wait.max(Duration::from_secs(1))) => {}
            done = &mut stop => return finish(held, done).await,
        }
    }
}

/// One round: a new mapping, or the renewal of the one held; what to
/// report, and how long until the next round.
async fn step(held: Option<Held>, local: SocketAddrV4) -> (Option<Held>, Report, Duration) {
    match held {
        None => match map(local).await {
            Ok((h, report, lifetime)) => (Some(h), report, lifetime / 2),
            Err(reason) => (None, Report::Unavailable { reason }, RETRY),
        },
        Some(h) => match renew(h).await {
            Ok((h, report, lifetime)) => (Some(h), report, lifetime / 2),
            // Asked for again at once (the next round maps anew).
            Err(reason) => (None, Report::Unavailable { reason: format!("renewal failed: {reason}") }, Duration::ZERO),
        },
    }
}

/// The node stops: delete what we hold, then say so.
async fn finish(held: Option<Held>, done: Result<oneshot::Sender<()>, oneshot::error::RecvError>) {
    if let Some(h) = held {
        delete(h).await;
    }
    if let Ok(done) = done {
        let _ = done.send(());
    }
}

/// Asks for a mapping: PCP / NAT-PMP at the default gateway while UPnP
/// searches, then UPnP if the first failed.
async fn map(local: SocketAddrV4) -> Result<(Held, Report, Duration), String> {
    let gateway = default_gateway_v4();
    // The address the gateway sees us at: our socket's own, or for a
    // socket on every interface the one facing the gateway.
    let client = match (*local.ip(), gateway) {
        (ip, _) if !ip.is_unspecified() => Some(ip),
        (_, Some(g)) => address_towards(g),
        (_, None) => None,
    };
    let pcp = async {
        let (Some(g), Some(c)) = (gateway, client) else { return Err("no IPv4 default gateway".to_owned()) };
        let port = NonZeroU16::new(local.port()).ok_or("port 0")?;
        let options = crab_nat::PortMappingOptions {
            external_port: Some(port),
            lifetime_seconds: Some(LIFETIME.as_secs() as u32),
            timeout_config: Some(crab_nat::TimeoutConfig {
                initial_timeout: Duration::from_millis(250),
                max_retries: 2,
                max_retry_timeout: Some(Duration::from_secs(1)),
            }),
        };
        crab_nat::PortMapping::new(g.into(), c.into(), crab_nat::InternetProtocol::Udp, port, options)
            .await
            .map_err(brief)
    };
    let search = async {
        let mut options = igd_next::SearchOptions::default();
        options.bind_addr = SocketAddr::from((client.unwrap_or(Ipv4Addr::UNSPECIFIED), 0));
        options.timeout = Some(UPNP_SEARCH);
        options.single_search_timeout = Some(UPNP_SEARCH);
        igd_next::aio::tokio::search_gateway(options).await.map_err(brief)
    };
    let (pcp, search) = tokio::join!(pcp, search);
    let pcp_err = match pcp {
        Ok(m) => {
            let (report, lifetime) = pcp_report(&m).await?;
            return Ok((Held::PcpOrPmp(m), report, lifetime));
        }
        Err(e) => e,
    };
    let upnp_err = match search {
        Ok(gateway) => {
            let internal = SocketAddrV4::new(client.unwrap_or(*local.ip()), local.port());
            match upnp_map(&gateway, internal).await {
                Ok((external, lease, lifetime)) => {
                    let report = Report::Mapped { protocol: Protocol::Upnp, external: external.into(), lifetime };
                    let held =
                        Held::Upnp { gateway: Box::new(gateway), internal, external_port: external.port(), lease };
                    return Ok((held, report, lifetime));
                }
                Err(e) => e,
            }
        }
        Err(e) => e,
    };
    Err(format!("PCP/NAT-PMP: {pcp_err}; UPnP: {upnp_err}"))
}

/// An error in a few words for status and logs: its first line, without
/// the SOAP body some UPnP errors quote whole, at most 160 characters.
fn brief(e: impl std::fmt::Display) -> String {
    let s = e.to_string();
    let s = s.split(['\r', '\n']).next().unwrap_or_default();
    let s = s.split(" <?xml").next().unwrap_or_default().trim_end_matches([':', ' ']);
    match s.char_indices().nth(160) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

/// The report for a PCP or NAT-PMP mapping (NAT-PMP needs a second request
/// for the external address; PCP's answer carries it).
async fn pcp_report(m: &crab_nat::PortMapping) -> Result<(Report, Duration), String> {
    let (protocol, ip) = match m.mapping_type() {
        crab_nat::PortMappingType::Pcp { external_ip, .. } => (Protocol::Pcp, external_ip),
        crab_nat::PortMappingType::NatPmp => {
            let ip = crab_nat::natpmp::external_address(m.gateway(), Some(m.timeout_config))
                .await
                .map_err(|e| format!("NAT-PMP external address: {}", brief(e)))?;
            (Protocol::NatPmp, IpAddr::V4(ip))
        }
    };
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    usable_external(ip)?;
    let lifetime = Duration::from_secs(u64::from(m.lifetime()));
    Ok((Report::Mapped { protocol, external: SocketAddr::new(ip, m.external_port().get()), lifetime }, lifetime))
}

/// An external address a peer elsewhere can use: not unspecified, not
/// loopback, not RFC 1918 or the shared CGN range (a router behind another
/// NAT hands out a mapping nobody outside can reach).
fn usable_external(ip: IpAddr) -> Result<(), String> {
    let bad = match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_unspecified() || v4.is_loopback() || v4.is_private() || (o[0] == 100 && (64..128).contains(&o[1]))
        }
        IpAddr::V6(v6) => v6.is_unspecified() || v6.is_loopback(),
    };
    if bad { Err(format!("the gateway's own address {ip} is behind another NAT")) } else { Ok(()) }
}

/// Maps our port through UPnP: the same external port if free, any other
/// otherwise; with a permanent lease if the gateway takes no other (IGDv1
/// error 725: we renew and delete it all the same). Returns the address,
/// the lease asked for (seconds, 0 for permanent) and how long it lasts.
async fn upnp_map(
    gateway: &igd_next::aio::Gateway<igd_next::aio::tokio::Tokio>,
    internal: SocketAddrV4,
) -> Result<(SocketAddrV4, u32, Duration), String> {
    let udp = igd_next::PortMappingProtocol::UDP;
    let timed = |what: &'static str| move |_| format!("{what}: no answer within {UPNP_REQUEST:?}");
    let ip = tokio::time::timeout(UPNP_REQUEST, gateway.get_external_ip())
        .await
        .map_err(timed("external address"))?
        .map_err(|e| format!("external address: {}", brief(e)))?;
    usable_external(ip)?;
    let IpAddr::V4(ip) = ip else { return Err(format!("an IPv6 external address {ip}")) };
    for lease in [LIFETIME.as_secs() as u32, 0] {
        let same = tokio::time::timeout(
            UPNP_REQUEST,
            gateway.add_port(udp, internal.port(), internal.into(), lease, DESCRIPTION),
        )
        .await
        .map_err(timed("add port"))?;
        let port = match same {
            Ok(()) => Ok(internal.port()),
            Err(igd_next::AddPortError::OnlyPermanentLeasesSupported) => continue,
            Err(_) => {
                tokio::time::timeout(UPNP_REQUEST, gateway.add_any_port(udp, internal.into(), lease, DESCRIPTION))
                    .await
                    .map_err(timed("add any port"))?
            }
        };
        match port {
            Ok(port) => return Ok((SocketAddrV4::new(ip, port), lease, LIFETIME)),
            Err(igd_next::AddAnyPortError::OnlyPermanentLeasesSupported) => continue,
            Err(e) => return Err(format!("add port: {}", brief(e))),
        }
    }
    Err("add port: the gateway refused a permanent lease too".to_owned())
}

async fn renew(h: Held) -> Result<(Held, Report, Duration), String> {
    match h {
        Held::PcpOrPmp(mut m) => {
            m.renew().await.map_err(brief)?;
            let (report, lifetime) = pcp_report(&m).await?;
            Ok((Held::PcpOrPmp(m), report, lifetime))
        }
        Held::Upnp { gateway, internal, external_port, lease } => {
            let udp = igd_next::PortMappingProtocol::UDP;
            tokio::time::timeout(
                UPNP_REQUEST,
                gateway.add_port(udp, external_port, internal.into(), lease, DESCRIPTION),
            )
            .await
            .map_err(|_| "no answer".to_owned())?
            .map_err(brief)?;
            let ip = tokio::time::timeout(UPNP_REQUEST, gateway.get_external_ip())
                .await
                .map_err(|_| "no answer".to_owned())?
                .map_err(brief)?;
            usable_external(ip)?;
            let report = Report::Mapped {
                protocol: Protocol::Upnp,
                external: SocketAddr::new(ip, external_port),
                lifetime: LIFETIME,
            };
            Ok((Held::Upnp { gateway, internal, external_port, lease }, report, LIFETIME))
        }
    }
}

async fn delete(h: Held) {
    match h {
        Held::PcpOrPmp(m) => {
            let _ = m.try_drop().await;
        }
        Held::Upnp { gateway, external_port, .. } => {
            let _ = gateway.remove_port(igd_next::PortMappingProtocol::UDP, external_port).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_route_s_gateway_is_read_from_the_kernel_table() {
        let table = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                     eth0\t0012A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
                     eth0\t00000000\t0100A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n";
        assert_eq!(parse_route_table(table), Some(Ipv4Addr::new(192, 168, 0, 1)));
        // A route that is down (no RTF_UP) or has no gateway is no default.
        let down = "h\neth0\t00000000\t0100A8C0\t0002\t0\t0\t0\t00000000\t0\t0\t0\n";
        assert_eq!(parse_route_table(down), None);
        let direct = "h\neth0\t00000000\t00000000\t0001\t0\t0\t0\t00000000\t0\t0\t0\n";
        assert_eq!(parse_route_table(direct), None);
        assert_eq!(parse_route_table("garbage\n\u{0}\t\t\n"), None);
    }

    #[test]
    fn errors_are_told_in_a_few_words() {
        let soap =
            "Request Error. Invalid response from gateway: <?xml version=\"1.0\"?>\r\n<s:Envelope>…</s:Envelope>\r\n";
        assert_eq!(brief(soap), "Request Error. Invalid response from gateway");
        assert_eq!(brief("x".repeat(500)).chars().count(), 161);
        assert_eq!(
            brief("PCP(Server responded with code: No resources)"),
            "PCP(Server responded with code: No resources)"
        );
    }

    #[test]
    fn a_mapping_behind_another_nat_is_not_offered() {
        assert!(usable_external("10.1.2.3".parse().expect("ip")).is_err());
        assert!(usable_external("100.64.0.9".parse().expect("ip")).is_err());
        assert!(usable_external("0.0.0.0".parse().expect("ip")).is_err());
        assert!(usable_external("198.18.3.1".parse().expect("ip")).is_ok());
        assert!(usable_external("203.0.113.5".parse().expect("ip")).is_ok());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn nothing_is_mapped_for_a_loopback_socket() {
        assert!(PortMapper::start("127.0.0.1:4433".parse().expect("addr")).is_none());
        assert!(PortMapper::start("[::]:4433".parse().expect("addr")).is_none());
        assert!(PortMapper::start("0.0.0.0:0".parse().expect("addr")).is_none());
    }
}
