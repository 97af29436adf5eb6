//! Ethernet + IPv4 + UDP framing for the AF_XDP TX generator: the generator
//! writes whole frames into its UMEM, so it needs the link-layer addresses
//! and a correct IPv4 header checksum (the UDP checksum is 0: "none", which
//! IPv4 allows and every receiver accepts).

use std::net::{Ipv4Addr, SocketAddrV4};

/// Bytes of Ethernet + IPv4 (no options) + UDP headers in front of a datagram.
pub const FRAME_HEADERS: usize = 14 + 20 + 8;

/// The fixed part of every frame of one flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    /// Destination MAC (the receiver's NIC, or the next hop's).
    pub dst_mac: [u8; 6],
    /// Source MAC (the sending NIC).
    pub src_mac: [u8; 6],
    /// Source address and port.
    pub src: SocketAddrV4,
    /// Destination address and port.
    pub dst: SocketAddrV4,
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.trim().split(':');
    for b in &mut out {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// The MAC address of interface `iface` in the calling thread's namespace.
pub fn iface_mac(iface: &str) -> std::io::Result<[u8; 6]> {
    let s = std::fs::read_to_string(format!("/sys/class/net/{iface}/address"))?;
    parse_mac(&s).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{iface}: unreadable MAC address {s:?}"),
        )
    })
}

/// The first IPv4 address of `iface` (from `ip -4 -o addr show`), in the
/// calling thread's namespace.
pub fn iface_ipv4(iface: &str) -> Option<Ipv4Addr> {
    let out = std::process::Command::new("ip")
        .args(["-4", "-o", "addr", "show", "dev", iface])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let word = text
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)?;
    word.split('/').next()?.parse().ok()
}

/// The RFC 1071 checksum of `data` (16-bit one's complement of the one's
/// complement sum).
pub fn ipv4_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        sum += u32::from(w);
    }
    while sum > 0xFFFF {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    !(sum as u16)
}

impl Flow {
    /// Writes the headers for a UDP payload of `payload_len` bytes into the
    /// first [`FRAME_HEADERS`] bytes of `frame`; returns the frame length.
    pub fn write_headers(&self, frame: &mut [u8], payload_len: usize, ip_id: u16) -> usize {
        let ip_len = 20 + 8 + payload_len;
        let f = &mut frame[..FRAME_HEADERS];
        f[0..6].copy_from_slice(&self.dst_mac);
        f[6..12].copy_from_slice(&self.src_mac);
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        let ip = &mut f[14..34];
        ip[0] = 0x45;
        ip[1] = 0;
        ip[2..4].copy_from_slice(&(ip_len as u16).to_be_bytes());
        ip[4..6].copy_from_slice(&ip_id.to_be_bytes());
        ip[6..8].copy_from_slice(&0x4000u16.to_be_bytes()); // don't fragment
        ip[8] = 64;
        ip[9] = 17;
        ip[10..12].fill(0);
        ip[12..16].copy_from_slice(&self.src.ip().octets());
        ip[16..20].copy_from_slice(&self.dst.ip().octets());
        let c = ipv4_checksum(ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        let udp = &mut f[34..42];
        udp[0..2].copy_from_slice(&self.src.port().to_be_bytes());
        udp[2..4].copy_from_slice(&self.dst.port().to_be_bytes());
        udp[4..6].copy_from_slice(&((8 + payload_len) as u16).to_be_bytes());
        udp[6..8].fill(0);
        FRAME_HEADERS + payload_len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_parsing_takes_six_hex_bytes_only() {
        assert_eq!(
            parse_mac("02:00:0a:ff:10:01\n"),
            Some([2, 0, 0x0a, 0xff, 0x10, 1])
        );
        assert_eq!(parse_mac("02:00:0a:ff:10"), None);
        assert_eq!(parse_mac("02:00:0a:ff:10:01:00"), None);
        assert_eq!(parse_mac("zz:00:0a:ff:10:01"), None);
    }

    #[test]
    fn frames_carry_a_valid_ip_checksum_and_the_payload_is_found_again() {
        let flow = Flow {
            dst_mac: [2, 0, 0, 0, 0, 1],
            src_mac: [2, 0, 0, 0, 0, 2],
            src: "10.0.0.2:40000".parse().unwrap(),
            dst: "10.0.0.1:7700".parse().unwrap(),
        };
        let mut frame = vec![0u8; 256];
        let payload = b"hello klais";
        frame[FRAME_HEADERS..FRAME_HEADERS + payload.len()].copy_from_slice(payload);
        let n = flow.write_headers(&mut frame, payload.len(), 7);
        assert_eq!(n, FRAME_HEADERS + payload.len());
        // A header whose checksum field is right sums to zero.
        assert_eq!(ipv4_checksum(&frame[14..34]), 0);
        assert_eq!(
            crate::ingest::af_xdp::udp_payload(&frame[..n]),
            Some(&payload[..])
        );
    }
}
