//! Addresses: the IP of a multiaddr, and the address a host is reached at
//! when its configuration does not say.

use std::net::IpAddr;

use libp2p::multiaddr::Protocol;
use libp2p::Multiaddr;

/// The IP address of a multiaddr, if it has one.
pub fn ip_of(addr: &Multiaddr) -> Option<IpAddr> {
    addr.iter().find_map(|p| match p {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
        _ => None,
    })
}

/// The UDP port of a multiaddr, if it names one.
pub fn udp_port(addr: &Multiaddr) -> Option<u16> {
    addr.iter().find_map(|p| match p {
        Protocol::Udp(port) => Some(port),
        _ => None,
    })
}

/// The source address of this host's default route (found without sending
/// a packet), else loopback.
pub fn primary_ip() -> IpAddr {
    std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| {
            s.connect("192.0.2.1:9")?;
            s.local_addr()
        })
        .map(|a| a.ip())
        .unwrap_or(IpAddr::from([127, 0, 0, 1]))
}

/// Receive buffer asked for on the UDP sockets of the mesh. Linux gives a
/// UDP socket 208 KiB by default; a member that many peers handshake with
/// at once (a seed when a fleet starts, an aggregator when a cell
/// re-attaches) overflowed it, and the kernel dropped 800,000 datagrams
/// in one 300-member start on two cores. Every drop costs a QUIC
/// retransmission after a timeout that doubles, which is how handshakes
/// and enrolment answers came to take more than 30 s there.
pub const UDP_RECV_BUFFER: usize = 4 << 20;

/// Sets the receive buffer of this process's UDP sockets bound to `port`
/// to `bytes`: with `SO_RCVBUFFORCE` when the process may (root, or
/// CAP_NET_ADMIN; not capped by `net.core.rmem_max`), else with
/// `SO_RCVBUF` (capped by it). libp2p creates its QUIC sockets itself and
/// hands out no handle to them, so they are found by their port among the
/// process's descriptors. Returns the buffer size the kernel reports for
/// each socket it set (the kernel reports twice what it was asked, for
/// its bookkeeping).
pub fn raise_udp_recv_buffer(port: u16, bytes: usize) -> std::io::Result<Vec<usize>> {
    let mut sizes = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd")? {
        let Ok(entry) = entry else { continue };
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<libc::c_int>().ok())
        else {
            continue;
        };
        let is_socket = std::fs::read_link(entry.path())
            .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"));
        if is_socket && udp_port_of(fd) == Some(port) {
            sizes.push(set_recv_buffer(fd, bytes)?);
        }
    }
    Ok(sizes)
}

/// The local port of `fd` if it is a UDP socket bound to one.
fn udp_port_of(fd: libc::c_int) -> Option<u16> {
    // A descriptor that is not a socket (or closed since) just fails.
    if socket_option(fd, libc::SO_TYPE).ok()? != libc::SOCK_DGRAM {
        return None;
    }
    // SAFETY: sockaddr_storage is plain data; zeroed is a valid value.
    let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: getsockname writes at most `len` bytes into `addr`.
    let rc = unsafe {
        libc::getsockname(
            fd,
            (&mut addr as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return None;
    }
    let port = match libc::c_int::from(addr.ss_family) {
        // SAFETY: the family says which sockaddr the storage holds.
        libc::AF_INET => unsafe {
            (*(&addr as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>()).sin_port
        },
        // SAFETY: as above.
        libc::AF_INET6 => unsafe {
            (*(&addr as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>()).sin6_port
        },
        _ => return None,
    };
    Some(u16::from_be(port))
}

fn set_recv_buffer(fd: libc::c_int, bytes: usize) -> std::io::Result<usize> {
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    let set = |option| {
        // SAFETY: setsockopt reads `size_of::<c_int>()` bytes from `value`.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                option,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        }
    };
    if set(libc::SO_RCVBUFFORCE) != 0 && set(libc::SO_RCVBUF) != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(usize::try_from(socket_option(fd, libc::SO_RCVBUF)?).unwrap_or(0))
}

/// An integer socket option of `fd` at the socket level.
fn socket_option(fd: libc::c_int, option: libc::c_int) -> std::io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `value`.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            option,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_receive_buffer_of_a_socket_found_by_its_port_is_raised() {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let port = socket.local_addr().expect("addr").port();
        let sizes = raise_udp_recv_buffer(port, 1 << 20).expect("raise");
        assert_eq!(sizes.len(), 1, "exactly the one socket on that port");
        // The kernel doubles what it is asked; without privilege it caps
        // at net.core.rmem_max, which may be below the request.
        let max = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .unwrap_or(0);
        assert!(
            sizes[0] >= 2 << 20 || sizes[0] >= 2 * max,
            "buffer {} not raised (rmem_max {max})",
            sizes[0]
        );
    }
}
