/* Syscalls reported at their return, with their arguments: the entry
 * program of each (one per syscall, made by STARLING_ON_ENTER) keeps the
 * arguments and the caller's credentials per thread; the exit program of
 * its area takes them back and decides what to report. */
#ifndef STARLING_SYSCALL_H
#define STARLING_SYSCALL_H

/* What a kept call was, so the exit program can read its arguments. */
enum starling_call {
	STARLING_CALL_UNLINK = 1,   /* (path) */
	STARLING_CALL_UNLINKAT,     /* (dirfd, path, flags) */
	STARLING_CALL_RENAME,       /* (old, new) */
	STARLING_CALL_RENAMEAT,     /* (olddirfd, old, newdirfd, new[, flags]) */
	STARLING_CALL_CHMOD,        /* (path, mode) */
	STARLING_CALL_FCHMOD,       /* (fd, mode) */
	STARLING_CALL_FCHMODAT,     /* (dirfd, path, mode[, flags]) */
	STARLING_CALL_SETUID,       /* credential calls: enum starling_cred_op */
	STARLING_CALL_SETREUID,
	STARLING_CALL_SETRESUID,
	STARLING_CALL_SETGID,
	STARLING_CALL_SETREGID,
	STARLING_CALL_SETRESGID,
	STARLING_CALL_CAPSET,
	STARLING_CALL_PTRACE,       /* (request, pid, addr, data) */
	STARLING_CALL_MEMFD_CREATE, /* (name, flags) */
	STARLING_CALL_BPF,          /* (cmd, attr, size) */
};

#define STARLING_AT_FDCWD -100

struct pending_call {
	__u32 call;                 /* enum starling_call */
	__u32 nr;                   /* the syscall number, checked at exit */
	__u32 uid, euid, gid, egid; /* the caller's credentials at entry */
	__u64 caps;                 /* effective capabilities at entry */
	__u64 args[6];
};

/* Calls between entry and exit, by thread id. LRU: a thread that dies
 * inside a call leaves its entry to be evicted. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, __u32);
	__type(value, struct pending_call);
} pending_calls SEC(".maps");

static __always_inline __u64 caps_of(const struct cred *cred)
{
	__u64 caps = 0;
	__builtin_memcpy(&caps, &cred->cap_effective, sizeof(caps));
	return caps;
}

/* Reads only the syscall's `nargs` arguments: a tracepoint program may not
 * read past its tracepoint's record, and the attach fails (EACCES) if it
 * could. */
static __always_inline int keep_call(struct trace_event_raw_sys_enter *ctx, __u32 call, __u32 kind,
				     int nargs)
{
	if (!admit(current_task(), kind))
		return 0;
	const struct cred *cred = current_task()->cred;
	struct pending_call p = {
		.call = call,
		.nr = (__u32)ctx->id,
		.uid = cred->uid.val,
		.euid = cred->euid.val,
		.gid = cred->gid.val,
		.egid = cred->egid.val,
		.caps = caps_of(cred),
	};
	if (nargs > 0)
		p.args[0] = ctx->args[0];
	if (nargs > 1)
		p.args[1] = ctx->args[1];
	if (nargs > 2)
		p.args[2] = ctx->args[2];
	if (nargs > 3)
		p.args[3] = ctx->args[3];
	if (nargs > 4)
		p.args[4] = ctx->args[4];
	if (nargs > 5)
		p.args[5] = ctx->args[5];
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	bpf_map_update_elem(&pending_calls, &tid, &p, BPF_ANY);
	return 0;
}

/* An entry program for syscall `sys` of `nargs` arguments, kept as
 * `call`, reported as `kind`. */
#define STARLING_ON_ENTER(sys, nargs, call, kind)                                \
	SEC("tracepoint/syscalls/sys_enter_" #sys)                               \
	int starling_enter_##sys(struct trace_event_raw_sys_enter *ctx)          \
	{                                                                        \
		return keep_call(ctx, call, kind, nargs);                        \
	}

/* Takes back the current thread's kept call (copied into *out), if it is
 * the one returning now (an entry whose exit was never seen, from a thread
 * killed inside a call, must not be taken for another). */
static __always_inline int take_call(struct trace_event_raw_sys_exit *ctx, struct pending_call *out)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct pending_call *p = bpf_map_lookup_elem(&pending_calls, &tid);
	if (!p)
		return 0;
	*out = *p;
	bpf_map_delete_elem(&pending_calls, &tid);
	return out->nr == (__u32)ctx->id;
}

#endif
