//! ICMP echo ("ping") over a raw socket opened with pnet, on a blocking
//! thread. A raw ICMP socket sees every ICMP packet of the host, so a reply
//! counts only if it is an echo *reply* from the target carrying our
//! identifier, the sequence number we sent and our payload marker; our own
//! echo requests, which a raw socket sees on loopback, are skipped.
//!
//! Opening a raw socket needs root or `CAP_NET_RAW`. Without it the check
//! reports "unavailable": ping then neither fails nor passes the endpoint.

use std::io;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::time::{Duration, Instant};

use pnet_packet::Packet;
use pnet_packet::icmp::IcmpPacket;
use pnet_packet::icmpv6::Icmpv6Packet;
use pnet_packet::ip::IpNextHeaderProtocols;
use pnet_transport::TransportChannelType::Layer4;
use pnet_transport::TransportProtocol::{Ipv4, Ipv6};
use pnet_transport::{
    TransportReceiver, TransportSender, icmp_packet_iter, icmpv6_packet_iter, transport_channel,
};

use crate::state::CheckResult;

/// Marks the payload of our echo requests (and so of the replies).
const PAYLOAD: &[u8; 16] = b"llm-proxy-health";
const HEADER_LEN: usize = 8;
const ECHO_REQUEST_V4: u8 = 8;
const ECHO_REPLY_V4: u8 = 0;
const ECHO_REQUEST_V6: u8 = 128;
const ECHO_REPLY_V6: u8 = 129;
/// Receive timeouts shorter than this are not set (a zero timeout blocks forever).
const MIN_WAIT: Duration = Duration::from_millis(1);
/// Longest single wait, so a stop request is noticed quickly.
const MAX_WAIT: Duration = Duration::from_millis(250);

/// Identifiers of checks in flight differ, so concurrent checks of this
/// process never take each other's replies.
static NEXT_IDENTIFIER: AtomicU16 = AtomicU16::new(0);

fn next_identifier() -> u16 {
    let base = (std::process::id() & 0xffff) as u16;
    base.wrapping_add(
        NEXT_IDENTIFIER
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(7919),
    )
}

/// How one ping check went.
#[derive(Debug, Clone, PartialEq)]
pub enum PingOutcome {
    /// The raw socket could not be opened.
    Unavailable(String),
    /// The check could not be run (resolution or send failed).
    Failed(String),
    /// `received` of `sent` echo requests were answered; `mean_rtt` over those.
    Done {
        /// Echo requests sent.
        sent: u32,
        /// Replies received in time.
        received: u32,
        /// Mean round-trip time of the replies.
        mean_rtt: Option<Duration>,
    },
}

impl PingOutcome {
    /// The state machine's view: passes when at least one reply came back;
    /// `target` and `timeout` go into the error message.
    pub fn into_check(self, target: &str, timeout: Duration) -> CheckResult {
        match self {
            PingOutcome::Unavailable(error) => CheckResult {
                passed: None,
                latency: None,
                error: Some(error),
                status: None,
            },
            PingOutcome::Failed(error) => CheckResult {
                passed: Some(false),
                latency: None,
                error: Some(error),
                status: None,
            },
            PingOutcome::Done {
                sent,
                received,
                mean_rtt,
            } => CheckResult {
                passed: Some(received > 0),
                latency: mean_rtt,
                error: (received == 0).then(|| {
                    format!(
                        "no echo reply from {target} to {sent} requests ({:.1}s timeout each)",
                        timeout.as_secs_f64()
                    )
                }),
                status: None,
            },
        }
    }
}

/// Pings `host` (an IP literal or a name, resolved now) `count` times,
/// waiting up to `timeout` for each reply, on a blocking thread. Setting
/// `cancel` ends the check early.
pub async fn ping(
    host: &str,
    count: u32,
    timeout: Duration,
    cancel: Arc<AtomicBool>,
) -> PingOutcome {
    let ip = match resolve(host).await {
        Ok(ip) => ip,
        Err(e) => return PingOutcome::Failed(e),
    };
    let identifier = next_identifier();
    let blocking = move || ping_blocking(ip, identifier, count, timeout, &cancel);
    match tokio::task::spawn_blocking(blocking).await {
        Ok(outcome) => outcome,
        Err(e) => PingOutcome::Failed(format!("ping thread failed: {e}")),
    }
}

