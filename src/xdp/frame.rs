//! Ethernet frames for exercising the XDP program through
//! `BPF_PROG_TEST_RUN` (tests, `klais xdp bench`): IPv4 with or without
//! options, IPv6, up to two VLAN tags, UDP, plus ARP and TCP for the
//! "not klais traffic" paths. Plain byte building, no I/O.

/// Options for a UDP frame.
#[derive(Debug, Clone, Default)]
pub struct UdpFrame<'a> {
    /// VLAN tags, outermost first: (TPID, VLAN id). TPID 0x8100 or 0x88A8.
    pub vlans: &'a [(u16, u16)],
    /// IPv6 instead of IPv4.
    pub ipv6: bool,
    /// IPv4 option bytes (multiple of 4, at most 40).
    pub ip_options: usize,
    /// Destination port.
    pub dst_port: u16,
    /// UDP payload.
    pub payload: &'a [u8],
}

const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 1];
const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 2];

fn eth(out: &mut Vec<u8>, vlans: &[(u16, u16)], ethertype: u16) {
    out.extend_from_slice(&DST_MAC);
    out.extend_from_slice(&SRC_MAC);
    for &(tpid, vid) in vlans {
        out.extend_from_slice(&tpid.to_be_bytes());
        out.extend_from_slice(&vid.to_be_bytes());
    }
    out.extend_from_slice(&ethertype.to_be_bytes());
}

fn ipv4_header(out: &mut Vec<u8>, proto: u8, options: usize, l4_len: usize) {
    let ihl = 20 + options;
    let start = out.len();
    out.push(0x40 | (ihl / 4) as u8);
    out.push(0);
    out.extend_from_slice(&((ihl + l4_len) as u16).to_be_bytes());
    out.extend_from_slice(&[0, 1, 0x40, 0]); // id 1, DF
    out.push(64);
    out.push(proto);
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&[10, 213, 0, 2]);
    out.extend_from_slice(&[10, 213, 0, 1]);
    for i in 0..options {
        // NOP options, ending with EOL.
        out.push(if i + 1 == options { 0 } else { 1 });
    }
    let mut sum = 0u32;
    for c in out[start..start + ihl].chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let ck = !(sum as u16);
    out[start + 10..start + 12].copy_from_slice(&ck.to_be_bytes());
}

/// A UDP datagram in an Ethernet frame.
pub fn udp(f: &UdpFrame<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(128 + f.payload.len());
    let udp_len = 8 + f.payload.len();
    if f.ipv6 {
        eth(&mut out, f.vlans, 0x86DD);
        out.extend_from_slice(&[0x60, 0, 0, 0]);
        out.extend_from_slice(&(udp_len as u16).to_be_bytes());
        out.push(17);
        out.push(64);
        out.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        out.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    } else {
        eth(&mut out, f.vlans, 0x0800);
        ipv4_header(&mut out, 17, f.ip_options, udp_len);
    }
    out.extend_from_slice(&40000u16.to_be_bytes());
    out.extend_from_slice(&f.dst_port.to_be_bytes());
    out.extend_from_slice(&(udp_len as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(f.payload);
    out
}

/// An ARP request.
pub fn arp() -> Vec<u8> {
    let mut out = Vec::new();
    eth(&mut out, &[], 0x0806);
    out.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    out.extend_from_slice(&SRC_MAC);
    out.extend_from_slice(&[10, 213, 0, 2]);
    out.extend_from_slice(&[0; 6]);
    out.extend_from_slice(&[10, 213, 0, 1]);
    out
}

/// A TCP SYN to `dst_port` (IPv4).
pub fn tcp_syn(dst_port: u16) -> Vec<u8> {
    let mut out = Vec::new();
    eth(&mut out, &[], 0x0800);
    ipv4_header(&mut out, 6, 0, 20);
    out.extend_from_slice(&40000u16.to_be_bytes());
    out.extend_from_slice(&dst_port.to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
    out
}

/// A non-first IPv4 fragment of a UDP datagram to `dst_port`.
pub fn udp_fragment(dst_port: u16, payload: &[u8]) -> Vec<u8> {
    let mut out = udp(&UdpFrame {
        dst_port,
        payload,
        ..Default::default()
    });
    // Fragment offset 8 (in 8-byte units), no DF.
    out[14 + 6] = 0;
    out[14 + 7] = 8;
    out
}
