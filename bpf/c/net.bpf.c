/* TCP connect, accept and listen, binds, and DNS queries over UDP
 * (included by sensor.bpf.c). */

#define STARLING_AF_INET 2
#define STARLING_AF_INET6 10
#define STARLING_IPPROTO_TCP 6
#define STARLING_IPPROTO_UDP 17
#define STARLING_DNS_PORT 53
#define STARLING_TCP_ESTABLISHED 1
#define STARLING_TCP_SYN_SENT 2
#define STARLING_TCP_CLOSE 7
#define STARLING_TCP_LISTEN 10
#define STARLING_ECONNABORTED 103

/* Connects in flight: the socket's address to the header of the task that
 * called connect(). The connect completes in softirq context, where the
 * current task is whoever the CPU was running; LRU so that sockets whose
 * completion we never see cannot fill it. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct starling_header);
} connecting SEC(".maps");

/* The tracepoint's address arrays, copied with probe reads: the verifier
 * allows only constant-offset loads from the context. */
static __always_inline void copy_addrs(struct starling_socket_record *r,
				       struct trace_event_raw_inet_sock_set_state *ctx)
{
	if (r->family == STARLING_AF_INET) {
		bpf_probe_read_kernel(r->local_addr, 4, ctx->saddr);
		bpf_probe_read_kernel(r->remote_addr, 4, ctx->daddr);
	} else {
		bpf_probe_read_kernel(r->local_addr, 16, ctx->saddr_v6);
		bpf_probe_read_kernel(r->remote_addr, 16, ctx->daddr_v6);
	}
}

/* Every TCP state change passes here with both ends of the socket.
 * CLOSE -> SYN_SENT runs in the connecting task (remember it);
 * SYN_SENT -> ESTABLISHED or CLOSE ends the connect (report it, with
 * sk_err when it failed); * -> LISTEN runs in the task calling listen(). */
SEC("tracepoint/sock/inet_sock_set_state")
int starling_tcp_state(struct trace_event_raw_inet_sock_set_state *ctx)
{
	if (ctx->protocol != STARLING_IPPROTO_TCP)
		return 0;
	if (ctx->family != STARLING_AF_INET && ctx->family != STARLING_AF_INET6)
		return 0;
	__u64 sk = (__u64)ctx->skaddr;
	int old = ctx->oldstate, new = ctx->newstate;

	if (old == STARLING_TCP_CLOSE && new == STARLING_TCP_SYN_SENT) {
		if (!admit(current_task(), STARLING_RECORD_TCP_CONNECT))
			return 0;
		struct starling_header h = {};
		fill_header(&h, current_task(), STARLING_RECORD_TCP_CONNECT);
		bpf_map_update_elem(&connecting, &sk, &h, BPF_ANY);
		return 0;
	}
	struct starling_socket_record r = {};
	if (old == STARLING_TCP_SYN_SENT &&
	    (new == STARLING_TCP_ESTABLISHED || new == STARLING_TCP_CLOSE)) {
		struct starling_header *h = bpf_map_lookup_elem(&connecting, &sk);
		if (!h)
			return 0;
		r.h = *h;
		bpf_map_delete_elem(&connecting, &sk);
		r.h.ktime_ns = bpf_ktime_get_boot_ns();
		if (new == STARLING_TCP_CLOSE) {
			int err = BPF_CORE_READ((struct sock *)ctx->skaddr, sk_err);
			r.result = err > 0 ? -err : -STARLING_ECONNABORTED;
		}
	} else if (new == STARLING_TCP_LISTEN) {
		if (!admit(current_task(), STARLING_RECORD_TCP_LISTEN))
			return 0;
		fill_header(&r.h, current_task(), STARLING_RECORD_TCP_LISTEN);
	} else {
		return 0;
	}
	r.family = ctx->family;
	r.protocol = STARLING_IPPROTO_TCP;
	r.local_port = ctx->sport;
	r.remote_port = ctx->dport;
	copy_addrs(&r, ctx);
	submit(&r, sizeof(r));
	return 0;
}

/* The socket behind a file descriptor of the current task. The file's
 * private_data is not typed by BTF: read by helper. */
static __always_inline struct sock *fd_sock(struct task_struct *task, long fd)
{
	struct file *file = fd_file(task, fd);
	if (!file)
		return NULL;
	struct socket *sock = BPF_CORE_READ(file, private_data);
	if (!sock)
		return NULL;
	return BPF_CORE_READ(sock, sk);
}

/* Family, protocol and both ends of an inet socket; 0 for any other
 * family (unix, netlink, ...). */
static __always_inline int read_endpoints(struct starling_socket_record *r, struct sock *sk)
{
	__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);
	if (family != STARLING_AF_INET && family != STARLING_AF_INET6)
		return 0;
	r->family = family;
	r->protocol = BPF_CORE_READ(sk, sk_protocol);
	r->local_port = BPF_CORE_READ(sk, __sk_common.skc_num);
	r->remote_port = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	if (family == STARLING_AF_INET) {
		__u32 local = BPF_CORE_READ(sk, __sk_common.skc_rcv_saddr);
		__u32 remote = BPF_CORE_READ(sk, __sk_common.skc_daddr);
		__builtin_memcpy(r->local_addr, &local, 4);
		__builtin_memcpy(r->remote_addr, &remote, 4);
	} else {
		BPF_CORE_READ_INTO(&r->local_addr, sk, __sk_common.skc_v6_rcv_saddr);
		BPF_CORE_READ_INTO(&r->remote_addr, sk, __sk_common.skc_v6_daddr);
	}
	return 1;
}

