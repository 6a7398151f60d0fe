/* Maps and helpers every program of the sensor shares: the ring buffer,
 * the drop counters, the runtime settings and the in-kernel filters. */
#ifndef STARLING_COMMON_H
#define STARLING_COMMON_H

#include "events.h"

/* Forces a bound the verifier can see: clang drops a mask it can prove
 * redundant, and the verifier may not have kept that proof. */
#define STARLING_BOUND(v, mask) asm volatile("%[x] &= " #mask : [x] "+r"(v))

/* Size is set by the loader from the node's config (ring_buffer_bytes). */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 8 * 1024 * 1024);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STARLING_DROP_REASONS * STARLING_RECORD_KINDS);
	__type(key, __u32);
	__type(value, __u64);
} drops SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct starling_settings);
} settings SEC(".maps");

/* cgroup ids whose processes are not reported (configured noise). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u64);
	__type(value, __u8);
} quiet_cgroups SEC(".maps");

/* Executables whose processes are not reported (configured noise). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, struct starling_exe_key);
	__type(value, __u8);
} quiet_exes SEC(".maps");

/* Per-CPU rate-limit state per kind: credit in ns and when it was set. */
struct starling_bucket {
	__u64 credit_ns;
	__u64 last_ns;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STARLING_RECORD_KINDS);
	__type(key, __u32);
	__type(value, struct starling_bucket);
} buckets SEC(".maps");

/* Records each CPU has submitted: when to ask the ring how full it is. */
#define STARLING_WAKEUP_CHECK_EVERY 8
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} submit_count SEC(".maps");

static __always_inline void count_drop(__u32 reason, __u32 kind)
{
	__u32 slot = reason * STARLING_RECORD_KINDS + (kind & (STARLING_RECORD_KINDS - 1));
	__u64 *n = bpf_map_lookup_elem(&drops, &slot);
	if (n)
		*n += 1;
}

static __always_inline struct starling_settings *get_settings(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&settings, &zero);
}

/* The current task as a BTF pointer: fields read through it are plain
 * loads the verifier checks against BTF (no helper call each), which
 * matters on kernels where every call pays for return-stack mitigations. */
static __always_inline struct task_struct *current_task(void)
{
	return (struct task_struct *)bpf_get_current_task_btf();
}

/* Whether the current task's image is on the exe allow-list. */
static __always_inline int exe_is_quiet(struct task_struct *task)
{
	struct inode *inode = task->mm->exe_file->f_inode;
	if (!inode)
		return 0;
	struct starling_exe_key key = {
		.ino = inode->i_ino,
		.dev = inode->i_sb->s_dev,
	};
	return bpf_map_lookup_elem(&quiet_exes, &key) != NULL;
}

/* One token from the kind's per-CPU bucket, if its rate allows. */
static __always_inline int within_rate(struct starling_settings *s, __u32 kind)
{
	STARLING_BOUND(kind, 31); /* STARLING_RECORD_KINDS - 1 */
	__u64 cost = s->cost_ns[kind];
	if (cost == 0)
		return 1;
	/* A key of its own: kind's bound must survive the helper call. */
	__u32 key = kind;
	struct starling_bucket *b = bpf_map_lookup_elem(&buckets, &key);
	if (!b)
		return 1;
	__u64 now = bpf_ktime_get_ns();
	__u64 credit = b->credit_ns + (now - b->last_ns);
	if (b->last_ns == 0 || credit > s->burst_ns[kind])
		credit = s->burst_ns[kind];
	b->last_ns = now;
	if (credit < cost) {
		b->credit_ns = credit;
		return 0;
	}
	b->credit_ns = credit - cost;
	return 1;
}

/* Whether a record of this kind, caused by the current task, should be
 * made: the kind is on and the task is neither the node itself nor
 * allow-listed. Called before any expensive work. Filtered records are
 * counted in "drops" (see admit_uncounted for hooks that run before they
 * know whether there is a record at all). */
static __always_inline int admit_counted(struct task_struct *task, __u32 kind, int count)
{
	struct starling_settings *s = get_settings();
	if (!s)
		return 1;
	if (s->kinds_off & (1u << (kind & 31)))
		return 0;
	if (s->own_tgid && task->tgid == s->own_tgid) {
		if (count)
			count_drop(STARLING_DROP_FILTERED, kind);
		return 0;
	}
	if (s->quiet_cgroups) {
		__u64 cg = bpf_get_current_cgroup_id();
		if (bpf_map_lookup_elem(&quiet_cgroups, &cg)) {
			if (count)
				count_drop(STARLING_DROP_FILTERED, kind);
			return 0;
		}
	}
	if (s->quiet_exes && exe_is_quiet(task)) {
		if (count)
			count_drop(STARLING_DROP_FILTERED, kind);
		return 0;
	}
	return 1;
}

static __always_inline int admit(struct task_struct *task, __u32 kind)
{
	return admit_counted(task, kind, 1);
}

/* For hooks that filter before they know whether the call concerns a
 * watched file at all (every open): filtering them is not counted. */
static __always_inline int admit_uncounted(struct task_struct *task, __u32 kind)
{
	return admit_counted(task, kind, 0);
}

/* Fills the header from the current task (task: current_task()). */
static __always_inline void fill_header(struct starling_header *h, struct task_struct *task,
					__u32 kind)
{
	const struct cred *cred = task->cred;

	h->kind = kind;
	h->tgid = task->tgid;
	h->tid = task->pid;
	h->ppid = task->real_parent->tgid;
	h->uid = cred->uid.val;
	h->gid = cred->gid.val;
	h->ktime_ns = bpf_ktime_get_boot_ns();
	h->cgroup_id = task->cgroups->dfl_cgrp->kn->id;
	__builtin_memcpy(h->comm, task->comm, sizeof(h->comm));
}

/* Sends a record (its header names its kind) if its kind is within its
 * rate, counting it as limited, or as lost when the ring buffer is full. */
static __always_inline void submit(void *record, __u64 size)
{
	__u32 kind = ((struct starling_header *)record)->kind;
	struct starling_settings *s = get_settings();
	if (s && !within_rate(s, kind)) {
		count_drop(STARLING_DROP_RATE_LIMITED, kind);
		return;
	}
	/* Waking the reader costs more than the rest of a small program
	 * (an irq_work and a wakeup per record): wake it only once a batch
	 * is waiting; it polls on a timer for the rest. */
	__u64 flags = 0;
	if (s && s->wakeup_bytes) {
		/* Asking the ring how full it is is a helper call: each CPU
		 * asks every STARLING_WAKEUP_CHECK_EVERY records, which delays
		 * a wakeup by at most that many records. */
		__u32 zero = 0;
		__u32 *n = bpf_map_lookup_elem(&submit_count, &zero);
		flags = BPF_RB_NO_WAKEUP;
		if (n && (*n)++ % STARLING_WAKEUP_CHECK_EVERY == 0 &&
		    bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) >= s->wakeup_bytes)
			flags = BPF_RB_FORCE_WAKEUP;
	}
	if (bpf_ringbuf_output(&events, record, size, flags) < 0)
		count_drop(STARLING_DROP_RINGBUF_FULL, kind);
}

#endif
