/* TCP connect, accept and listen (included by sensor.bpf.c). */

#define STARLING_AF_INET 2
#define STARLING_AF_INET6 10
#define STARLING_IPPROTO_TCP 6
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
static __always_inline void copy_addrs(struct starling_tcp_record *r,
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
	struct starling_tcp_record r = {};
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
	r.local_port = ctx->sport;
	r.remote_port = ctx->dport;
	copy_addrs(&r, ctx);
	submit(&r, sizeof(r));
	return 0;
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
	struct file *file = fd_file(task, fd);
	if (!file)
		return 0;
	struct socket *sock = BPF_CORE_READ(file, private_data);
	struct sock *sk = BPF_CORE_READ(sock, sk);
	if (!sk)
		return 0;
	__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);
	if (family != STARLING_AF_INET && family != STARLING_AF_INET6)
		return 0;
	if (BPF_CORE_READ(sk, sk_protocol) != STARLING_IPPROTO_TCP)
		return 0;

	struct starling_tcp_record r = {};
	fill_header(&r.h, task, STARLING_RECORD_TCP_ACCEPT);
	r.family = family;
	r.local_port = BPF_CORE_READ(sk, __sk_common.skc_num);
	r.remote_port = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	if (family == STARLING_AF_INET) {
		__u32 local = BPF_CORE_READ(sk, __sk_common.skc_rcv_saddr);
		__u32 remote = BPF_CORE_READ(sk, __sk_common.skc_daddr);
		__builtin_memcpy(r.local_addr, &local, 4);
		__builtin_memcpy(r.remote_addr, &remote, 4);
	} else {
		BPF_CORE_READ_INTO(&r.local_addr, sk, __sk_common.skc_v6_rcv_saddr);
		BPF_CORE_READ_INTO(&r.remote_addr, sk, __sk_common.skc_v6_daddr);
	}
	submit(&r, sizeof(r));
	return 0;
}

/* Attached to sys_exit_accept and sys_exit_accept4. */
SEC("tracepoint/syscalls/sys_exit_accept4")
int starling_accept_exit(struct trace_event_raw_sys_exit *ctx)
{
	return on_accept(ctx->ret);
}