/* accept() returned fd: the new socket, read from the caller's fd table,
 * in the caller's context (the handshake itself completed in softirq). */
static __always_inline int on_accept(long fd)
{
	if (fd < 0)
		return 0;
	struct task_struct *task = current_task();
	if (!admit_uncounted(task, STARLING_RECORD_TCP_ACCEPT))
		return 0;
	struct sock *sk = fd_sock(task, fd);
	if (!sk)
		return 0;
	struct starling_socket_record r = {};
	if (!read_endpoints(&r, sk) || r.protocol != STARLING_IPPROTO_TCP)
		return 0;
	fill_header(&r.h, task, STARLING_RECORD_TCP_ACCEPT);
	submit(&r, sizeof(r));
	return 0;
}

/* Attached to sys_exit_accept and sys_exit_accept4. */
SEC("tracepoint/syscalls/sys_exit_accept4")
int starling_accept_exit(struct trace_event_raw_sys_exit *ctx)
{
	return on_accept(ctx->ret);
}

/* The arguments of the syscall the current task is in, from its saved
 * user registers (x86-64 calling convention). Exit programs read them
 * here instead of keeping them from an entry program. */
#if !defined(__TARGET_ARCH_x86)
#error "syscall numbers and argument registers are written for x86-64"
#endif
#define STARLING_NR_WRITE 1
#define STARLING_NR_SENDTO 44
#define STARLING_NR_SENDMSG 46
#define STARLING_NR_SENDMMSG 307

static __always_inline struct pt_regs *syscall_regs(struct task_struct *task)
{
	return (struct pt_regs *)bpf_task_pt_regs(task);
}

/* A successful bind() of an inet socket (TCP or UDP), with the address
 * it got: a port of 0 has been replaced by the one the kernel chose. */
SEC("tracepoint/syscalls/sys_exit_bind")
int starling_bind_exit(struct trace_event_raw_sys_exit *ctx)
{
	if (ctx->ret != 0)
		return 0;
	struct task_struct *task = current_task();
	struct sock *sk = fd_sock(task, syscall_regs(task)->di);
	if (!sk)
		return 0;
	struct starling_socket_record r = {};
	if (!read_endpoints(&r, sk))
		return 0;
	if (!admit(task, STARLING_RECORD_SOCKET_BIND))
		return 0;
	fill_header(&r.h, task, STARLING_RECORD_SOCKET_BIND);
	submit(&r, sizeof(r));
	return 0;
}

/* Scratch space: a DNS record does not fit the stack beside its callers. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct starling_dns_record);
} dns_scratch SEC(".maps");

/* The start of the user's struct mmsghdr (a struct msghdr, then msg_len):
 * where a message goes and where its bytes are. */
struct starling_user_mmsghdr {
	__u64 name;    /* struct sockaddr __user *, or 0 */
	__s32 namelen;
	__u32 _pad;
	__u64 iov;     /* struct iovec __user * */
	__u64 iovlen;
	__u64 control;
	__u64 controllen;
	__u32 flags;
	__u32 _pad2;
	__u32 len;     /* sendmmsg: bytes sent of this message */
	__u32 _pad3;
};

/* One datagram being sent: where to (a user sockaddr, or none on a
 * connected socket) and its first bytes (a user pointer, or none when the
 * syscall is not one the sensor reads). */
struct udp_send {
	__u64 name;
	__s32 namelen;
	__u64 data;
	__u64 len;
};

/* Destination and first iovec of a user msghdr already copied in. */
static __always_inline void take_msghdr(struct udp_send *m, struct starling_user_mmsghdr *h)
{
	m->name = h->name;
	m->namelen = h->namelen;
	if (!h->iov || h->iovlen == 0)
		return;
	struct iovec iov;
	if (bpf_probe_read_user(&iov, sizeof(iov), (void *)h->iov) == 0) {
		m->data = (__u64)iov.iov_base;
		m->len = iov.iov_len;
	}
}

/* Reports the datagram if it goes to port 53. The record's local end and
 * (on a connected socket) remote end come from the socket; an explicit
 * destination replaces the remote end. */
static __always_inline void report_dns(struct task_struct *task, struct sock *sk,
				       struct udp_send *m, long result)
{
	__u8 sa[28] = {}; /* struct sockaddr_in or sockaddr_in6 */
	__u16 port_be;
	if (m->name) {
		__u32 len = (__u32)m->namelen < sizeof(sa) ? (__u32)m->namelen : sizeof(sa);
		STARLING_BOUND(len, 31);
		if (len < 4 || len > sizeof(sa) ||
		    bpf_probe_read_user(sa, len, (void *)m->name) < 0)
			return;
		__builtin_memcpy(&port_be, sa + 2, 2);
	} else {
		port_be = BPF_CORE_READ(sk, __sk_common.skc_dport);
	}
	if (port_be != bpf_htons(STARLING_DNS_PORT))
		return;