async fn resolve(host: &str) -> Result<IpAddr, String> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(ip);
    }
    let addrs: Vec<IpAddr> = tokio::net::lookup_host((host, 0))
        .await
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .map(|a| a.ip())
        .collect();
    addrs
        .iter()
        .find(|ip| ip.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .ok_or_else(|| format!("cannot resolve {host}: no addresses"))
}

/// The blocking part: one raw socket for this check.
pub fn ping_blocking(
    ip: IpAddr,
    identifier: u16,
    count: u32,
    timeout: Duration,
    cancel: &AtomicBool,
) -> PingOutcome {
    let protocol = match ip {
        IpAddr::V4(_) => Ipv4(IpNextHeaderProtocols::Icmp),
        IpAddr::V6(_) => Ipv6(IpNextHeaderProtocols::Icmpv6),
    };
    let (mut tx, mut rx) = match transport_channel(4096, Layer4(protocol)) {
        Ok(channel) => channel,
        Err(e) => {
            return PingOutcome::Unavailable(format!(
                "cannot open a raw ICMP socket ({e}); ping needs root or CAP_NET_RAW"
            ));
        }
    };
    let mut rtts = Vec::new();
    for i in 0..count {
        if cancel.load(Ordering::Acquire) {
            return PingOutcome::Failed("stopped".into());
        }
        let sequence = (i & 0xffff) as u16;
        let request = echo_request(ip.is_ipv6(), identifier, sequence);
        let sent_at = Instant::now();
        if let Err(e) = send(&mut tx, ip, &request) {
            return PingOutcome::Failed(format!("cannot send an echo request to {ip}: {e}"));
        }
        let deadline = sent_at + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left < MIN_WAIT || cancel.load(Ordering::Acquire) {
                break;
            }
            match receive(&mut rx, ip.is_ipv6(), left.min(MAX_WAIT)) {
                Ok(Some((packet, from))) => {
                    if from == ip && is_our_reply(&packet, ip.is_ipv6(), identifier, sequence) {
                        rtts.push(sent_at.elapsed());
                        break;
                    }
                }
                Ok(None) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return PingOutcome::Failed(format!("receiving from {ip} failed: {e}")),
            }
        }
    }
    let received = rtts.len() as u32;
    let mean_rtt = (received > 0).then(|| rtts.iter().sum::<Duration>() / received);
    PingOutcome::Done {
        sent: count,
        received,
        mean_rtt,
    }
}

fn send(tx: &mut TransportSender, ip: IpAddr, bytes: &[u8]) -> io::Result<usize> {
    let malformed = || io::Error::new(io::ErrorKind::InvalidInput, "echo request too short");
    if ip.is_ipv6() {
        let packet = Icmpv6Packet::new(bytes).ok_or_else(malformed)?;
        tx.send_to(packet, ip)
    } else {
        let packet = IcmpPacket::new(bytes).ok_or_else(malformed)?;
        tx.send_to(packet, ip)
    }
}

fn receive(
    rx: &mut TransportReceiver,
    v6: bool,
    wait: Duration,
) -> io::Result<Option<(Vec<u8>, IpAddr)>> {
    if v6 {
        Ok(icmpv6_packet_iter(rx)
            .next_with_timeout(wait)?
            .map(|(p, from)| (p.packet().to_vec(), from)))
    } else {
        Ok(icmp_packet_iter(rx)
            .next_with_timeout(wait)?
            .map(|(p, from)| (p.packet().to_vec(), from)))
    }
}

