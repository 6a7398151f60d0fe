//! Binds and DNS queries from the kernel programs, with real sockets on
//! loopback (needs root). Queries go to port 53 of loopback addresses;
//! nothing needs to answer them, the sensor reports what was sent.

mod common;

use std::net::{SocketAddr, SocketAddrV4, TcpListener, UdpSocket};
use std::os::fd::AsRawFd;

use common::Seen;
use starling_bpf::dns::{DnsError, DnsQuestion};
use starling_bpf::{DnsRecord, RawRecord};

/// A DNS query for `name` of type `qtype`, as a stub resolver sends it
/// (with an EDNS OPT record after the question).
fn dns_query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&id.to_be_bytes());
    b.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 1]);
    for label in name.split('.') {
        b.push(label.len() as u8);
        b.extend_from_slice(label.as_bytes());
    }
    b.push(0);
    b.extend_from_slice(&qtype.to_be_bytes());
    b.extend_from_slice(&1u16.to_be_bytes());
    b.extend_from_slice(&[0, 0, 41, 4, 208, 0, 0, 0, 0, 0, 0]);
    b
}

/// A name no other test (or process) queries.
fn unique_name(what: &str) -> String {
    format!("{what}-{}.starling.test", std::process::id())
}

impl Seen {
    /// The questions for `name` read so far, in the order they came.
    fn questions(&self, name: &str) -> Vec<DnsQuestion> {
        self.records
            .iter()
            .filter_map(|r| match r {
                RawRecord::Dns(d) => match &d.question {
                    Some(Ok(q)) if q.name == name => Some(q.clone()),
                    _ => None,
                },
                _ => None,
            })
            .collect()
    }

    async fn dns(&mut self, name: &str) -> DnsRecord {
        let found = self
            .find(|r| {
                matches!(r, RawRecord::Dns(d)
                    if matches!(&d.question, Some(Ok(q)) if q.name == name))
            })
            .await;
        match found {
            Some(RawRecord::Dns(d)) => d,
            _ => panic!("no DNS record for {name}"),
        }
    }
}