	__u32 zero = 0;
	struct starling_dns_record *r = bpf_map_lookup_elem(&dns_scratch, &zero);
	if (!r)
		return;
	__builtin_memset(&r->s, 0, sizeof(r->s));
	if (!read_endpoints(&r->s, sk))
		return;
	fill_header(&r->s.h, task, STARLING_RECORD_DNS_QUERY);
	r->s.result = result;
	if (m->name) {
		__u16 family;
		__builtin_memcpy(&family, sa, 2);
		r->s.remote_port = STARLING_DNS_PORT;
		if (family == STARLING_AF_INET) {
			__builtin_memset(r->s.remote_addr, 0, 16);
			if (r->s.family == STARLING_AF_INET6) {
				/* A dual-stack socket sending to an IPv4 address:
				 * the record's family is the socket's, so the
				 * address is written IPv4-mapped. */
				r->s.remote_addr[10] = 0xff;
				r->s.remote_addr[11] = 0xff;
				__builtin_memcpy(r->s.remote_addr + 12, sa + 4, 4);
			} else {
				__builtin_memcpy(r->s.remote_addr, sa + 4, 4);
			}
		} else if (family == STARLING_AF_INET6) {
			__builtin_memcpy(r->s.remote_addr, sa + 8, 16);
		}
	}
	__u64 n = m->len < STARLING_DNS_CAPTURE ? m->len : STARLING_DNS_CAPTURE;
	STARLING_BOUND(n, 511);
	if (n > STARLING_DNS_CAPTURE)
		n = STARLING_DNS_CAPTURE;
	r->flags = 0;
	if (m->data && bpf_probe_read_user(r->payload, n, (void *)m->data) == 0)
		r->flags = STARLING_DNS_READ;
	else
		n = 0;
	r->captured = n;
	submit(r, offsetof(struct starling_dns_record, payload) + n);
}

/* Every socket send passes here once its datagram is out (6.3+), in the
 * sending task, whatever the syscall: write, send, sendto, sendmsg. Only
 * UDP over IPv4/IPv6 goes past the first test; the payload is read from
 * the syscall's arguments. sendmmsg is left to its exit program, which
 * knows which message is which. */
SEC("tracepoint/sock/sock_send_length")
int starling_udp_send(struct trace_event_raw_sock_msg_length *ctx)
{
	if (ctx->protocol != STARLING_IPPROTO_UDP)
		return 0;
	if (ctx->family != STARLING_AF_INET && ctx->family != STARLING_AF_INET6)
		return 0;
	struct task_struct *task = current_task();
	if (!admit_uncounted(task, STARLING_RECORD_DNS_QUERY))
		return 0;
	struct pt_regs *regs = syscall_regs(task);
	struct udp_send m = {};
	switch (regs->orig_ax) {
	case STARLING_NR_WRITE:
		m.data = regs->si;
		m.len = regs->dx;
		break;
	case STARLING_NR_SENDTO:
		m.data = regs->si;
		m.len = regs->dx;
		m.name = regs->r8;
		m.namelen = regs->r9;
		break;
	case STARLING_NR_SENDMSG: {
		/* The msghdr's first 32 bytes: name, namelen, iov, iovlen. */
		struct starling_user_mmsghdr h;
		if (bpf_probe_read_user(&h, 32, (void *)regs->si) < 0)
			return 0;
		take_msghdr(&m, &h);
		break;
	}
	case STARLING_NR_SENDMMSG:
		return 0;
	default:
		/* writev, io_uring, ...: reported without the question. */
		break;
	}
	report_dns(task, (struct sock *)ctx->sk, &m, ctx->ret);
	return 0;
}

/* Most messages of one sendmmsg read for DNS (glibc sends two: A, AAAA). */
#define STARLING_SENDMMSG_MAX 4

/* sendmmsg() sent ret messages; each that went to port 53 is reported. */
SEC("tracepoint/syscalls/sys_exit_sendmmsg")
int starling_sendmmsg_exit(struct trace_event_raw_sys_exit *ctx)
{
	long sent = ctx->ret;
	if (sent <= 0)
		return 0;
	struct task_struct *task = current_task();
	if (!admit_uncounted(task, STARLING_RECORD_DNS_QUERY))
		return 0;
	struct pt_regs *regs = syscall_regs(task);
	struct sock *sk = fd_sock(task, regs->di);
	if (!sk || BPF_CORE_READ(sk, sk_protocol) != STARLING_IPPROTO_UDP)
		return 0;
	__u64 vec = regs->si;
	for (int i = 0; i < STARLING_SENDMMSG_MAX && i < sent; i++) {
		struct starling_user_mmsghdr h;
		__u64 at = vec + i * sizeof(h);
		if (bpf_probe_read_user(&h, sizeof(h), (void *)at) < 0)
			return 0;
		struct udp_send m = {};
		take_msghdr(&m, &h);
		report_dns(task, sk, &m, h.len);
	}
	return 0;
}