/// An echo request: type, code, checksum, identifier, sequence, payload.
/// For ICMPv6 the kernel fills in the checksum.
pub fn echo_request(v6: bool, identifier: u16, sequence: u16) -> Vec<u8> {
    let mut packet = vec![0u8; HEADER_LEN + PAYLOAD.len()];
    packet[0] = if v6 { ECHO_REQUEST_V6 } else { ECHO_REQUEST_V4 };
    packet[4..6].copy_from_slice(&identifier.to_be_bytes());
    packet[6..8].copy_from_slice(&sequence.to_be_bytes());
    packet[HEADER_LEN..].copy_from_slice(PAYLOAD);
    if !v6 {
        let sum = pnet_packet::util::checksum(&packet, 1);
        packet[2..4].copy_from_slice(&sum.to_be_bytes());
    }
    packet
}

/// Whether `packet` (an ICMP message without the IP header) answers the
/// echo request `identifier`/`sequence`.
pub fn is_our_reply(packet: &[u8], v6: bool, identifier: u16, sequence: u16) -> bool {
    let reply = if v6 { ECHO_REPLY_V6 } else { ECHO_REPLY_V4 };
    packet.len() >= HEADER_LEN + PAYLOAD.len()
        && packet[0] == reply
        && packet[1] == 0
        && packet[4..6] == identifier.to_be_bytes()
        && packet[6..8] == sequence.to_be_bytes()
        && packet[HEADER_LEN..HEADER_LEN + PAYLOAD.len()] == PAYLOAD[..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_carry_identifier_sequence_and_a_valid_checksum() {
        let p = echo_request(false, 0xbeef, 7);
        assert_eq!(p[0], 8);
        assert_eq!(&p[4..8], &[0xbe, 0xef, 0, 7]);
        // A correct ones-complement checksum sums to zero over the whole message.
        assert_eq!(pnet_packet::util::checksum(&p, usize::MAX), 0);
        assert_eq!(echo_request(true, 1, 1)[0], 128);
    }

    #[test]
    fn only_our_replies_match() {
        let mut reply = echo_request(false, 42, 3);
        // Our own request, as seen on loopback, is not a reply.
        assert!(!is_our_reply(&reply, false, 42, 3));
        reply[0] = 0;
        assert!(is_our_reply(&reply, false, 42, 3));
        assert!(!is_our_reply(&reply, false, 43, 3), "another identifier");
        assert!(!is_our_reply(&reply, false, 42, 4), "another sequence");
        assert!(
            !is_our_reply(&reply, true, 42, 3),
            "v4 reply type on a v6 check"
        );
        assert!(!is_our_reply(&reply[..10], false, 42, 3), "truncated");
        let mut other_payload = reply.clone();
        other_payload[HEADER_LEN] ^= 1;
        assert!(!is_our_reply(&other_payload, false, 42, 3));
    }

    #[test]
    fn unavailable_neither_passes_nor_fails_and_no_reply_is_a_clear_failure() {
        let c = PingOutcome::Unavailable("no".into()).into_check("h", Duration::from_secs(1));
        assert_eq!(c.passed, None);
        let c = PingOutcome::Done {
            sent: 3,
            received: 0,
            mean_rtt: None,
        }
        .into_check("10.0.0.1", Duration::from_secs(2));
        assert_eq!(c.passed, Some(false));
        assert_eq!(
            c.error.as_deref(),
            Some("no echo reply from 10.0.0.1 to 3 requests (2.0s timeout each)")
        );
    }

    /// Loopback only: the kernel answers; needs root or CAP_NET_RAW (CI runs as root).
    #[test]
    fn pings_loopback_when_a_raw_socket_can_be_opened() {
        let outcome = ping_blocking(
            IpAddr::from([127, 0, 0, 1]),
            next_identifier(),
            2,
            Duration::from_secs(1),
            &AtomicBool::new(false),
        );
        match outcome {
            PingOutcome::Done {
                sent: 2,
                received: 2,
                mean_rtt: Some(rtt),
            } => assert!(rtt < Duration::from_secs(1)),
            PingOutcome::Unavailable(why) => {
                assert!(why.contains("CAP_NET_RAW"), "{why}");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