fn question(d: &DnsRecord) -> &DnsQuestion {
    match &d.question {
        Some(Ok(q)) => q,
        other => panic!("no question: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binds_report_the_address_the_kernel_gave() {
    let mut seen = Seen::load();
    let me = std::process::id();
    // Port 0: the record carries the port the kernel chose.
    let tcp = TcpListener::bind("127.0.0.1:0").expect("tcp bind");
    let tcp_addr = tcp.local_addr().expect("addr");
    let udp = UdpSocket::bind("[::1]:0").expect("udp bind");
    let udp_addr = udp.local_addr().expect("addr");
    for (addr, protocol) in [(tcp_addr, 6), (udp_addr, 17)] {
        let Some(RawRecord::Bind(b)) = seen
            .find(|r| matches!(r, RawRecord::Bind(b) if b.local == addr))
            .await
        else {
            panic!("no bind record for {addr}")
        };
        assert_eq!((b.protocol, b.header.tgid), (protocol, me));
    }
    // A failed bind (the port is taken) is not a bind.
    let err = UdpSocket::bind(udp_addr).expect_err("the address is in use");
    assert_eq!(err.raw_os_error(), Some(libc::EADDRINUSE));
    seen.barrier().await;
    let binds = seen
        .records
        .iter()
        .filter(|r| matches!(r, RawRecord::Bind(b) if b.local == udp_addr))
        .count();
    assert_eq!(binds, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_queries_are_read_from_every_send_call() {
    let mut seen = Seen::load();
    let me = std::process::id();

    // sendto() with an address, on an IPv4 socket.
    let v4 = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let to = unique_name("sendto");
    v4.send_to(&dns_query(0x1111, &to, 1), "127.0.0.1:53")
        .expect("sendto");

    // sendto() of an IPv4 address on a dual-stack IPv6 socket.
    let dual = UdpSocket::bind("[::]:0").expect("bind");
    let mapped = unique_name("mapped");
    dual.send_to(&dns_query(0x1212, &mapped, 1), "127.0.0.1:53")
        .expect("sendto");

    // send() on a connected IPv6 socket (sendto without an address).
    let v6 = UdpSocket::bind("[::1]:0").expect("bind");
    v6.connect("[::1]:53").expect("connect");
    let sent = unique_name("send");
    v6.send(&dns_query(0x2222, &sent, 28)).expect("send");

    // write() on a connected socket, as Go's resolver does.
    let w = UdpSocket::bind("127.0.0.1:0").expect("bind");
    w.connect("127.0.0.1:53").expect("connect");
    let written = unique_name("write");
    let q = dns_query(0x3333, &written, 16);
    // SAFETY: writes q's bytes to a socket this test owns.
    let n = unsafe { libc::write(w.as_raw_fd(), q.as_ptr().cast(), q.len()) };
    assert_eq!(n, q.len() as isize);

    // sendmsg() with the destination in the msghdr.
    let m = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let msg_name = unique_name("sendmsg");
    let q = dns_query(0x4444, &msg_name, 15);
    let n = sendmsg_to(&m, &q, "127.0.0.1:53".parse().expect("addr"));
    assert_eq!(n, q.len() as isize);

    // sendmmsg() of an A and an AAAA query, as glibc's resolver does. glibc
    // connects first; here each message names the server, because nothing
    // answers on port 53 and a connected socket's second send would fail
    // with the first one's ICMP error.
    let mm = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let both = unique_name("sendmmsg");
    let (a, aaaa) = (dns_query(0x5555, &both, 1), dns_query(0x5556, &both, 28));
    let server = "127.0.0.1:53".parse().expect("addr");
    assert_eq!(sendmmsg_two(&mm, &a, &aaaa, server), 2);

    let d = seen.dns(&to).await;
    assert_eq!(d.header.tgid, me);
    assert_eq!((question(&d).id, question(&d).qtype), (0x1111, 1));
    assert_eq!(d.server, "127.0.0.1:53".parse::<SocketAddr>().unwrap());
    assert_eq!(d.local, v4.local_addr().unwrap());
    assert_eq!(d.result as usize, dns_query(0x1111, &to, 1).len());

    let d = seen.dns(&mapped).await;
    assert_eq!(
        d.server,
        "[::ffff:127.0.0.1]:53".parse::<SocketAddr>().unwrap()
    );

    let d = seen.dns(&sent).await;
    assert_eq!((question(&d).id, question(&d).qtype), (0x2222, 28));
    assert_eq!(d.server, "[::1]:53".parse::<SocketAddr>().unwrap());
    assert_eq!(d.local, v6.local_addr().unwrap());

    let d = seen.dns(&written).await;
    assert_eq!((question(&d).id, question(&d).qtype), (0x3333, 16));
    assert_eq!(d.local, w.local_addr().unwrap());

    let d = seen.dns(&msg_name).await;
    assert_eq!((question(&d).id, question(&d).qtype), (0x4444, 15));
    assert_eq!(d.server, "127.0.0.1:53".parse::<SocketAddr>().unwrap());

    seen.barrier().await;
    let mut ids: Vec<(u16, u16)> = seen
        .questions(&both)
        .iter()
        .map(|q| (q.id, q.qtype))
        .collect();
    ids.sort();
    assert_eq!(ids, [(0x5555, 1), (0x5556, 28)], "each message once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_glibc_resolver_is_seen_with_both_questions() {
    let mut seen = Seen::load();
    // getent in a mount namespace whose resolv.conf names a loopback
    // server: glibc's real resolver code sends the queries (nothing
    // answers, so it gives up quickly).
    let dir = common::temp_dir();
    let conf = dir.path().join("resolv.conf");
    std::fs::write(
        &conf,
        "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n",
    )
    .expect("write resolv.conf");
    let name = unique_name("glibc");
    let script = format!(
        "mount --bind {} /etc/resolv.conf && exec getent ahosts {name}",
        conf.display()
    );
    let mut child = std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn unshare");
    let pid = child.id();
    let status = child.wait().expect("getent ran");
    assert_eq!(status.code(), Some(2), "the name does not resolve");

    let d = seen.dns(&name).await;
    // unshare execs sh, which execs getent: one process throughout.
    assert_eq!(d.header.tgid, pid);
    assert_eq!(d.header.comm, "getent");
    assert_eq!(d.server, "127.0.0.1:53".parse::<SocketAddr>().unwrap());
    seen.barrier().await;
    let mut types: Vec<u16> = seen.questions(&name).iter().map(|q| q.qtype).collect();
    types.sort();
    types.dedup();
    assert_eq!(types, [1, 28], "A and AAAA");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_udp_ports_are_not_dns_and_junk_to_53_is_reported_as_such() {
    let mut seen = Seen::load();
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let other = unique_name("port54");
    s.send_to(&dns_query(7, &other, 1), "127.0.0.1:54")
        .expect("sendto");
    // Not DNS at all, to port 53: reported, with why it has no question.
    let junk = UdpSocket::bind("127.0.0.1:0").expect("bind");
    junk.send_to(b"\x01\x02\x03", "127.0.0.1:53")
        .expect("sendto");
    let junk_addr = junk.local_addr().unwrap();
    let Some(RawRecord::Dns(d)) = seen
        .find(|r| matches!(r, RawRecord::Dns(d) if d.local == junk_addr))
        .await
    else {
        panic!("no record for the junk datagram")
    };
    assert!(matches!(d.question, Some(Err(_))), "{:?}", d.question);
    // An empty datagram was read, and is not a query either.
    let empty = UdpSocket::bind("127.0.0.1:0").expect("bind");
    empty.send_to(b"", "127.0.0.1:53").expect("sendto");
    let empty_addr = empty.local_addr().unwrap();
    let Some(RawRecord::Dns(d)) = seen
        .find(|r| matches!(r, RawRecord::Dns(d) if d.local == empty_addr))
        .await
    else {
        panic!("no record for the empty datagram")
    };
    assert_eq!(d.question, Some(Err(DnsError::Short(0))));
    seen.barrier().await;
    assert!(seen.questions(&other).is_empty());
}

/// A sockaddr_in for `to`.
fn sockaddr(to: SocketAddrV4) -> libc::sockaddr_in {
    // SAFETY: all-zero bytes are a valid sockaddr_in.
    let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    addr.sin_family = libc::AF_INET as libc::sa_family_t;
    addr.sin_port = to.port().to_be();
    addr.sin_addr.s_addr = u32::from(*to.ip()).to_be();
    addr
}

const SOCKADDR_IN_LEN: u32 = std::mem::size_of::<libc::sockaddr_in>() as u32;

/// sendmsg() of one datagram to `to`.
fn sendmsg_to(s: &UdpSocket, payload: &[u8], to: SocketAddrV4) -> isize {
    let mut addr = sockaddr(to);
    let mut iov = libc::iovec {
        iov_base: payload.as_ptr() as *mut libc::c_void,
        iov_len: payload.len(),
    };
    // SAFETY: a zeroed msghdr is valid; every pointer set below outlives
    // the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&mut addr as *mut libc::sockaddr_in).cast();
    msg.msg_namelen = SOCKADDR_IN_LEN;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    // SAFETY: msg points at live memory for the duration of the call.
    unsafe { libc::sendmsg(s.as_raw_fd(), &msg, 0) }
}

/// sendmmsg() of two datagrams to `to`; the number of messages sent.
fn sendmmsg_two(s: &UdpSocket, first: &[u8], second: &[u8], to: SocketAddrV4) -> i32 {
    let mut addr = sockaddr(to);
    let mut iovs = [first, second].map(|p| libc::iovec {
        iov_base: p.as_ptr() as *mut libc::c_void,
        iov_len: p.len(),
    });
    // SAFETY: zeroed mmsghdrs are valid; their pointers outlive the call.
    let mut msgs: [libc::mmsghdr; 2] = unsafe { std::mem::zeroed() };
    for (m, iov) in msgs.iter_mut().zip(iovs.iter_mut()) {
        m.msg_hdr.msg_name = (&mut addr as *mut libc::sockaddr_in).cast();
        m.msg_hdr.msg_namelen = SOCKADDR_IN_LEN;
        m.msg_hdr.msg_iov = iov;
        m.msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: msgs and the memory they point at live through the call.
    unsafe { libc::sendmmsg(s.as_raw_fd(), msgs.as_mut_ptr(), 2, 0) }
}
