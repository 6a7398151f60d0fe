/* Tampering and evasion: ptrace that takes over or writes into another
 * process, memfd_create (a file with no path to exec a payload from; the
 * exec itself is flagged by process.bpf.c), BPF program loads and kernel
 * module loads (included by sensor.bpf.c). */

#define STARLING_PTRACE_POKETEXT 4
#define STARLING_PTRACE_POKEDATA 5
#define STARLING_PTRACE_POKEUSER 6
#define STARLING_PTRACE_SETREGS 13
#define STARLING_PTRACE_ATTACH 16
#define STARLING_PTRACE_SETREGSET 0x4205
#define STARLING_PTRACE_SEIZE 0x4206
#define STARLING_BPF_PROG_LOAD 5

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct starling_memfd_record);
} memfd_scratch SEC(".maps");

static __always_inline int ptrace_is_reported(long request)
{
	switch (request) {
	case STARLING_PTRACE_POKETEXT:
	case STARLING_PTRACE_POKEDATA:
	case STARLING_PTRACE_POKEUSER:
	case STARLING_PTRACE_SETREGS:
	case STARLING_PTRACE_ATTACH:
	case STARLING_PTRACE_SETREGSET:
	case STARLING_PTRACE_SEIZE:
		return 1;
	}
	return 0;
}

/* Only the requests worth reporting are kept at entry: PTRACE_PEEK* and
 * the tracer's own bookkeeping (debuggers, strace) are not. */
SEC("tracepoint/syscalls/sys_enter_ptrace")
int starling_enter_ptrace(struct trace_event_raw_sys_enter *ctx)
{
	if (!ptrace_is_reported(ctx->args[0]))
		return 0;
	return keep_call(ctx, STARLING_CALL_PTRACE, STARLING_RECORD_PTRACE, 4);
}

STARLING_ON_ENTER(memfd_create, 2, STARLING_CALL_MEMFD_CREATE, STARLING_RECORD_MEMFD)

SEC("tracepoint/syscalls/sys_enter_bpf")
int starling_enter_bpf(struct trace_event_raw_sys_enter *ctx)
{
	if (ctx->args[0] != STARLING_BPF_PROG_LOAD)
		return 0;
	return keep_call(ctx, STARLING_CALL_BPF, STARLING_RECORD_BPF_LOAD, 3);
}

static __always_inline int report_ptrace(struct pending_call *c, long ret)
{
	struct starling_ptrace_record r = {
		.request = c->args[0],
		.target = c->args[1],
		.result = ret,
	};
	fill_header(&r.h, current_task(), STARLING_RECORD_PTRACE);
	submit(&r, sizeof(r));
	return 0;
}

static __always_inline int report_memfd(struct pending_call *c, long ret)
{
	__u32 zero = 0;
	struct starling_memfd_record *r = bpf_map_lookup_elem(&memfd_scratch, &zero);
	if (!r)
		return 0;
	fill_header(&r->h, current_task(), STARLING_RECORD_MEMFD);
	r->flags = c->args[1];
	r->result = ret;
	r->name[0] = 0;
	bpf_probe_read_user_str(r->name, sizeof(r->name), (void *)c->args[0]);
	submit(r, sizeof(*r));
	return 0;
}

/* union bpf_attr for BPF_PROG_LOAD starts with prog_type and insn_cnt;
 * prog_name is at byte 48. */
static __always_inline int report_bpf(struct pending_call *c, long ret)
{
	struct starling_bpf_record r = {.result = ret};
	void *attr = (void *)c->args[1];
	__u32 head[2] = {};
	bpf_probe_read_user(head, sizeof(head), attr);
	r.prog_type = head[0];
	r.insn_cnt = head[1];
	if (c->args[2] >= 64)
		bpf_probe_read_user(r.prog_name, sizeof(r.prog_name), attr + 48);
	fill_header(&r.h, current_task(), STARLING_RECORD_BPF_LOAD);
	submit(&r, sizeof(r));
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_ptrace")
int starling_tamper_exit(struct trace_event_raw_sys_exit *ctx)
{
	struct pending_call c;
	if (!take_call(ctx, &c))
		return 0;
	switch (c.call) {
	case STARLING_CALL_PTRACE:
		return report_ptrace(&c, ctx->ret);
	case STARLING_CALL_MEMFD_CREATE:
		return report_memfd(&c, ctx->ret);
	case STARLING_CALL_BPF:
		return report_bpf(&c, ctx->ret);
	}
	return 0;
}

/* The record of module/module_load (include/trace/events/module.h): the
 * taint flags, then the name as a __data_loc string. Declared here because
 * kernels built without module support have no such type in their BTF. */
struct starling_module_load_ctx {
	__u64 common;
	__u32 taints;
	__u32 name_loc; /* offset (low 16 bits) and length of the name */
};

/* A module was loaded (init_module or finit_module succeeded as far as
 * the kernel's loader), in the loading task. Attached only where the
 * kernel has module support. */
SEC("tracepoint/module/module_load")
int starling_module_load(struct starling_module_load_ctx *ctx)
{
	struct task_struct *task = current_task();
	if (!admit(task, STARLING_RECORD_MODULE_LOAD))
		return 0;
	struct starling_module_record r = {};
	fill_header(&r.h, task, STARLING_RECORD_MODULE_LOAD);
	r.taints = ctx->taints;
	bpf_probe_read_kernel_str(r.name, sizeof(r.name), (void *)ctx + (ctx->name_loc & 0xFFFF));
	submit(&r, sizeof(r));
	return 0;
}
